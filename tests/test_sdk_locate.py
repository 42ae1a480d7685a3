"""The built-in person box (``boxes="auto"``, ``MeshRecoverer.locate``) and the σ-based score."""
import numpy as np
import pytest
from conftest import flat_person, requires_torch

from d2a_edge import InputError, MeshRecoverer
from d2a_edge.recoverer import LOST_SCORE, box_for_crop, default_intrinsics, person_score
from d2a_edge.tracking import WINDOW_SCALES, search_windows


def test_search_windows_cover_the_frame_with_squares():
    w = search_windows(1920, 1080)
    assert w.shape[1] == 4 and np.array_equal(w[0], [0, 0, 1920, 1080])
    sq = w[1:]
    assert np.allclose(sq[:, 2] - sq[:, 0], sq[:, 3] - sq[:, 1])
    assert sq.min() >= 0 and sq[:, 2].max() <= 1920 and sq[:, 3].max() <= 1080
    # every pixel of the frame lies in at least one window of each scale
    for side in np.unique(sq[:, 2] - sq[:, 0]):
        s = sq[sq[:, 2] - sq[:, 0] == side]
        assert s[:, 0].min() == 0 and s[:, 1].min() == 0
        assert s[:, 2].max() >= 1920 - side / 2 and s[:, 3].max() >= 1080 - side / 2
    assert len(search_windows(64, 64)) >= 3  # tiny frames still get windows
    # a very wide or tall frame: a bounded batch (it was 3,622 crops for 4000x16), end to end
    for W, H in ((4000, 16), (16, 4000)):
        w = search_windows(W, H)
        assert len(w) <= 1 + len(WINDOW_SCALES) * 8 * 8
        assert w[1:, 0].min() == 0 and w[1:, 2].max() == W and w[1:, 3].max() == H


def test_tracking_box_ignores_vertices_at_or_behind_the_camera():
    """The next frame's crop comes from the mesh's projection. Vertices at z = 0 (projected to
    infinity) or behind the camera must not enter it: the box stays finite (the next call
    would reject an infinite box), and a mesh entirely behind the camera is lost."""
    from d2a_edge.recoverer import default_intrinsics
    from d2a_edge.types import HumanMesh
    K = default_intrinsics(640, 480)
    xy = np.stack(np.meshgrid(np.linspace(-0.3, 0.3, 10), np.linspace(-0.8, 0.8, 10)), -1)
    verts = np.concatenate([xy.reshape(-1, 2), np.full((100, 1), 3.0)], 1).astype(np.float32)

    def box(v):
        p = HumanMesh(vertices=v, faces=np.zeros((0, 3), np.int32), joints3d=v[:25],
                      joints2d=np.zeros((25, 2)), joint_sigma=np.full(25, 0.05), pose=None,
                      shape=None, translation=np.zeros(3), box=None, score=0.9)
        return MeshRecoverer._track_box(p, (480, 640), K)

    want = box(verts)
    assert want is not None and np.all(np.isfinite(want))
    near = verts.copy()
    near[:10, 2] = 0.0  # a few vertices on the camera plane
    got = box(near)
    assert got is not None and np.all(np.isfinite(got)) and np.all(got[2:] > got[:2])
    assert box(verts * np.float32([1, 1, -1])) is None  # behind the camera
    # a mesh that projects to under 2 px (a person hundreds of metres away) is lost too: the
    # next frame's call would reject that box and end the stream
    far = verts * np.float32([1, 1, 1000])
    assert box(far) is None


def test_score_is_relative_to_the_models_typical_sigma():
    assert person_score(np.full(25, 0.1), 0.1) == pytest.approx(2 / 3)
    assert person_score(np.full(25, 0.3), 0.1) == pytest.approx(0.0, abs=1e-9)
    assert person_score(np.full(25, 0.5), 0.1) == 0.0
    assert person_score(np.zeros(25), 0.1) == 1.0
    assert person_score(np.full(25, np.nan), 0.1) == 0.0  # NaN passed every `< LOST_SCORE` test


def test_bad_boxes_string_is_an_input_error():
    with pytest.raises(InputError, match='"auto"'):
        MeshRecoverer()(np.zeros((64, 64, 3), np.uint8), boxes="detect")


