"""Cutting the crops of many people, serially and with a thread pool (what ``MeshRecoverer``
does beside a GPU engine). Not a test.

    .venv/bin/python bench/bench_crops.py [--people 64] [--threads 2] [--rounds 15]

64 random person boxes in one 1280x720 frame (a sample image, resized), 192 px crops; one
OpenCV thread per task, as in ``MeshRecoverer``. Checks that both ways give the same bytes, then
times each in blocks of --rounds calls after a warm-up, twice (serial, pool, serial, pool), and
prints each block's median. Blocks, not alternating calls: alternating made the serial calls
about 8 ms slower on the 2-core CPU (the fresh 28 MB batch array of each call is paged in anew),
which overstated the pool's gain.
"""
import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from d2a_edge.imageio import read_image
from d2a_edge.recoverer import default_intrinsics, make_crops

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--people", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    frame = cv2.resize(read_image(ROOT / "samples" / "id_0.jpg"), (1280, 720))
    x = np.random.default_rng(0).uniform(0, 1100, args.people)
    boxes = np.stack([x, np.full_like(x, 100), x + 150, np.full_like(x, 500)], 1)
    K = default_intrinsics(1280, 720)
    cv2.setNumThreads(1)
    with ThreadPoolExecutor(args.threads) as pool:
        ref = make_crops(frame, boxes, K, 192)[0]
        assert np.array_equal(ref, make_crops(frame, boxes, K, 192, pool)[0])
        ways = {"serial": None, f"pool of {args.threads}": pool}
        for _ in range(2):
            for name, ex in ways.items():
                for _ in range(5):  # warm-up
                    make_crops(frame, boxes, K, 192, ex)
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    make_crops(frame, boxes, K, 192, ex)
                    times.append(time.perf_counter() - t)
                print(f"{args.people} crops, {name}: median {1e3 * np.median(times):.1f} ms")


if __name__ == "__main__":
    main()
