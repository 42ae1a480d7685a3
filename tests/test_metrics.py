"""Pose metrics against hand-computed cases."""
import numpy as np
import pytest

from d2a_edge.training import metrics as M


def _rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.deg2rad(deg)
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


def test_constant_offset_gives_mpjpe_equal_to_offset(rng):
    gt = rng.normal(size=(4, 17, 3))
    offset = np.array([0.03, -0.04, 0.0])  # |offset| = 50 mm
    np.testing.assert_allclose(M.mpjpe(gt + offset, gt), 50.0, rtol=1e-9)
    # root-aligned MPJPE (what the evaluation reports) removes a constant offset
    al = M.mpjpe(M.root_align(gt + offset, gt[:, 0] + offset), M.root_align(gt, gt[:, 0]))
    np.testing.assert_allclose(al, 0.0, atol=1e-9)


def test_similarity_transform_gives_zero_pa_mpjpe(rng):
    gt = rng.normal(size=(3, 17, 3))
    R = _rot([1, 2, 3], 73.0)
    pred = 1.7 * gt @ R.T + np.array([0.5, -2.0, 3.0])
    assert M.mpjpe(pred, gt).min() > 100.0
    np.testing.assert_allclose(M.pa_mpjpe(pred, gt), 0.0, atol=1e-6)
    np.testing.assert_allclose(M.procrustes_align(pred, gt), gt, atol=1e-9)


def test_reflection_is_not_removed_by_procrustes(rng):
    gt = rng.normal(size=(1, 17, 3))
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    assert M.pa_mpjpe(mirrored, gt)[0] > 1.0  # a rotation cannot undo a reflection


def test_pa_mpjpe_of_noise_matches_hand_computation():
    gt = np.zeros((1, 4, 3))
    gt[0, :, 0] = [-1.0, 1.0, 0.0, 0.0]
    gt[0, :, 1] = [0.0, 0.0, -1.0, 1.0]
    pred = gt.copy()
    pred[0, 0, 2] = 0.01  # one point moved 10 mm out of plane
    assert M.mpjpe(pred, gt)[0] == pytest.approx(2.5)
    assert M.pa_mpjpe(pred, gt)[0] <= 2.5 + 1e-9


def test_translation_pck_and_shapes(rng):
    assert M.translation_error(np.array([[0.0, 0.0, 2.0]]), np.array([[0.0, 0.03, 2.04]]))[0] \
        == pytest.approx(5.0)
    gt = np.zeros((1, 4, 3))
    pred = gt.copy()
    pred[0, :, 0] = [0.1, 0.149, 0.151, 0.3]
    assert M.pck3d(pred, gt, 150.0)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal shape"):
        M.mpjpe(np.zeros((1, 4, 3)), np.zeros((1, 5, 3)))


def test_rotation_error_is_the_relative_angle():
    """The angle of pred^T gt, whatever the common rotation: 0, 30, 90 and 180 degrees."""
    base = _rot([0.3, -1.0, 0.5], 70.0)
    pred = np.stack([base] * 4)
    gt = np.stack([base @ _rot([1.0, 2.0, -0.5], d) for d in (0.0, 30.0, 90.0, 180.0)])
    np.testing.assert_allclose(M.rotation_error_deg(pred, gt), [0.0, 30.0, 90.0, 180.0],
                               atol=1e-5)
    with pytest.raises(ValueError, match="rotations"):
        M.rotation_error_deg(np.eye(3)[None], np.eye(3))
    with pytest.raises(ValueError, match="rotations"):  # unbatched
        M.rotation_error_deg(np.eye(3), np.eye(3))


def test_calibration_bins_sorted_by_sigma():
    sigma = np.arange(100.0)
    err = 2 * sigma
    bins = M.calibration_bins(sigma, err, bins=4)
    assert [b["count"] for b in bins] == [25] * 4
    assert [b["sigma"] for b in bins] == sorted(b["sigma"] for b in bins)
    np.testing.assert_allclose([b["error"] for b in bins], [2 * b["sigma"] for b in bins])


def test_procrustes_scale_is_optimal_when_the_best_rotation_needs_the_reflection_guard(rng):
    """A mirrored prediction: the best proper rotation has det(U V^T) = -1, so the Umeyama scale
    must use s1 + s2 - s3. At the optimum, scaling the aligned points about the gt centroid by
    1 +- 1% cannot lower the squared error."""
    gt = rng.normal(size=(4, 17, 3))
    pred = gt * np.array([-1.0, 1.0, 1.0]) + rng.normal(0, 0.05, gt.shape)
    al = M.procrustes_align(pred, gt)
    mg = gt.mean(1, keepdims=True)
    sse = lambda k: (((k * (al - mg) + mg) - gt) ** 2).sum((1, 2))  # noqa: E731
    assert np.all(sse(0.99) >= sse(1.0) - 1e-12) and np.all(sse(1.01) >= sse(1.0) - 1e-12)


def test_calibration_bins_group_by_sigma_not_by_error():
    """Bins are sigma quantiles: with error falling as sigma rises, the low-sigma bin holds the
    large errors (a bin sorted by error would pair them the other way round)."""
    bins = M.calibration_bins(np.array([0.0, 1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0, 0.0]), 2)
    assert [b["sigma"] for b in bins] == [0.5, 2.5]
    assert [b["error"] for b in bins] == [2.5, 0.5]


def test_point_metrics_reject_non_3d_points():
    with pytest.raises(ValueError, match="equal shape"):
        M.mpjpe(np.zeros((1, 4, 2)), np.zeros((1, 4, 2)))
    with pytest.raises(ValueError, match="equal shape"):
        M.pa_mpjpe(np.zeros((4, 3)), np.zeros((4, 3)))


def test_spearman_is_a_rank_correlation():
    from d2a_edge.training.evaluate import _spearman
    a = np.array([1.0, 10.0, 100.0, 1000.0, 5.0])
    assert _spearman(a, a ** 3) == pytest.approx(1.0)   # any monotone map: 1
    assert _spearman(a, -a) == pytest.approx(-1.0)
    assert _spearman(np.array([3.0, 1.0, 2.0]), np.array([30.0, 10.0, 20.0])) == pytest.approx(1.0)
    assert _spearman(np.ones(5), a) == 0.0  # ranked by position, a constant gave 0.4
    assert _spearman(np.array([1.0, 1.0, 2.0]), np.array([5.0, 5.0, 9.0])) == pytest.approx(1.0)