@requires_torch
def test_locate_finds_a_small_person_in_a_large_frame(anny_asset):
    """Renders pasted into their full 1920x1080-class frames (black elsewhere): the located box
    gives about the accuracy of the true box and far better than the whole frame, and the score
    tells a well-framed crop from the whole frame."""
    from d2a_edge.camera import uncrop
    from d2a_edge.export import verify
    from d2a_edge.training.metrics import pa_mpjpe

    _, _, labels = verify.validation_set(anny_asset, 6, 192, seed=31_337)
    rec = MeshRecoverer(backend="onnxruntime")  # the bundled, trained default model
    err = {"auto": [], "whole": [], "true": []}
    score = {k: [] for k in err}
    for img, box, wh, K, kp3d in zip(labels["image"], labels["crop_box"], labels["img_size"],
                                      labels["K"], labels["kp3d"]):
        frame = uncrop(img[..., ::-1], box, wh)
        true = [box_for_crop(box)]
        rec.K = K
        for name, boxes in (("auto", "auto"), ("whole", None), ("true", true)):
            (p,) = rec(frame, boxes=boxes)
            kp = rec.bundle.asset.keypoints(p.joints3d, p.vertices, 17)
            err[name].append(pa_mpjpe(kp[None], kp3d[None])[0])
            score[name].append(p.score)
    mean = {k: float(np.mean(v)) for k, v in err.items()}
    assert mean["auto"] < 0.75 * mean["whole"], mean
    assert mean["auto"] < mean["true"] + 25.0, mean
    assert np.mean(score["auto"]) > LOST_SCORE > np.mean(score["whole"]), score


def test_people_boxes_are_ordered_by_mean_sigma_and_skip_people_already_taken():
    """locate_all's boxes come most confident (lowest *mean* σ) first, whatever the windows'
    order; an unconfident mesh gives none; a person in ``taken`` (already tracked) is not found
    again; nobody gives a (0, 4) float32 array. Kills: ranking by max σ (one badly placed joint
    demoted the clearest person), by -σ, or in window order; dropping the ``taken`` filter;
    ignoring the score; a float64 empty result. Before this test only the slow end-to-end
    locate test caught a wrong order, and nothing caught the max-σ one."""
    shape, K = (720, 1280, 3), default_intrinsics(1280, 720)
    a_sigma = np.full(25, 0.02, np.float32)
    a_sigma[7] = 0.5  # mean 0.039: most confident on average despite one uncertain joint
    a, b, c = (flat_person(x, sigma=sg, z=8.0) for x, sg in ((-2.25, a_sigma), (-0.75, 0.05),
                                                               (0.75, 0.08)))
    nobody = flat_person(2.25, 0.1, sigma=0.01, z=8.0)  # under LOST_SCORE: not a person
    windows = [c, nobody, b, a]

    def centres(boxes):
        return (boxes[:, 0] + boxes[:, 2]) / 2

    ua, ub, uc = (K[0, 2] + K[0, 0] * p.translation[0] / p.translation[2] for p in (a, b, c))
    got = MeshRecoverer._people_boxes(windows, shape, K, 4)
    assert got.shape == (3, 4) and got.dtype == np.float32
    np.testing.assert_allclose(centres(got), [ua, ub, uc], atol=1.0)
    np.testing.assert_array_equal(MeshRecoverer._people_boxes(windows, shape, K, 1), got[:1])
    left = MeshRecoverer._people_boxes(windows, shape, K, 4, taken=[got[1]])  # b is tracked
    np.testing.assert_allclose(centres(left), [ua, uc], atol=1.0)
    for none in ([], [nobody]):
        empty = MeshRecoverer._people_boxes(none, shape, K, 2)
        assert empty.shape == (0, 4) and empty.dtype == np.float32


def test_a_mesh_mostly_outside_the_frame_gives_no_box():
    """A person with under half of their mesh inside the frame is no person to crop (a track
    is lost, the search skips it); with more than half inside they get a box. Kills the
    threshold lowered from 0.5 to 0.25 (30 % inside still gave a box)."""
    K = default_intrinsics(640, 480)
    cols = np.linspace(-0.3, 0.3, 10)

    def inside(k):  # the mesh placed so that its k leftmost vertex columns are in the frame
        x = (640 - K[0, 2]) * 3.0 / K[0, 0] - (cols[k - 1] + cols[k]) / 2
        return flat_person(x)

    for k in (7, 6):
        assert MeshRecoverer._track_box(inside(k), (480, 640), K) is not None, k
    for k in (4, 3):
        assert MeshRecoverer._track_box(inside(k), (480, 640), K) is None, k
