"""Sample-schema batches built straight from the body model (test helper only, not a fake model).

Random pose/shape/placement -> torch LBS -> pinhole projection; the mask and depth are a point
splat of the projected vertices, the image a noisy gradient with the silhouette painted in, so every
label is geometrically consistent with the others (good enough to test losses and training).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from d2a_edge.body.lbs_torch import BodyLayer
from d2a_edge.body.rotations import rodrigues
from d2a_edge.camera import bbox_info, intrinsics


def random_rotmats(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """(n, 3, 3) rotations about random axes with angles ~ N(0, scale)."""
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    return rodrigues(axis * rng.normal(scale=scale, size=(n, 1)))


def make_batch(asset, n: int, size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """A dict of torch tensors in the Dataset's sample schema, batched (n samples, crop ``size``)."""
    rng = np.random.default_rng(seed)
    J, S = asset.num_joints, asset.num_betas
    rot = random_rotmats(rng, n * J, 0.25).reshape(n, J, 3, 3)
    rot[:, 0] = random_rotmats(rng, n, 0.3)
    betas = rng.normal(scale=0.7, size=(n, S))
    transl = np.stack([rng.uniform(-0.4, 0.4, n), rng.uniform(-0.2, 0.2, n),
                       rng.uniform(3.0, 4.5, n)], 1)
    body = BodyLayer(asset)
    with torch.no_grad():
        verts, joints = body(torch.tensor(rot, dtype=torch.float32),
                             torch.tensor(betas, dtype=torch.float32),
                             torch.tensor(transl, dtype=torch.float32))
    verts, joints = verts.numpy(), joints.numpy()
    W, H, f = 640.0, 480.0, 600.0
    K = intrinsics(f, (W, H))
    uv_v = verts @ K.T
    uv_v = uv_v[..., :2] / uv_v[..., 2:]
    lo, hi = uv_v.min(1), uv_v.max(1)  # (n, 2)
    centre, side = (lo + hi) / 2, (hi - lo).max(1) * 1.2
    box = np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)
    scale = size / side  # (n,)
    to_crop = lambda uv: (uv - box[:, None, :2]) * scale[:, None, None]  # noqa: E731
    uv_j = joints @ K.T
    joints2d = to_crop(uv_j[..., :2] / uv_j[..., 2:])
    pix = np.clip(np.round(to_crop(uv_v)).astype(int), 0, size - 1)
    mask = np.zeros((n, size, size), np.uint8)
    depth = np.zeros((n, size, size), np.float32)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    image = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        mask[i, pix[i, :, 1], pix[i, :, 0]] = 1
        depth[i, pix[i, :, 1], pix[i, :, 0]] = verts[i, :, 2]
        c0, c1 = rng.uniform(0, 1, size=(2, 3, 1, 1))  # background: a per-sample gradient
        image[i] = c0 + (c1 - c0) * ramp[None, :, None]
        image[i] += rng.normal(scale=0.05, size=image[i].shape)
        image[i][:, mask[i] > 0] = rng.uniform(0, 1, size=(3, 1))
    image = image.clip(0, 1)
    Ks = np.repeat(K[None], n, 0)
    img_size = np.repeat(np.array([[W, H]], np.float32), n, 0)
    kp3d = asset.keypoints(joints, verts, 17)
    uv_k = kp3d @ K.T
    out = dict(image=image, depth=depth, mask=mask, rotmats=rot, betas=betas, transl=transl,
               joints3d=joints, kp3d=kp3d, joints2d=joints2d,
               kp2d=to_crop(uv_k[..., :2] / uv_k[..., 2:]),
               verts_coarse=verts[:, asset.coarse_index], K=Ks, crop_box=box, img_size=img_size,
               bbox_info=bbox_info(box, Ks))
    return {k: torch.as_tensor(np.asarray(v)).float() if k != "mask" else torch.as_tensor(v)
            for k, v in out.items()}


class BatchDataset(torch.utils.data.Dataset):
    """Per-sample view of ``make_batch`` (for the training loop in tests)."""

    def __init__(self, asset, n: int, size: int = 64, seed: int = 0):
        self.batch = make_batch(asset, n, size, seed)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.batch.items()}


TINY = {"model": {"image_size": 64, "backbone": {"name": "resnet10t", "token_reduction": 16},
                  "depth": {"encoder": "mobilenetv3_small_100", "decoder_dim": 16},
                  "depth_backbone": {"channels": [16, 32]},
                  "encoder": {"dim": 64, "heads": 4}, "decoder": {"layers": 1, "heads": 4}},
        "train": {"batch_size": 4, "num_workers": 0, "log_every": 1}}


def tiny_config(name: str = "edge-s", **sections):
    """A built-in config shrunk for CPU tests (64 px crops, small backbones), plus overrides."""
    from d2a_edge.training.config import _merge, load_config
    return load_config(name, _merge(TINY, sections))


def write_tiny_yaml(path, name: str = "edge-s", **sections) -> str:
    """Write ``tiny_config(name, **sections)`` as a YAML file that inherits ``name``."""
    import yaml
    from d2a_edge.training.config import _merge
    Path(path).write_text(yaml.safe_dump({"base": name, **_merge(TINY, sections)}))
    return str(path)
