"""End-to-end ms/frame of d2a-edge (fp32 and INT8 ONNX, CPU) beside MediaPipe Pose, same frames.

    bash bench/setup_mediapipe.sh            # once: MediaPipe 0.10.14 in .venv-mediapipe
    .venv/bin/python bench/vs_mediapipe.py [--model BUNDLE] [--frames 40] [--rounds 3]
        [--out docs/bench_cpu.md]

Frames are 512x512 renders of the synthetic engine (a person on a procedural background). The
d2a-edge number is the whole ``MeshRecoverer.__call__`` (crop, engine, skinning of the full mesh,
post-process), single person, full-frame box. MediaPipe runs Full (model_complexity=1), tracked
and static. Numbers depend on the machine's load, so the pipelines take turns for --rounds
rounds; the table gives the median of the round medians, and each d2a-edge pipeline's ratio to
MediaPipe tracked within the same round (median, min and max over rounds). The "cores" column
is each pipeline's process CPU time over its wall time in the timed calls: MediaPipe's desktop
CPU inference runs one XNNPACK thread, while d2a-edge's ONNX Runtime engine uses every core
unless ``--threads N`` (``MeshRecoverer(threads=N)``) is given, so compare like with like:
``--threads 1`` puts both on one core.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_frames(n: int, folder: Path) -> list[np.ndarray]:
    from d2a_edge.body import load_body
    from d2a_edge.training.data.engine import SampleGenerator, SceneConfig
    gen = SampleGenerator(load_body("anny"), SceneConfig.for_split("id", 512))
    s = gen.generate(2024, range(n))
    frames = [img[..., ::-1].copy() for img in s["image"]]
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), f)
    return frames


def time_d2a(model, precision: str, frames, repeats: int, threads: int | None) -> dict:
    from d2a_edge.recoverer import MeshRecoverer
    rec = MeshRecoverer(model, backend="onnxruntime", precision=precision, threads=threads)
    for f in frames[:3]:
        rec(f)
    t = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for f in frames:
            t0 = time.perf_counter()
            rec(f)
            t.append((time.perf_counter() - t0) * 1000)
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return {"name": f"d2a-edge {precision} ONNX", "median_ms": float(np.median(t)),
            "p90_ms": float(np.percentile(t, 90)), "frames": len(t), "cores": cores}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="bundle with fp32 and int8 ONNX (default: bundled edge-s)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="d2a-edge's engine threads (default: all cores; 1: like MediaPipe)")
    p.add_argument("--out", help="append the Markdown table to this file")
    args = p.parse_args()
    mp_python = Path(".venv-mediapipe/bin/python")
    if not mp_python.exists():
        print("MediaPipe venv missing: run bash bench/setup_mediapipe.sh", file=sys.stderr)
    rounds: list[dict[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        frames = make_frames(args.frames, Path(tmp))
        for r in range(args.rounds):
            rows = [time_d2a(args.model, prec, frames, args.repeats, args.threads)
                    for prec in ("fp32", "int8")]
            for extra in ([], ["--static"]) if mp_python.exists() else ():
                res = subprocess.run([str(mp_python), "bench/mediapipe_pose.py", tmp,
                                      "--repeats", str(args.repeats + 1), *extra],
                                     capture_output=True, text=True, check=True)
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            rounds.append({row["name"]: row for row in rows})
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} {row['median_ms']:.1f}" for n, row in rounds[-1].items()), flush=True)
    mp = "mediapipe-pose c1 tracked"
    table = ["| pipeline | median ms/frame | p90 ms | cores | frames per round | "
             "ratio to MediaPipe tracked (median, min–max) |", "|---|---|---|---|---|---|"]
    for name in rounds[0]:
        med = np.median([rd[name]["median_ms"] for rd in rounds])
        p90 = np.median([rd[name]["p90_ms"] for rd in rounds])
        cores = np.median([rd[name]["cores"] for rd in rounds])
        ratio = ""
        if name.startswith("d2a") and mp in rounds[0]:
            q = [rd[name]["median_ms"] / rd[mp]["median_ms"] for rd in rounds]
            ratio = f"{np.median(q):.2f} ({min(q):.2f}–{max(q):.2f})"
        table.append(f"| {name} | {med:.1f} | {p90:.1f} | {cores:.2f} | "
                     f"{rounds[0][name]['frames']} | {ratio} |")
    text = "\n".join(table)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
