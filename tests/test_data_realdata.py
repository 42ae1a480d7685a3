"""The SPIN/HMR2 npz loader on a tiny fixture written here (images drawn with cv2)."""
import cv2
import numpy as np
import pytest

from conftest import requires_torch
from d2a_edge.camera import crop_affine


def _fixture(tmp_path, with_part=True, betas_key="betas"):
    """Two 320x240 images with a white dot at the right wrist's 2D position."""
    rng = np.random.default_rng(0)
    N, names = 2, []
    part = np.zeros((N, 24, 3), np.float32)
    for i in range(N):
        img = np.full((240, 320, 3), 40, np.uint8)
        wrist = (150 + 20 * i, 100 + 10 * i)
        cv2.circle(img, wrist, 6, (255, 255, 255), -1)
        (tmp_path / "imgs").mkdir(exist_ok=True)
        names.append(f"imgs/im{i}.jpg")
        cv2.imwrite(str(tmp_path / names[-1]), img)
        part[i, 6] = (*wrist, 1.0)  # J24 index 6 = right wrist
    pose = np.zeros((N, 72), np.float32)
    pose[:, 0] = np.pi  # SMPL's usual upright-in-camera global orient
    pose[1, 3 * 18 + 2] = 0.5  # some elbow rotation (SMPL joint 18)
    S = np.concatenate([rng.normal(size=(N, 24, 3)), np.ones((N, 24, 1))], -1).astype(np.float32)
    S[:, 17, 3] = 0  # H36M "head" (J24 jaw) not annotated -> KP17 nose invalid
    data = dict(imgname=np.array(names), center=np.array([[160, 120], [170, 110]], np.float32),
                scale=np.array([1.0, 0.8], np.float32), pose=pose, S=S)
    data[betas_key] = rng.normal(size=(N, 10)).astype(np.float32)
    if with_part:
        data["part"] = part
    np.savez(tmp_path / "tiny_train.npz", **data)
    return tmp_path / "tiny_train.npz", data


def test_spin_sample_geometry(tmp_path):
    from d2a_edge.training.data.realdata import J24_TO_KP17, SpinNpz
    npz, data = _fixture(tmp_path)
    r = SpinNpz(npz, tmp_path, image_size=64)
    assert len(r) == 2
    s = r.sample(1)
    assert s["image"].shape == (64, 64, 3) and s["image"].dtype == np.uint8
    np.testing.assert_allclose(s["crop_box"], [170 - 80, 110 - 80, 170 + 80, 110 + 80])
    # the 2D right wrist lands on the drawn dot in the crop
    u, v = np.round(s["kp2d"][16]).astype(int)  # KP17 index 16 = r_wrist
    assert s["image"][v, u].min() > 200 and s["kp2d_valid"][16] == 1
    expect = crop_affine(s["crop_box"], 64) @ np.array([170.0, 110.0, 1.0])
    np.testing.assert_allclose(s["kp2d"][16], expect, atol=1e-4)
    assert s["kp2d_valid"].sum() == 1
    np.testing.assert_allclose(s["kp3d"], data["S"][1, J24_TO_KP17, :3])
    assert s["kp3d_valid"][9] == 0 and s["kp3d_valid"].sum() == 16  # nose unannotated
    # global orient pi about x = upright in the camera frame = identity in d2a-edge's frame
    np.testing.assert_allclose(s["rotmats"][0], np.eye(3), atol=1e-6)
    assert not np.allclose(s["rotmats"][18], np.eye(3))
    np.testing.assert_allclose(s["K"][0, 0], np.hypot(320, 240))
    assert s["has_smpl"] == 1 and s["has_depth"] == 0


def test_spin_child_rotation_is_reexpressed_in_the_optical_frame():
    from d2a_edge.training.data.realdata import rodrigues, smpl_pose_to_rotmats
    pose = np.zeros(72)
    pose[3:6] = [0.3, -0.2, 0.4]
    R = smpl_pose_to_rotmats(pose)
    M = np.diag([1.0, -1.0, -1.0])
    np.testing.assert_allclose(R[1], M @ rodrigues(pose[3:6]) @ M, atol=1e-6)
    np.testing.assert_allclose(R[0], M, atol=1e-6)  # zero global orient = SMPL frame (Y up)


