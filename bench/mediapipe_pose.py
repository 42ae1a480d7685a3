"""Latency of MediaPipe Pose (legacy solution) on a folder of frames; run in the bench venv.

Prints one JSON line: {"name", "median_ms", "p90_ms", "frames", "cores"} ("cores": process CPU
time over wall time in the timed passes). Used by bench/vs_mediapipe.py;
the venv is made by bench/setup_mediapipe.sh (mediapipe==0.10.14 pulls jax and opencv-contrib,
so it never enters the project's own environment).
"""
import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("frames")
    p.add_argument("--complexity", type=int, default=1)
    p.add_argument("--static", action="store_true", help="static_image_mode (no tracking)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import mediapipe as mp
    files = sorted(Path(args.frames).glob("*.png"))
    frames = [cv2.imread(str(f)) for f in files]
    times, cpu = [], []
    with mp.solutions.pose.Pose(static_image_mode=args.static,
                                model_complexity=args.complexity) as pose:
        for r in range(args.repeats):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for f in frames:
                t0 = time.perf_counter()
                pose.process(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
                times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - cpu0) / (time.perf_counter() - wall0))
    times = times[len(frames):]  # first pass is warm-up
    print(json.dumps({"name": f"mediapipe-pose c{args.complexity}"
                      + (" static" if args.static else " tracked"),
                      "median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
                      "frames": len(times), "cores": float(np.median(cpu[1:]))}))


if __name__ == "__main__":
    main()
