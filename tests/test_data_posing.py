"""Pose sampler semantics that the existing tests leave open: the right-side rows are the
mirror image of the left ones, knees and elbows flex the anatomical way, camera elevation has
the documented sign, and about half of all draws act with the right side."""
import numpy as np
import pytest

from d2a_edge.body import BodyModel


def _sampler(asset, split):
    from d2a_edge.training.data.posing import PoseConfig, PoseSampler
    j = asset.j_template - asset.j_template[0]
    return PoseSampler(asset.joint_names, j, asset.parents, PoseConfig(split=split))


def _row_keys(split):
    """(side-prefixed joint, axis) per row of the limit table, in PoseSampler's row order."""
    from d2a_edge.training.data.posing import ID_LIMITS, OOD_LIMITS
    table = ID_LIMITS if split == "id" else OOD_LIMITS
    keys = []
    for side in ("", "R:"):
        for name, limits in table.items():
            if side and not name.startswith(("Left", "LHip")):
                continue
            keys += [(side + name, axis) for axis, _, _ in limits]
    return keys


@pytest.mark.parametrize("split", ["id", "ood"])
def test_right_side_rows_are_the_mirror_of_the_left_rows(anny_asset, split):
    """Angles of the left rows given to the "R:" rows (and back) pose the mirror image. (Without
    the M R M conjugation of the right rows, every right knee bent forward.)"""
    ps = _sampler(anny_asset, split)
    keys = _row_keys(split)
    assert len(keys) == len(ps.lo)
    index = {k: i for i, k in enumerate(keys)}
    rng = np.random.default_rng(0)
    for _ in range(5):
        v = rng.uniform(ps.lo, ps.hi)
        swapped = v.copy()
        for i, (name, axis) in enumerate(keys):
            if name.startswith(("Left", "LHip")):
                j = index[("R:" + name, axis)]
                swapped[i], swapped[j] = v[j], v[i]
            elif not name.startswith("R:"):  # spine/head: keep them out of it
                v[i] = swapped[i] = 0.0
        np.testing.assert_allclose(ps.compose(swapped), ps.mirror(ps.compose(v)), atol=1e-9)


def test_knees_and_elbows_flex_the_anatomical_way(anny_asset):
    """+x at a knee swings the foot backward (+z: the person faces -z); +hinge at an elbow
    flexes it (the wrist comes closer to the shoulder; the rest A-pose elbow is already bent
    about 45 degrees, so a reversed hinge straightens it and moves the wrist away); both sides."""
    ps = _sampler(anny_asset, "id")
    keys = _row_keys("id")
    names = list(anny_asset.joint_names)
    body = BodyModel(anny_asset)
    zero_b, zero_t = np.zeros((1, anny_asset.num_betas)), np.zeros((1, 3))

    def joints(row=None, deg=0.0):
        v = np.zeros(len(keys))
        if row is not None:
            v[keys.index(row)] = deg
        return body(ps.compose(v)[None], zero_b, zero_t)[1][0]

    rest = joints()
    at = lambda j, name: j[names.index(name)]  # noqa: E731
    for side, prefix in (("Left", ""), ("Right", "R:")):
        knee = joints((prefix + "LeftLeg", "x"), 90.0)
        assert at(knee, side + "Foot")[2] - at(rest, side + "Foot")[2] > 0.2, side
        elbow = joints((prefix + "LeftForeArm", "hinge"), 60.0)
        reach = lambda j: np.linalg.norm(at(j, side + "Hand") - at(j, side + "Arm"))  # noqa: E731
        assert reach(elbow) < reach(rest) - 0.05, (side, reach(elbow), reach(rest))


def test_positive_elevation_is_a_camera_above(anny_asset):
    """SceneConfig: elevation + = camera above, so the feet (+y in the body) are farther away."""
    ps = _sampler(anny_asset, "id")
    for seed in range(5):
        R = ps.root(np.random.default_rng(seed), 30.0)
        down = R @ np.array([0.0, 1.0, 0.0])  # the body's "down" in the camera frame
        assert down[2] > 0.3, down  # sin(30 deg) = 0.5, less a little lean


@pytest.mark.parametrize("split", ["id", "ood"])
def test_about_half_of_the_draws_are_mirrored(anny_asset, split):
    ps = _sampler(anny_asset, split)
    mirrored = [ps.draw(np.random.default_rng(i)).mirrored for i in range(200)]
    assert 0.35 < np.mean(mirrored) < 0.65
