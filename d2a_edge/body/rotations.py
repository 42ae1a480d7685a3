"""Rotation helpers in numpy (the one Rodrigues formula of the project)."""
from __future__ import annotations

import numpy as np


def rodrigues(aa: np.ndarray) -> np.ndarray:
    """(..., 3, 3) float64 rotation matrices from axis-angle vectors (..., 3) in radians."""
    aa = np.asarray(aa, np.float64)
    theta = np.linalg.norm(aa, axis=-1, keepdims=True)
    axis = aa / np.maximum(theta, 1e-12)
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    o = np.zeros_like(x)
    K = np.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(aa.shape[:-1] + (3, 3))
    s, c = np.sin(theta)[..., None], np.cos(theta)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """(..., 3, 3) the rotation matrices nearest (Frobenius) to ``m`` (..., 3, 3): U diag(1, 1,
    det(U V^T)) V^T of its SVD. The mean of two rotations projected this way is their chordal
    mean."""
    u, _, vt = np.linalg.svd(np.asarray(m, np.float64))
    d = np.ones(u.shape[:-1])
    d[..., -1] = np.linalg.det(u @ vt)
    return (u * d[..., None, :]) @ vt
