"""Image-level effects: compositing over a background, photometric noise, and the OOD
effects (motion blur, occluding boxes, harsh exposure). Labels are never changed: the stored
mask and depth stay the unoccluded, unblurred body."""
from __future__ import annotations

import cv2
import numpy as np


class ImageEffects:
    """Compositing + photometric effects for ``size x size`` crops (holds a fixed noise tile)."""

    def __init__(self, size: int):
        self.size = size
        tile = np.random.default_rng(20261127).standard_normal((2 * size, 2 * size, 3))
        self.noise = tile.astype(np.float32)  # (2s, 2s, 3); cropped at random offsets

    def compose(self, rng: np.random.Generator, rgb: np.ndarray, mask: np.ndarray,
                background: np.ndarray, ood: bool) -> np.ndarray:
        """(s, s, 3) uint8 image from the body render rgb (s, s, 3), mask (s, s), background."""
        img = np.where(mask[..., None] > 0, rgb, background)
        if ood:
            if rng.random() < 0.6:
                img = occlude(rng, img, mask)
            if rng.random() < 0.6:
                img = motion_blur(rng, img)
            img = exposure(rng, img, gamma=(0.45, 1.8), contrast=(0.6, 1.6))
        else:
            if rng.random() < 0.2:
                img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.0))
            img = exposure(rng, img, gamma=(0.8, 1.25), contrast=(0.85, 1.15))
        s = self.size
        y, x = rng.integers(0, s, 2)
        noise = self.noise[y:y + s, x:x + s] * np.float32(rng.uniform(0.0, 4.0))
        return np.clip(img + noise, 0, 255).astype(np.uint8)


def exposure(rng: np.random.Generator, img: np.ndarray, gamma: tuple[float, float],
             contrast: tuple[float, float]) -> np.ndarray:
    """Random gamma and contrast about mid-grey, through a 256-entry lookup table."""
    g, c = rng.uniform(*gamma), rng.uniform(*contrast)
    x = np.arange(256, dtype=np.float32) / 255
    lut = np.clip(((x ** g) - 0.5) * c + 0.5, 0, 1) * 255
    return cv2.LUT(img, lut.astype(np.uint8))


def motion_blur(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Linear motion blur of 5-21 px at a random angle."""
    n = int(rng.integers(5, 22))
    k = np.zeros((n, n), np.float32)
    k[n // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D(((n - 1) / 2, (n - 1) / 2), rng.uniform(0, 180), 1.0)
    k = cv2.warpAffine(k, rot, (n, n))
    return cv2.filter2D(img, -1, k / max(k.sum(), 1e-6), borderType=cv2.BORDER_REFLECT)


def occlude(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """1-3 solid or noisy boxes, each centred on a random body pixel, up to 40% of the side."""
    s = img.shape[0]
    ys, xs = np.nonzero(mask)
    out = img.copy()
    for _ in range(int(rng.integers(1, 4))):
        if len(ys) == 0:
            break
        k = rng.integers(len(ys))
        w, h = (rng.uniform(0.1, 0.4, 2) * s).astype(int)
        x0, y0 = max(int(xs[k]) - w // 2, 0), max(int(ys[k]) - h // 2, 0)
        box = out[y0:y0 + h, x0:x0 + w]
        if rng.random() < 0.5:
            box[:] = rng.integers(0, 256, 3, dtype=np.uint8)
        else:
            box[:] = rng.integers(0, 256, box.shape, dtype=np.uint8)
    return out
