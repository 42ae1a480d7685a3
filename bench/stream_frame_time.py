"""Per-frame time of ``track()`` / ``stream()`` with several people, for a control loop's budget.

    python bench/stream_frame_time.py [--model DIR] [--frames 60] [--max-people 1 2 3]
        [--search-every 5] [--empty]

A synthetic 1280x720 clip at 30 fps: sample crop ``id_0`` walking right 6 px a frame and
``id_2`` standing at the right (both 384 px crops pasted from ``samples/``; they do not overlap
within ``MAX_FRAMES`` = 77 frames). For each ``--max-people`` the whole clip runs
through ``MeshRecoverer.track`` and each frame's wall time is taken; the first frame (the
first search and the engine's warm-up) is reported apart. Printed per setting: people tracked
per frame (median), frame time mean, median / 90th percentile / max (ms, frames 1..), and how many
frames took over twice the median. With ``max_people`` above the 2 people in view, the
locator keeps looking for a third. ``--empty``: the same frames with nobody in them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
WALKER_X, STEP, STANDER_X, CROP = 40, 6, 880, 384  # px; the walker's left edge moves by STEP
MAX_FRAMES = (STANDER_X - WALKER_X - CROP) // STEP + 1  # the last frame before they overlap


def two_people(n: int, empty: bool = False):
    """``(t, frame)``: id_0 walking right 6 px a frame, id_2 standing, grey 1280x720; with
    ``empty``, the grey frames alone."""
    from d2a_edge.imageio import read_image
    walker, stander = (read_image(SAMPLES / f) for f in ("id_0.jpg", "id_2.jpg"))
    for k in range(n):
        frame = np.full((720, 1280, 3), 90, np.uint8)
        x = WALKER_X + STEP * k
        if empty:
            yield k / 30, frame
            continue
        frame[200:200 + walker.shape[0], x:x + walker.shape[1]] = walker
        frame[250:250 + stander.shape[0], STANDER_X:STANDER_X + stander.shape[1]] = stander
        yield k / 30, frame


def frame_times(rec, frames, **kw) -> tuple[np.ndarray, list[int]]:
    """Wall seconds per frame of ``rec.track`` and the number of people each frame gave."""
    times, counts = [], []
    start = time.perf_counter()
    for _, _, people in rec.track(frames, **kw):
        now = time.perf_counter()
        times.append(now - start)
        counts.append(len(people))
        start = now
    return np.array(times), counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="bundle (default: the bundled edge-s)")
    ap.add_argument("--frames", type=int, default=60, help=f"at most {MAX_FRAMES}")
    ap.add_argument("--max-people", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--search-every", type=int, default=5)
    ap.add_argument("--empty", action="store_true", help="nobody in the frames")
    args = ap.parse_args(argv)
    if not 2 <= args.frames <= MAX_FRAMES:
        ap.error(f"--frames must be 2..{MAX_FRAMES} (after {MAX_FRAMES} frames the walker "
                 "overlaps the other person)")
    from d2a_edge import MeshRecoverer
    rec = MeshRecoverer(args.model, backend="onnxruntime")
    frames = list(two_people(args.frames, args.empty))
    print(f"{args.frames} frames 1280x720, {0 if args.empty else 2} people in view, "
          f"search_every={args.search_every}")
    print("max_people | people/frame | first frame ms | frame ms mean | median / p90 / max "
          "| frames > 2x median")
    for n in args.max_people:
        t, counts = frame_times(rec, iter(frames), max_people=n,
                                search_every=args.search_every)
        rest = t[1:] * 1e3
        med = float(np.median(rest))
        print(f"{n:10d} | {np.median(counts):12.0f} | {t[0] * 1e3:14.0f} | "
              f"{rest.mean():13.1f} | {med:6.1f} / {np.percentile(rest, 90):6.1f} / {rest.max():6.1f} | "
              f"{int((rest > 2 * med).sum()):3d} of {len(rest)}")


if __name__ == "__main__":
    main()
