"""``d2a-bench``: per-stage latency of the SDK (pre-process, engine, skinning, post-process).

Prints a Markdown table of the median milliseconds per stage for every requested precision and
batch size, on the frames given (``--images DIR``) or on synthetic frames; ``--json`` writes the
medians and the p90s. Runs on whatever backend ``--backend`` picks (CPU or GPU); ``--threads N``
gives ONNX Runtime's engine N CPU threads (default: all cores).

The calls are taken in ``--rounds`` rounds, every precision and batch size in turn in each, and
the table also gives each row's total against the first precision's in the same round: on a
shared machine whose speed drifts over minutes (the 2-core VM here: fp32 15 or 18.7 ms, INT8
8.5 or 12.4 ms, switching together), that ratio is steadier than the medians.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

from d2a_edge._cli import at_least
from d2a_edge.backends import BACKENDS, DEVICES, PRECISIONS, BackendUnavailable
from d2a_edge.bundle import BundleError
from d2a_edge.recoverer import MESHES, SKINNING


def _frames(images: str | None, n: int) -> list[np.ndarray]:
    """The first ``n`` frames of ``images`` (InputError if none can be read), or synthetic
    640x480 noise without it."""
    if images:
        from d2a_edge.imageio import InputError, open_source
        frames = [f for _, f in itertools.islice(open_source(images), n)]
        if not frames:
            raise InputError(f"no frame could be read from {images}")
        return frames
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(n)]


def bench_stages(rec, frames: list[np.ndarray], batch: int, repeats: int) -> dict[str, list]:
    """Milliseconds per stage, one entry per call (``batch`` full-frame crops per call)."""
    from d2a_edge.imageio import as_bgr8
    from d2a_edge.recoverer import make_crops
    times = {k: [] for k in ("preprocess", "engine", "skinning", "postprocess", "total")}
    for r in range(repeats):
        frame = as_bgr8(frames[r % len(frames)])
        H, W = frame.shape[:2]
        boxes = np.tile(np.array([[0, 0, W, H]], np.float32), (batch, 1))
        with rec.one_thread_helpers():  # as in MeshRecoverer.__call__
            t0 = time.perf_counter()
            K = rec.camera(W, H)
            crops, sq, info = make_crops(frame, boxes, K, rec.size, rec.crop_pool)
            t1 = time.perf_counter()
            out = rec.infer(crops, info)  # with flip: both engine runs and the average
            t2 = time.perf_counter()
            verts, joints = rec.skin(out)
            t3 = time.perf_counter()
            rec.meshes(out, verts, joints, sq, K)
            t4 = time.perf_counter()
        for k, v in (("preprocess", t1 - t0), ("engine", t2 - t1), ("skinning", t3 - t2),
                     ("postprocess", t4 - t3), ("total", t4 - t0)):
            times[k].append(v * 1000)
    return times


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2a-bench", description=__doc__)
    p.add_argument("--model", help="bundle directory (default: bundled edge-s)")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--skinning", default="auto", choices=SKINNING)
    p.add_argument("--mesh", default="full", choices=MESHES,
                   help="output mesh: full, or the coarse sub-mesh (fewer vertices to skin)")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=PRECISIONS)
    p.add_argument("--flip", action="store_true",
                   help="flip test-time augmentation (MeshRecoverer(flip=True)): engine twice")
    p.add_argument("--batch", nargs="+", type=at_least(1), default=[1, 8])
    p.add_argument("--repeats", type=at_least(1), default=30)
    p.add_argument("--warmup", type=at_least(0), default=3)
    p.add_argument("--rounds", type=at_least(1), default=5,
                   help="split the calls into this many rounds, every precision and batch in "
                        "turn in each (a machine whose speed drifts slows all rows alike)")
    p.add_argument("--images", help="folder of frames (default: synthetic 640x480 noise)")
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="ONNX Runtime engine threads (MeshRecoverer(threads=N); default: all "
                   "cores)")
    p.add_argument("--json", help="also write the numbers here (medians and p90s)")
    return p


def run_rounds(recs: dict, cases: list[tuple[str, int]], frames, repeats: int, rounds: int):
    """Per case (precision, batch): every stage's times (ms) and each round's median total.

    Every case runs a block of calls in turn in each round, so that a machine that slows down
    for a while (a shared VM) slows all cases alike, and the per-round ratios cancel it."""
    times = {c: {} for c in cases}
    block_total = {c: [] for c in cases}
    for r in range(rounds):
        n = repeats // rounds + (r < repeats % rounds)
        for c in cases:
            t = bench_stages(recs[c[0]], frames, c[1], n)
            for k, v in t.items():
                times[c].setdefault(k, []).extend(v)
            block_total[c].append(float(np.median(t["total"])))
    return times, block_total


def report(args, recs: dict, cases, times, block_total, rounds: int) -> list[dict]:
    """Print the Markdown table; returns its rows as dicts (for ``--json``)."""
    rows, results = [], []
    for prec, b in cases:
        rec, t = recs[prec], times[(prec, b)]
        med = {k: float(np.median(v)) for k, v in t.items()}
        p90 = {k: float(np.percentile(v, 90)) for k, v in t.items()}
        ratio = np.array(block_total[(prec, b)]) / np.array(block_total[(args.precision[0], b)])
        results.append({"precision": prec, "batch": b, "mesh": args.mesh, "flip": args.flip,
                        "backend": rec.backend.name, "threads": args.threads,
                        "device": getattr(rec.backend, "device", "?"), "skinning": rec.skinning,
                        "median_ms": med, "p90_ms": p90, "rounds": rounds,
                        "round_total_ms": block_total[(prec, b)],
                        f"ratio_to_{args.precision[0]}": [float(x) for x in ratio]})
        rows.append(f"| {prec} | {b} | {rec.backend.name}/{results[-1]['device']} | "
                    f"{rec.skinning} | " + " | ".join(f"{med[k]:.2f}" for k in t)
                    + f" | {med['total'] / b:.2f} | {np.median(ratio):.2f} "
                    f"({ratio.min():.2f}–{ratio.max():.2f}) |")
    print("| precision | batch | backend | skinning on | preprocess | engine | skinning | "
          f"postprocess | total | per person | total / {args.precision[0]}'s, same round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"(median ms per call over {args.repeats} calls, taken in {rounds} rounds in which "
          "every row ran in turn; the last column: median (min–max) over the rounds of the "
          "ratio of the round's median totals; engine threads: "
          f"{args.threads or 'all cores'})")
    return results


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    from d2a_edge.imageio import InputError
    from d2a_edge.recoverer import MeshRecoverer
    if args.json:  # checked before the run, not after it
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            p.error(f"--json {args.json}: folder {folder} does not exist or is not writable")
    try:
        frames = _frames(args.images, 16)
    except InputError as e:
        p.error(str(e))
    recs = {}
    for prec in args.precision:
        try:
            recs[prec] = MeshRecoverer(args.model, backend=args.backend, device=args.device,
                                       precision=prec, skinning=args.skinning, mesh=args.mesh,
                                       flip=args.flip, threads=args.threads)
        except (BundleError, BackendUnavailable, RuntimeError) as e:
            p.error(str(e))
    cases = [(prec, b) for prec in args.precision for b in args.batch]
    for prec, b in cases:
        bench_stages(recs[prec], frames, b, args.warmup)
    rounds = min(args.rounds, args.repeats)
    times, block_total = run_rounds(recs, cases, frames, args.repeats, rounds)
    results = report(args, recs, cases, times, block_total, rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
