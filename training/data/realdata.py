"""Real data in the SPIN / HMR2 ``.npz`` format (H36M, 3DPW, COCO fits, ... with SMPL).

Keys (N samples): ``imgname`` (N,) str, image path relative to ``img_dir``; ``center`` (N, 2)
box centre in pixels; ``scale`` (N,) box side / 200 px; ``pose`` (N, 72) SMPL axis-angle
(global orient first, mapping SMPL's Y-up frame into the OpenCV camera frame); ``betas`` (N, 10)
(SPIN calls it ``shape``; both accepted); ``S`` (N, 24, 4) 3D joints in metres + confidence in
SPIN's 24-joint order; optional ``part`` (N, 24, 3) 2D joints + visibility, and optional
``cam_int`` (N, 3, 3) intrinsics (otherwise f = sqrt(W^2 + H^2), the CLIFF default).

It is a reader for evaluation and inspection: ``d2a-train --data`` takes shard folders from
``d2a-data generate``, and training on these samples would need an SMPL-body config and losses
masked by their validity flags, which are not built.

Samples come in d2a-edge's conventions: the crop box and crop intrinsics of ``d2a_edge.camera``,
``rotmats`` for a body asset converted with ``load_body("smpl", path=...)`` (root rotation in
the camera frame, joints re-expressed in the optical frame: ``R0 M`` and ``M R M`` with
``M = diag(1, -1, -1)``), and ``kp3d`` / ``kp2d`` in the H36M-17 order of ``KP17_NAMES``
with validity flags. There is no depth or mask (``has_depth = has_mask = 0``).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from d2a_edge.body.rotations import rodrigues
from d2a_edge.camera import bbox_info, crop_affine, crop_intrinsics, intrinsics, square_box

SMPL_TO_CAM = np.diag([1.0, -1.0, -1.0])
# SPIN's 24 ground-truth joints -> KP17_NAMES (H36M order): pelvis, r_hip, r_knee, r_ankle,
# l_hip, l_knee, l_ankle, spine, thorax (LSP neck), nose (H36M "head", J24 jaw), head_top,
# l_shoulder, l_elbow, l_wrist, r_shoulder, r_elbow, r_wrist
J24_TO_KP17 = np.array([14, 2, 1, 0, 3, 4, 5, 16, 12, 17, 18, 9, 10, 11, 8, 7, 6])
REQUIRED = ("imgname", "center", "scale", "pose", "S")
ROW_SHAPES = {"center": (2,), "scale": (), "pose": (72,), "betas": (10,), "S": (24, 4),
              "part": (24, 3), "cam_int": (3, 3)}  # per sample; betas may have more than 10


def smpl_pose_to_rotmats(pose: np.ndarray) -> np.ndarray:
    """(24, 3, 3) float32 d2a-edge rotations from an SMPL pose (72,) in a camera frame."""
    R = rodrigues(np.asarray(pose, np.float64).reshape(-1, 3))
    M = SMPL_TO_CAM
    R[0] = R[0] @ M
    R[1:] = M @ R[1:] @ M
    return R.astype(np.float32)


class SpinNpz:
    """Numpy reader: ``SpinNpz(npz, img_dir, image_size).sample(i)`` -> dict of arrays."""

    def __init__(self, npz_path: str | Path, img_dir: str | Path, image_size: int = 192):
        self.npz_path, self.img_dir, self.size = Path(npz_path), Path(img_dir), image_size
        try:
            with np.load(self.npz_path, allow_pickle=False) as z:
                self.data = {k: z[k] for k in z.files}
        except ValueError as e:
            raise ValueError(f"{npz_path}: holds pickled (object) arrays; re-save them as plain "
                             "arrays, e.g. imgname=imgname.astype(str)") from e
        if "betas" not in self.data and "shape" in self.data:
            self.data["betas"] = self.data["shape"]
        missing = [k for k in REQUIRED + ("betas",) if k not in self.data]
        if missing:
            raise ValueError(f"{npz_path}: missing keys {missing}; the SPIN/HMR2 format needs "
                             f"{list(REQUIRED)} + betas (or shape), optional part, cam_int")
        n = len(self.data["imgname"])
        bad = [k for k in self.data if len(np.atleast_1d(self.data[k])) != n]
        if bad:
            raise ValueError(f"{npz_path}: keys {bad} do not have {n} rows like imgname")
        for key, row in ROW_SHAPES.items():  # 69 pose values gave 23 rotations, silently
            if key in self.data:
                arr = self.data[key]
                shape = arr.shape[1:]
                if shape != row and not (key == "betas" and len(shape) == 1 and shape[0] >= 10):
                    raise ValueError(f"{npz_path}: key {key!r} has rows of shape {shape}, "
                                     f"expected {row}")
                finite = np.isfinite(arr.reshape(n, -1).astype(np.float64)).all(1)
                if not finite.all():
                    raise ValueError(f"{npz_path}: key {key!r} holds NaN or inf (first in row "
                                     f"{int(np.argmin(finite))})")

    def __len__(self) -> int:
        return len(self.data["imgname"])

    def _image(self, i: int) -> np.ndarray:
        name = self.data["imgname"][i]
        path = self.img_dir / (name.decode() if isinstance(name, bytes) else str(name))
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"image {path} (sample {i} of {self.npz_path}) is missing "
                                    "or unreadable; check img_dir")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def sample(self, i: int) -> dict[str, np.ndarray]:
        """image (s, s, 3) uint8, crop_box, K, img_size, rotmats (24, 3, 3), betas,
        kp3d (17, 3) + kp3d_valid (17,), kp2d (17, 2) + kp2d_valid (17,), flags."""
        d, s = self.data, self.size
        img = self._image(i)
        H, W = img.shape[:2]
        box = square_box(d["center"][i], float(d["scale"][i]) * 200.0)
        K = (np.asarray(d["cam_int"][i], np.float32) if "cam_int" in d
             else intrinsics(float(np.hypot(W, H)), (W, H)))
        A = crop_affine(box, s)
        crop = cv2.warpAffine(img, A, (s, s), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        S = np.asarray(d["S"][i], np.float32)[J24_TO_KP17]  # (17, 4)
        out = dict(image=crop, crop_box=box, K=K, img_size=np.array([W, H], np.float32),
                   rotmats=smpl_pose_to_rotmats(d["pose"][i]),
                   betas=np.asarray(d["betas"][i], np.float32),
                   kp3d=S[:, :3].copy(), kp3d_valid=(S[:, 3] > 0).astype(np.float32),
                   kp2d=np.zeros((17, 2), np.float32), kp2d_valid=np.zeros(17, np.float32),
                   has_smpl=np.float32(np.any(d["pose"][i] != 0)), has_depth=np.float32(0),
                   has_mask=np.float32(0))
        if "part" in d:
            part = np.asarray(d["part"][i], np.float32)[J24_TO_KP17]  # (17, 3)
            out["kp2d"] = part[:, :2] @ A[:, :2].T + A[:, 2]
            out["kp2d_valid"] = (part[:, 2] > 0).astype(np.float32)
        out["bbox_info"] = bbox_info(box, K)
        out["K_crop"] = crop_intrinsics(K, box, s)
        return out
