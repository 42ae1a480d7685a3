"""Jitter against lag of ``stream()``'s One-Euro smoothing, for choosing ``min_cutoff``/``beta``.

    python bench/smoothing.py [--model DIR] [--image samples/id_0.jpg] [--fps 30]
        [--speed-px 8] [--noise 4] [--frames 60]

Two synthetic clips from one sample crop pasted into a 1280x720 frame: the person standing
still, each frame with fresh Gaussian pixel noise (``--noise``, in 0..255 units), and the
person walking sideways ``--speed-px`` pixels a frame. The model runs once per frame
(``track(smoothing=False)``: the crops do not depend on the smoothing), and each setting's
One-Euro filter is applied to the same raw outputs. Printed per setting:

- jitter: the standing clip's frame-to-frame motion of the joints (mean over joints and
  frames, mm), which a still person should not have;
- lag: how far the walking clip's smoothed pelvis trails a straight line fitted to the raw
  pelvis track, along the line (mean over the second half of the clip, mm), and that
  distance in milliseconds at the fitted speed.

These clips are renders with synthetic noise, not a camera: use the numbers to compare
settings, and check the chosen one on your own video.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SETTINGS = ((1.0, 0.05), (1.0, 0.5), (1.0, 2.0), (1.0, 5.0), (0.5, 2.0), (0.5, 3.0), (0.5, 5.0),
            (0.3, 3.0), (0.3, 5.0))  # (min_cutoff Hz, beta); the first: the old default


def clip(image, n: int, speed_px: float, noise: float, fps: float, seed: int = 0):
    """``(t, frame)`` pairs: ``image`` pasted into a grey 1280x720 frame, moving ``speed_px``
    a frame to the right, with Gaussian noise of std ``noise``."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    for k in range(n):
        frame = np.full((720, 1280, 3), 90, np.float32)
        x = int(round(100 + speed_px * k))
        frame[200:200 + h, x:x + w] = image
        frame += rng.normal(0, noise, frame.shape)
        yield k / fps, np.clip(frame, 0, 255).astype(np.uint8)


def raw_track(rec, frames):
    """Times (T,), joints (T, J, 3) and pelvis translation (T, 3) of the unsmoothed track."""
    ts, joints, transl = [], [], []
    for t, _, (p,) in rec.track(frames, smoothing=False):
        ts.append(t), joints.append(p.joints3d), transl.append(p.translation)
    return np.array(ts), np.array(joints, np.float64), np.array(transl, np.float64)


def smooth(ts, x, min_cutoff: float, beta: float) -> np.ndarray:
    from d2a_edge.smoothing import OneEuroFilter
    f = OneEuroFilter(min_cutoff, beta)
    return np.array([f.filter(xi, t) for t, xi in zip(ts, x)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="bundle directory (default: the bundled model)")
    ap.add_argument("--image", default=str(Path(__file__).parents[1] / "samples" / "id_0.jpg"))
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--speed-px", type=float, default=8.0)
    ap.add_argument("--noise", type=float, default=4.0)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args(argv)

    import cv2

    from d2a_edge import MeshRecoverer
    image = cv2.imread(args.image)
    if image is None:
        raise SystemExit(f"cannot read {args.image}")
    rec = MeshRecoverer(args.model, backend="onnxruntime")
    ts, still_j, _ = raw_track(rec, clip(image, args.frames, 0, args.noise, args.fps))
    tw, _, walk_t = raw_track(rec, clip(image, args.frames, args.speed_px, args.noise, args.fps))
    fit = np.polynomial.polynomial.polyfit(tw, walk_t, 1)  # (2, 3): offset, velocity
    line = fit[0] + tw[:, None] * fit[1]
    speed = float(np.linalg.norm(fit[1]))
    half = len(tw) // 2
    print(f"{args.frames} frames at {args.fps:g} fps, noise {args.noise:g}; walking "
          f"{args.speed_px:g} px/frame = {speed:.2f} m/s fitted")

    def row(name, still, walk):
        jitter = np.linalg.norm(np.diff(still, axis=0), axis=-1).mean() * 1e3
        lag = -((walk[half:] - line[half:]) @ (fit[1] / speed)).mean() * 1e3
        print(f"{name:<28} jitter {jitter:6.1f} mm/frame   lag {lag:6.1f} mm = "
              f"{lag / speed:5.0f} ms")

    row("raw", still_j, walk_t)
    for mc, beta in SETTINGS:
        row(f"min_cutoff {mc:g}, beta {beta:g}", smooth(ts, still_j, mc, beta),
            smooth(tw, walk_t, mc, beta))


if __name__ == "__main__":
    main()
