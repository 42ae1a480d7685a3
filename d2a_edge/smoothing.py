"""``stream()``'s filters: One-Euro (Casiez et al., CHI 2012) over arrays of any shape for
its outputs, and an alpha-beta box filter for its crops."""
from __future__ import annotations

import math

import numpy as np

# stream()/track() defaults. `python bench/smoothing.py` (a person walking at 1.27 m/s, 30 fps,
# pixel noise 4): the earlier 1.0 Hz and beta 0.05 left 9.6 mm of jitter per frame at rest but
# trailed the walker by 121 ms; 0.5 Hz and beta 3 leave 11.5 mm and trail by 22 ms.
MIN_CUTOFF = 0.5  # Hz
BETA = 3.0  # per m/s (arrays in metres)


class OneEuroFilter:
    """Adaptive low-pass: smooth when still, responsive when moving.

    min_cutoff (Hz): lower = smoother at rest. beta: higher = less lag on fast motion.
    d_cutoff (Hz): cutoff for the speed estimate. Call ``filter(x, t)`` with time in seconds.
    """

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA,
                 d_cutoff: float = 1.0):
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError(f"need min_cutoff > 0, d_cutoff > 0, beta >= 0; got "
                             f"{min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._x = self._dx = self._t = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def filter(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = max(t - self._t, 1e-6)
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


class BoxFilter:
    """Alpha-beta filter of a tracked person box (x0, y0, x1, y1 px): ``track()``'s crops.

    The centre follows a constant-velocity model: each measured box corrects the predicted
    centre by ``g`` of the miss and the velocity by ``h`` of the miss per second; the size
    follows a running mean with weight ``g_size`` for the newest box. ``next_box`` keeps the
    last crop while the filtered box stays within ``hold`` of its side from it, moving the
    kept crop on with the velocity when that exceeds ``still_speed`` box sides a second.

    Why: the model's depth depends on the crop (one percent larger moved a person at 7.5 m
    by up to 13 cm), so a crop that followed every measured box fed that change back into
    the next frame: 70 mm of depth jitter per frame for a still person in identical frames.
    ``python bench/smoothing.py`` measures the jitter and the lag.
    """

    def __init__(self, g: float = 0.5, h: float = 0.2, g_size: float = 0.2,
                 hold: float = 0.04, still_speed: float = 0.25):
        if not (0 < g <= 1 and 0 <= h <= 1 and 0 < g_size <= 1 and 0 <= hold < 0.5
                and still_speed >= 0):
            raise ValueError(f"need 0 < g <= 1, 0 <= h <= 1, 0 < g_size <= 1, 0 <= hold < 0.5, "
                             f"still_speed >= 0; got {g}, {h}, {g_size}, {hold}, {still_speed}")
        self.g, self.h, self.g_size, self.hold = g, h, g_size, hold
        self.still_speed = still_speed
        self.reset()

    def reset(self) -> None:
        """Forget the person (the next ``next_box`` is None)."""
        self._c = self._v = self._size = self._t = None
        self._crop = self._crop_t = None

    def next_box(self, t: float) -> np.ndarray | None:
        """The crop box for the frame at time ``t``; None before the first ``update``."""
        if self._c is None:
            return None
        box = self._box(self._c + self._v * max(t - self._t, 0.0), self._size)
        if self._crop is not None:
            moving = np.linalg.norm(self._v) > self.still_speed * self._size.max()
            kept = self._crop + np.tile(self._v * moving, 2) * max(t - self._crop_t, 0.0)
            if np.abs(box - kept).max() <= self.hold * self._size.max():
                box = kept
        self._crop, self._crop_t = box, t
        return box.astype(np.float32)

    def update(self, box, t: float) -> None:
        """Correct the state with the person's box measured in the frame at time ``t``."""
        box = np.asarray(box, np.float64)
        c, size = (box[:2] + box[2:]) / 2, box[2:] - box[:2]
        if self._c is None:
            self._c, self._v, self._size, self._t = c, np.zeros(2), size, t
            return
        dt = t - self._t
        predicted = self._c + self._v * max(dt, 0.0)
        miss = c - predicted
        self._c = predicted + self.g * miss
        if dt > 0:
            self._v = self._v + self.h * miss / dt
        self._size = self._size + self.g_size * (size - self._size)
        self._t = t

    @staticmethod
    def _box(centre, size) -> np.ndarray:
        return np.concatenate([centre - size / 2, centre + size / 2])
