"""Body asset format, numpy LBS vs the torch oracle, keypoints, and bad input."""
import sys
import subprocess

import numpy as np
import pytest
from conftest import requires_torch

from d2a_edge.body import BodyAsset, BodyAssetError, BodyModel, load_body, load_body_asset
from d2a_edge.body.asset import save_body_asset
from d2a_edge.body.keypoints import farthest_points
from d2a_edge.body.rotations import rodrigues


def random_rotmats(rng, B, J, max_angle=np.pi / 3):
    axis = rng.normal(size=(B, J, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    return rodrigues(axis * rng.uniform(0, max_angle, (B, J, 1)))


def toy_asset(rng, V=40, J=5, S=3) -> BodyAsset:
    w = rng.random((V, 8))
    return BodyAsset(
        v_template=rng.normal(size=(V, 3)), faces=rng.integers(0, V, (20, 3)),
        shapedirs=rng.normal(0, 0.1, (V, 3, S)), j_template=rng.normal(size=(J, 3)),
        j_shapedirs=rng.normal(0, 0.1, (J, 3, S)), parents=np.array([-1, 0, 1, 1, 3]),
        skin_indices=rng.integers(0, J, (V, 8)), skin_weights=w / w.sum(1, keepdims=True),
        joint_names=tuple(f"j{i}" for i in range(J)), kp17_src=np.arange(17) % (J + V),
        kp14_src=np.arange(14), coarse_index=farthest_points(rng.normal(size=(V, 3)), 10),
        coarse_faces=np.zeros((0, 3), np.int32), meta={"name": "toy"})


def test_save_load_roundtrip(tmp_path, rng):
    a = toy_asset(rng)
    path = save_body_asset(a, tmp_path / "toy.npz")
    b = load_body_asset(path)
    assert b.joint_names == a.joint_names and b.meta["name"] == "toy"
    np.testing.assert_allclose(b.shapedirs, a.shapedirs, atol=1e-6)
    assert load_body(str(path)).num_vertices == 40


def test_numpy_lbs_rest_pose_identity(rng):
    a = toy_asset(rng)
    verts, joints = BodyModel(a)(np.tile(np.eye(3), (2, 5, 1, 1)), np.zeros((2, 3)),
                                 np.zeros((2, 3)))
    # identity pose places the root at transl = 0: everything shifts by -j_template[0]
    np.testing.assert_allclose(verts[0], a.v_template - a.j_template[0], atol=1e-12)
    np.testing.assert_allclose(joints[1], a.j_template - a.j_template[0], atol=1e-12)


@requires_torch
def test_numpy_matches_torch_oracle(rng, anny_asset):
    import torch

    from d2a_edge.body.lbs_torch import BodyLayer
    B, J, S = 3, anny_asset.num_joints, anny_asset.num_betas
    rot = random_rotmats(rng, B, J)
    betas, transl = rng.normal(size=(B, S)), rng.normal(size=(B, 3))
    v_np, j_np = BodyModel(anny_asset)(rot, betas, transl)
    layer = BodyLayer(anny_asset, dtype=torch.float64)
    v_t, j_t = layer(torch.from_numpy(rot), torch.from_numpy(betas), torch.from_numpy(transl))
    assert np.abs(v_np - v_t.numpy()).max() <= 1e-5
    assert np.abs(j_np - j_t.numpy()).max() <= 1e-5
    kp = anny_asset.keypoints(j_np, v_np, 17)
    assert kp.shape == (B, 17, 3)
    assert torch.allclose(layer.keypoints(j_t, v_t, 17), torch.from_numpy(kp), atol=1e-5)


def test_anny_asset_conventions(anny_asset):
    """Upright (head has smaller y than feet), facing -z (nose in front), left side at +x."""
    a = anny_asset
    j = dict(zip(a.joint_names, a.j_template))
    assert j["Head"][1] < j["Hips"][1] < j["LeftFoot"][1]
    assert j["LeftArm"][0] > 0 > j["RightArm"][0]
    nose = a.v_template[a.kp17_src[9] - a.num_joints]
    assert nose[2] < j["Head"][2]
    assert 1.5 < np.ptp(a.v_template[:, 1]) < 2.0  # adult mean height in metres
    assert a.coarse_index.shape == (369,) and a.skin_indices.shape[1] == 8


def test_wrong_pose_shape_is_clear(anny_asset):
    model = BodyModel(anny_asset)
    with pytest.raises(ValueError, match=r"rotmats must be \(B, 25, 3, 3\)"):
        model(np.zeros((1, 24, 3, 3)))
    with pytest.raises(ValueError, match="rotmats must be"):
        model(np.zeros((24, 3, 3)))
    with pytest.raises(ValueError, match="betas must be"):
        model(np.tile(np.eye(3), (1, 25, 1, 1)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="floating point"):
        model(np.zeros((1, 25, 3, 3), np.int64))
    # not rotations, or not finite: they gave a 107 m wide mesh, a point, or NaN, silently
    eye = np.tile(np.eye(3), (1, 25, 1, 1))
    reflect = eye.copy()
    reflect[0, 3] = np.diag([-1.0, 1.0, 1.0])
    for bad in (2 * eye, 0 * eye, np.random.default_rng(0).normal(size=(1, 25, 3, 3)), reflect):
        with pytest.raises(ValueError, match="rotmats must be rotations"):
            model(bad)
    with pytest.raises(ValueError, match="betas holds NaN"):
        model(eye, np.full((1, anny_asset.num_betas), np.nan))
    with pytest.raises(ValueError, match="transl holds NaN or inf"):
        model(eye, None, np.array([[0.0, np.inf, 0.0]]))
    with pytest.raises(ValueError, match="real numbers"):
        model(eye, np.zeros((1, anny_asset.num_betas), complex))
    noisy = eye + np.random.default_rng(1).normal(0, 1e-3, eye.shape)  # an FP16 engine's
    assert np.isfinite(model(noisy)[0]).all()


def test_corrupt_and_foreign_npz(tmp_path, rng):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BodyAssetError, match="not a readable .npz"):
        load_body_asset(bad)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(BodyAssetError, match="missing keys"):
        load_body_asset(foreign)
    d = toy_asset(rng).to_npz_dict()
    d["skin_weights"] = d["skin_weights"] * 2
    np.savez(tmp_path / "inconsistent.npz", **d)
    with pytest.raises(BodyAssetError, match="rows must sum to 1"):
        load_body_asset(tmp_path / "inconsistent.npz")
    with pytest.raises(BodyAssetError, match="not found"):
        load_body_asset(tmp_path / "missing.npz")
    # damage that loaded and then gave a garbage mesh, or a raw numpy error
    breaks = {"negative keypoint source": (lambda d: d["kp17_src"].__setitem__(0, -1),
                                           "keypoint source out of range"),
              "negative coarse index": (lambda d: d["coarse_index"].__setitem__(0, -5),
                                        "coarse_index out of range"),
              "coarse faces not triangles": (lambda d: d.update(coarse_faces=np.zeros((3, 4),
                                                                                 np.int32)),
                                             "coarse_faces must be"),
              "skin index one past the joints": (lambda d: d["skin_indices"].__setitem__(
                  (0, 0), len(d["parents"])), "skin_indices out of range"),
              "negative weights summing to 1": (lambda d: d["skin_weights"].__setitem__(
                  (0, slice(0, 2)), (2.0, -1.0)), "must not be negative"),
              "parents one too long": (lambda d: d.update(parents=np.append(d["parents"], 0)),
                                       "parents must be"),
              "empty keypoint set": (lambda d: d.update(kp17_src=np.zeros(0, np.int32)),
                                     "keypoint sets"),
              "meta not an object": (lambda d: d.update(meta_json=np.array("[1, 2]")),
                                     "meta_json must be a JSON object"),
              "meta not JSON": (lambda d: d.update(meta_json=np.array("{not json")),
                                "meta_json is not JSON")}
    for name, (break_it, match) in breaks.items():
        d = toy_asset(rng).to_npz_dict()
        d["skin_weights"] = d["skin_weights"].copy()
        break_it(d)
        np.savez(tmp_path / "broken.npz", **d)
        with pytest.raises(BodyAssetError, match=match):
            load_body_asset(tmp_path / "broken.npz")
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    with pytest.raises(BodyAssetError, match="not a readable .npz"):  # was a TypeError
        load_body_asset(tmp_path / "array.npz")
    with pytest.raises(ValueError, match="unknown body 'mano'"):
        load_body("mano")


def test_import_is_torch_free():
    code = ("import sys, d2a_edge, d2a_edge.body; "
            "bad = [m for m in ('torch', 'anny', 'd2a_edge.training', 'd2a_edge.export') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_mirror_joints_pairs_the_sides_and_rejects_an_asymmetric_body(anny_asset):
    """``BodyAsset.mirror_joints``: each joint's counterpart (an involution; spine and head
    joints their own), only for a body whose rest joints mirror onto each other (x -> -x)."""
    import dataclasses
    perm = anny_asset.mirror_joints()
    names = list(anny_asset.joint_names)
    assert np.array_equal(perm[perm], np.arange(len(names)))
    assert names[perm[names.index("LeftForeArm")]] == "RightForeArm"
    assert names[perm[names.index("LHipJoint")]] == "RHipJoint"
    assert perm[names.index("Head")] == names.index("Head")
    mirrored = anny_asset.j_template[perm] * [-1, 1, 1]
    assert np.abs(mirrored - anny_asset.j_template).max() < 0.005
    j = anny_asset.j_template.copy()
    j[names.index("LeftHand"), 1] += 0.05  # one hand 5 cm lower than the other
    with pytest.raises(BodyAssetError, match="not left-right symmetric: .* 50.0 mm off"):
        dataclasses.replace(anny_asset, j_template=j).mirror_joints()


def test_nearest_rotation_projects_onto_rotations(rng):
    """``nearest_rotation``: rotations stay as they are; the mean of two rotations about one
    axis becomes the rotation halfway between them; any matrix becomes a proper rotation."""
    from d2a_edge.body.rotations import nearest_rotation
    R = random_rotmats(rng, 4, 3).reshape(-1, 3, 3)
    np.testing.assert_allclose(nearest_rotation(R), R, atol=1e-12)
    axis = np.array([0.0, 0.6, 0.8])
    half = nearest_rotation((rodrigues(axis * 0.2) + rodrigues(axis * 1.0)) / 2)
    np.testing.assert_allclose(half, rodrigues(axis * 0.6), atol=1e-12)
    Q = nearest_rotation(rng.normal(size=(10, 3, 3)))
    np.testing.assert_allclose(Q @ np.swapaxes(Q, -1, -2), np.broadcast_to(np.eye(3), Q.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(Q), 1.0, atol=1e-12)


def test_rodrigues_matches_scipy_and_the_right_hand_rule():
    from scipy.spatial.transform import Rotation

    from d2a_edge.body.rotations import rodrigues
    rng = np.random.default_rng(0)
    aa = rng.normal(size=(50, 3))
    np.testing.assert_allclose(rodrigues(aa), Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)
    # +90 degrees about z takes x to y
    np.testing.assert_allclose(rodrigues(np.array([0, 0, np.pi / 2])) @ [1.0, 0, 0], [0, 1.0, 0],
                               atol=1e-12)
    np.testing.assert_allclose(rodrigues(np.zeros(3)), np.eye(3), atol=0)
