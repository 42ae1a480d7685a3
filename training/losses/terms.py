"""Individual loss terms; every function returns a scalar tensor (mean over the batch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements."""
    return (pred - target).abs().mean()


def root_relative_l1(pred: torch.Tensor, pred_root: torch.Tensor, target: torch.Tensor,
                     target_root: torch.Tensor) -> torch.Tensor:
    """L1 of points ``(B, N, 3)`` after subtracting each side's root ``(B, 3)``."""
    return l1(pred - pred_root[:, None], target - target_root[:, None])


def project_to_crop(points: torch.Tensor, K: torch.Tensor, crop_box: torch.Tensor,
                    crop_size: int) -> torch.Tensor:
    """Camera-frame points ``(B, N, 3)`` -> crop pixels ``(B, N, 2)``.

    ``K (B, 3, 3)`` is the full image's intrinsics, ``crop_box (B, 4) = [x0, y0, x1, y1]`` the
    square box resized to ``crop_size``. Depth is clamped to >= 0.05 m.
    """
    p = points @ K.transpose(1, 2)  # (B, N, 3)
    uv = p[..., :2] / p[..., 2:].clamp_min(0.05)  # K[2] = (0, 0, 1): p_z = Z
    scale = crop_size / (crop_box[:, 2] - crop_box[:, 0]).clamp_min(1e-6)  # (B,)
    return (uv - crop_box[:, None, :2]) * scale[:, None, None]


def reprojection(joints3d: torch.Tensor, joints2d: torch.Tensor, K: torch.Tensor,
                 crop_box: torch.Tensor, crop_size: int) -> torch.Tensor:
    """L1 between projected ``joints3d (B, J, 3)`` and ``joints2d (B, J, 2)``, in crop units."""
    uv = project_to_crop(joints3d, K, crop_box, crop_size)
    return l1(uv / crop_size, joints2d / crop_size)


def silhouette(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE + Dice; ``logits (B, 1, h, w)`` upsampled to ``mask (B, s, s)`` (0/1)."""
    target = mask.float().unsqueeze(1)
    logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


def depth_ssi(pred: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant L1 (MiDaS): per sample, least-squares align then L1.

    ``pred (B, 1, h, w)`` relative depth (upsampled to the target), ``depth (B, s, s)`` metres with
    0 = background (ignored). Samples with fewer than 2 valid pixels contribute 0.
    """
    p = F.interpolate(pred, size=depth.shape[-2:], mode="bilinear", align_corners=False)
    p, d = p.flatten(1), depth.flatten(1)  # (B, s*s)
    m = (d > 0).to(p.dtype)
    n = m.sum(1).clamp_min(1.0)
    # normal equations of min_{a,b} sum m (a p + b - d)^2
    spp, sp, sd, spd = (m * p * p).sum(1), (m * p).sum(1), (m * d).sum(1), (m * p * d).sum(1)
    det = (spp * n - sp * sp)
    ok = (det.abs() > 1e-8) & (m.sum(1) >= 2)
    det = torch.where(ok, det, torch.ones_like(det))
    a = (spd * n - sp * sd) / det
    b = (spp * sd - sp * spd) / det
    err = (m * (a[:, None] * p + b[:, None] - d).abs()).sum(1) / n
    return (err * ok.to(err.dtype)).sum() / ok.sum().clamp_min(1)
