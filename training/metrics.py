"""3D pose metrics (numpy; inputs in metres, results in mm / cm as named).

``mpjpe`` and ``pve`` compare the points as given: root-align them first with ``root_align`` (the
evaluation does, with the pelvis) when the standard root-relative numbers are wanted.
"""
from __future__ import annotations

import numpy as np


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"expected pred and gt of equal shape (B, N, 3), got {pred.shape} "
                         f"and {gt.shape}")
    return pred, gt


def root_align(points: np.ndarray, root: np.ndarray) -> np.ndarray:
    """``points (B, N, 3)`` minus ``root (B, 3)``."""
    return np.asarray(points) - np.asarray(root)[:, None]


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mean per-point Euclidean error per sample, mm: ``(B, N, 3) x2 -> (B,)``."""
    pred, gt = _check(pred, gt)
    return np.linalg.norm(pred - gt, axis=-1).mean(-1) * 1000.0


pve = mpjpe  # per-vertex error: the same formula over mesh vertices


def procrustes_align(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``pred (B, N, 3)`` after the similarity (rotation, scale, translation) best fitting ``gt``.

    Umeyama / orthogonal Procrustes with a reflection guard.
    """
    pred, gt = _check(pred, gt)
    mp, mg = pred.mean(1, keepdims=True), gt.mean(1, keepdims=True)
    X, Y = pred - mp, gt - mg  # (B, N, 3)
    M = X.transpose(0, 2, 1) @ Y  # (B, 3, 3)
    U, s, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))  # (B,)
    D = np.tile(np.eye(3), (len(pred), 1, 1))
    D[:, 2, 2] = d
    R = U @ D @ Vt  # (B, 3, 3): X @ R ~ Y
    scale = (s * np.diagonal(D, axis1=1, axis2=2)).sum(1) / (X ** 2).sum((1, 2)).clip(1e-12)
    return scale[:, None, None] * X @ R + mg


def pa_mpjpe(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """MPJPE after Procrustes alignment, mm per sample ``(B,)``."""
    return mpjpe(procrustes_align(pred, gt), gt)


def translation_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Root translation error in cm: ``(B, 3) x2 -> (B,)``."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.shape[-1] != 3:
        raise ValueError(f"expected (B, 3) translations, got {pred.shape} and {gt.shape}")
    return np.linalg.norm(pred - gt, axis=-1) * 100.0


def rotation_error_deg(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations in degrees: ``(B, 3, 3) x2 -> (B,)`` (e.g. the root's
    orientation in the camera frame: which way the person faces)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[1:] != (3, 3):
        raise ValueError(f"expected (B, 3, 3) rotations, got {pred.shape} and {gt.shape}")
    cos = (np.einsum("bij,bij->b", pred, gt) - 1.0) / 2.0  # trace(pred^T gt) = sum of products
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pck3d(pred: np.ndarray, gt: np.ndarray, threshold_mm: float = 150.0) -> np.ndarray:
    """Fraction of points within ``threshold_mm``, per sample ``(B,)`` (0..1)."""
    pred, gt = _check(pred, gt)
    return (np.linalg.norm(pred - gt, axis=-1) * 1000.0 <= threshold_mm).mean(-1)


def calibration_bins(sigma: np.ndarray, error: np.ndarray, bins: int = 10
                     ) -> list[dict[str, float]]:
    """Predicted sigma vs actual error, binned by sigma quantiles (flattened inputs, same units).

    Returns per bin: ``sigma`` (mean predicted), ``error`` (mean actual), ``count``.
    """
    sigma, error = np.asarray(sigma, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    if sigma.shape != error.shape or sigma.size == 0:
        raise ValueError(f"sigma and error must be non-empty and equal in size, got "
                         f"{sigma.size} and {error.size}")
    order = np.argsort(sigma)
    out = []
    for chunk in np.array_split(order, min(bins, sigma.size)):
        out.append({"sigma": float(sigma[chunk].mean()), "error": float(error[chunk].mean()),
                    "count": int(chunk.size)})
    return out