def test_spin_optional_and_alias_keys(tmp_path):
    from d2a_edge.training.data.realdata import SpinNpz
    npz, _ = _fixture(tmp_path, with_part=False, betas_key="shape")
    s = SpinNpz(npz, tmp_path, 32).sample(0)
    assert s["kp2d_valid"].sum() == 0 and s["betas"].shape == (10,)


def test_spin_errors(tmp_path):
    from d2a_edge.training.data.realdata import SpinNpz
    npz, data = _fixture(tmp_path)
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in data.items() if k != "S"})
    with pytest.raises(ValueError, match=r"missing keys \['S'\]"):
        SpinNpz(tmp_path / "bad.npz", tmp_path)
    # wrong row shapes and NaN name the key (69 pose values gave 23 rotations silently; a
    # short S gave a bare IndexError; NaN flowed into the crop box and the labels)
    for key, value, match in (("pose", np.zeros((2, 69), np.float32), "'pose' has rows"),
                              ("S", np.zeros((2, 17, 4), np.float32), "'S' has rows"),
                              ("center", np.zeros((2, 3), np.float32), "'center' has rows"),
                              ("center", np.array([[160, np.nan], [1, 1]], np.float32),
                               "'center' holds NaN or inf \\(first in row 0"),
                              ("S", np.where(np.arange(4) == 0, np.nan, data["S"]),
                               "'S' holds NaN")):
        np.savez(tmp_path / "bad.npz", **dict(data, **{key: value}))
        with pytest.raises(ValueError, match=match):
            SpinNpz(tmp_path / "bad.npz", tmp_path)
    np.savez(tmp_path / "bytes.npz", **dict(data, imgname=data["imgname"].astype(bytes)))
    assert SpinNpz(tmp_path / "bytes.npz", tmp_path).sample(0)["image"].shape == (192, 192, 3)
    (tmp_path / "imgs" / "im0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="im0.jpg"):
        SpinNpz(npz, tmp_path).sample(0)


@requires_torch
def test_spin_torch_dataset(tmp_path):
    import torch

    from d2a_edge.training.data.dataset import SpinNpzDataset
    npz, _ = _fixture(tmp_path)
    ds = SpinNpzDataset(npz, tmp_path, image_size=48)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["rotmats"].shape == (2, 24, 3, 3)
    assert batch["bbox_info"].shape == (2, 3)


SPIN_J24 = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
            "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top", "pelvis",
            "thorax", "spine", "jaw", "head", "nose", "l_eye", "r_eye", "l_ear", "r_ear")
# KP17 name -> the SPIN J24 joint it is read from (thorax: LSP neck; H36M nose/head: jaw/head)
EXPECT = {"thorax": "neck", "nose": "jaw", "head_top": "head"}


def test_j24_to_kp17_reads_each_keypoint_from_its_own_side():
    from d2a_edge.body.asset import KP17_NAMES
    from d2a_edge.training.data.realdata import J24_TO_KP17
    got = [SPIN_J24[i] for i in J24_TO_KP17]
    assert got == [EXPECT.get(n, n) for n in KP17_NAMES]


def test_global_orient_keeps_body_directions():
    """A body direction d (SMPL frame: y up, z forward out of the chest) is d' = M d in
    d2a-edge's body frame (y down); the camera must see it where SMPL's orientation puts it:
    R0 @ (M d) == R_smpl @ d, for any global orientation (pi about x alone hides M R vs R M)."""
    from d2a_edge.body.rotations import rodrigues
    from d2a_edge.training.data.realdata import SMPL_TO_CAM, smpl_pose_to_rotmats
    rng = np.random.default_rng(0)
    for _ in range(5):
        pose = np.zeros(72)
        pose[:3] = rng.normal(size=3)
        R0 = smpl_pose_to_rotmats(pose)[0].astype(np.float64)
        for d in np.eye(3):
            np.testing.assert_allclose(R0 @ (SMPL_TO_CAM @ d), rodrigues(pose[:3]) @ d, atol=1e-5)
