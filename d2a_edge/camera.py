"""Pinhole camera helpers shared by the data engine, training and the runtime (numpy only).

Conventions: the OpenCV / ROS optical frame (x right, y down, z forward, metres); pixel
coordinates put the centre of pixel (i, j) at (u, v) = (i, j). A crop box ``[x0, y0, x1, y1]``
is a square in full-image pixels that is resized to ``s x s``: a full-image point ``u`` lands at
``(u - x0) * s / (x1 - x0)`` in the crop (exactly what ``cv2.warpAffine(img, crop_affine(...))``
does), so projecting with ``crop_intrinsics(K, box, s)`` equals projecting with ``K`` and cropping.
"""
from __future__ import annotations

import numpy as np


def intrinsics(focal: float, img_size: tuple[float, float],
               principal: tuple[float, float] | None = None) -> np.ndarray:
    """(3, 3) float32 ``K`` with square pixels; principal point at the image centre by default.

    img_size: (W, H) in pixels. The centre is ``((W - 1) / 2, (H - 1) / 2)`` under the
    pixel-centre convention of this module.
    """
    W, H = float(img_size[0]), float(img_size[1])
    if focal <= 0 or W <= 0 or H <= 0:
        raise ValueError(f"focal and img_size must be positive, got focal={focal}, "
                         f"img_size={img_size}")
    cx, cy = ((W - 1) / 2, (H - 1) / 2) if principal is None else principal
    return np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], np.float32)


def camera_matrix(K) -> np.ndarray:
    """``K`` as a validated (3, 3) float32 pinhole matrix in pixels: finite, focal lengths
    fx, fy > 0, last row (0, 0, 1). Raises ValueError naming what is wrong."""
    try:
        K = np.asarray(K, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"intrinsics must be a 3x3 camera matrix: {e}") from None
    if K.shape != (3, 3):
        raise ValueError(f"intrinsics must be a 3x3 camera matrix in pixels, got shape {K.shape}")
    if not np.isfinite(K).all():
        raise ValueError(f"intrinsics must be finite, got {K.tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"intrinsics need focal lengths fx, fy > 0 px, got fx={K[0, 0]:g}, "
                         f"fy={K[1, 1]:g}")
    if not np.allclose(K[2], (0.0, 0.0, 1.0)):
        raise ValueError(f"intrinsics' last row must be (0, 0, 1), got {K[2].tolist()}")
    return K.astype(np.float32)


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel coordinates (..., 2) of camera-frame points (..., 3) (z > 0 assumed)."""
    points = np.asarray(points)
    uvw = points @ np.asarray(K, points.dtype).T  # (..., 3)
    return uvw[..., :2] / uvw[..., 2:3]


def square_box(center: np.ndarray, side: float) -> np.ndarray:
    """(4,) float32 ``[x0, y0, x1, y1]`` square of ``side`` pixels around ``center`` (2,)."""
    cx, cy = float(center[0]), float(center[1])
    h = float(side) / 2
    return np.array([cx - h, cy - h, cx + h, cy + h], np.float32)


def _box_side(crop_box: np.ndarray) -> float:
    x0, y0, x1, y1 = (float(c) for c in np.asarray(crop_box).reshape(4))
    side = x1 - x0
    if side <= 0 or abs((y1 - y0) - side) > 1e-3 * max(side, 1.0):
        raise ValueError(f"crop_box must be a square [x0, y0, x1, y1] with x1 > x0, got "
                         f"{[x0, y0, x1, y1]}")
    return side


def crop_affine(crop_box: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) float32 affine mapping full-image pixels to ``size x size`` crop pixels."""
    side = _box_side(crop_box)
    a = size / side
    return np.array([[a, 0, -crop_box[0] * a], [0, a, -crop_box[1] * a]], np.float32)


def crop_intrinsics(K: np.ndarray, crop_box: np.ndarray, size: int) -> np.ndarray:
    """(3, 3) float32 intrinsics of the ``size x size`` crop: ``crop_affine @ K``."""
    A = crop_affine(crop_box, size)
    Kc = np.asarray(K, np.float64).copy()
    Kc[:2] = A.astype(np.float64) @ Kc
    return Kc.astype(np.float32)


def bbox_info(crop_box: np.ndarray, K: np.ndarray) -> np.ndarray:
    """CLIFF camera input (..., 3) float32: ``[(cx - px) / fx, (cy - py) / fy, b / fx]``.

    crop_box: (..., 4) square boxes; K: (..., 3, 3). Box centre (cx, cy) and side b in box coordinates, where the whole frame is ``[0, 0, W, H]``;
    ``(px, py) = (K[0, 2] + 1/2, K[1, 2] + 1/2)`` is the principal point in those coordinates
    (K is in pixel-centre coordinates, module docstring), so for a centred principal point
    ``((W - 1) / 2, (H - 1) / 2)`` the offsets are from ``(W / 2, H / 2)``, as in training. A
    principal point off the centre moves the offsets with it, so the translation comes out in
    the frame of that camera.
    """
    box = np.asarray(crop_box, np.float32)
    K = np.asarray(K, np.float32)
    fx, fy = K[..., 0, 0], K[..., 1, 1]
    px, py = K[..., 0, 2] + 0.5, K[..., 1, 2] + 0.5
    cx = (box[..., 0] + box[..., 2]) / 2
    cy = (box[..., 1] + box[..., 3]) / 2
    b = box[..., 2] - box[..., 0]
    return np.stack([(cx - px) / fx, (cy - py) / fy, b / fx], -1)


def uncrop(crop: np.ndarray, crop_box: np.ndarray, img_size) -> np.ndarray:
    """The ``s x s`` crop warped back into a (H, W, C) full image (zeros elsewhere): the inverse
    of cropping with ``crop_affine``; used to test the SDK on rendered crops."""
    import cv2

    A = cv2.invertAffineTransform(crop_affine(crop_box, crop.shape[0]))
    W, H = int(img_size[0]), int(img_size[1])
    return cv2.warpAffine(np.ascontiguousarray(crop), A, (W, H), flags=cv2.INTER_LINEAR)
