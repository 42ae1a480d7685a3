"""Contact sheets: per sample RGB | depth | mask | 2D keypoints (kp2d skeleton) on the RGB."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# H36M-17 bones (KP17_NAMES order); the second item says left (1), right (2) or centre (0)
KP17_BONES = ((0, 1, 2), (1, 2, 2), (2, 3, 2), (0, 4, 1), (4, 5, 1), (5, 6, 1), (0, 7, 0),
              (7, 8, 0), (8, 9, 0), (9, 10, 0), (8, 11, 1), (11, 12, 1), (12, 13, 1),
              (8, 14, 2), (14, 15, 2), (15, 16, 2))
SIDE_BGR = {0: (255, 255, 255), 1: (255, 160, 0), 2: (0, 80, 255)}  # centre, left, right


def depth_tile(depth: np.ndarray) -> np.ndarray:
    """(s, s, 3) uint8 BGR: foreground depth normalised to its own range, background black."""
    fg = depth > 0
    tile = np.zeros(depth.shape + (3,), np.uint8)
    if fg.any():
        lo, hi = depth[fg].min(), depth[fg].max()
        norm = 1.0 - (depth - lo) / max(hi - lo, 1e-6)  # near = bright
        col = cv2.applyColorMap((np.clip(norm, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
        tile[fg] = col[fg]
    return tile


def joints_tile(image_rgb: np.ndarray, kp2d: np.ndarray) -> np.ndarray:
    """(s, s, 3) uint8 BGR: the image with the 17-keypoint skeleton drawn on it."""
    tile = np.ascontiguousarray(image_rgb[..., ::-1])
    pts = np.round(kp2d).astype(int)
    for a, b, side in KP17_BONES:
        cv2.line(tile, tuple(pts[a]), tuple(pts[b]), SIDE_BGR[side], 1, cv2.LINE_AA)
    for p in pts:
        cv2.circle(tile, tuple(p), 2, (0, 255, 0), -1)
    return tile


def sample_row(s: dict[str, np.ndarray]) -> np.ndarray:
    """(s, 4 s, 3) uint8 BGR strip for one sample."""
    mask = np.repeat((np.asarray(s["mask"]) * 255)[..., None], 3, -1).astype(np.uint8)
    return np.concatenate([np.asarray(s["image"])[..., ::-1], depth_tile(np.asarray(s["depth"])),
                           mask, joints_tile(np.asarray(s["image"]), np.asarray(s["kp2d"]))], 1)


def contact_sheet(samples: list[dict[str, np.ndarray]], per_row: int = 2) -> np.ndarray:
    """BGR image: ``per_row`` samples per row, each as RGB | depth | mask | joints."""
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    strips = [sample_row(s) for s in samples]
    while len(strips) % per_row:
        strips.append(np.zeros_like(strips[0]))
    rows = [np.concatenate(strips[i:i + per_row], 1) for i in range(0, len(strips), per_row)]
    sheet = np.concatenate(rows, 0)
    sheet[:, ::strips[0].shape[1]] = 255  # thin separators between samples
    return sheet


def write_contact_sheet(dataset, out: str | Path, num: int = 16) -> Path:
    """Write the first ``num`` samples of a dataset (anything with ``.sample(i)``) as an image
    whose format follows the suffix of ``out`` (.png, .jpg, ...)."""
    out = Path(out)
    n = min(num, len(dataset))
    sheet = contact_sheet([dataset.sample(i) for i in range(n)])
    out.parent.mkdir(parents=True, exist_ok=True)
    # PNG's flag on another format: OpenCV ignores it with a WARN on stderr
    params = [cv2.IMWRITE_PNG_COMPRESSION, 9] if out.suffix.lower() == ".png" else []
    if not cv2.imwrite(str(out), sheet, params):
        raise RuntimeError(f"could not write {out} (is the folder writable and the suffix .png?)")
    return out
