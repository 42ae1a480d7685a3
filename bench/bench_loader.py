"""Fresh samples per second out of d2a-train's own on-the-fly loader, without training. Not a test.

    python bench/bench_loader.py [--config edge-s-gpu] [--workers N] [--batches 20] [--float]

Builds the loader the way d2a-train does (``feed.build_dataset`` + ``feed.make_loader``; spawned
EGL workers and pinned memory on CUDA) and times ``--batches`` batches after two per worker have
arrived (the first measures the start-up; the second drains what the workers rendered ahead while
the others started: d2a-train's loader prefetches two batches a worker), each moved to the device
with ``feed.to_device`` (which expands the compact uint8 images). ``--float`` sends float32 images
and masks instead, as the loader did before, to compare. On the H200 this loader alone gave 2,812
fresh samples/s (uint8, 14 workers), while d2a-train used about 1,560/s at 6.1 steps/s without
echo (stage 6): the training step, not the loader, was the limit (docs/gpu.md).
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from d2a_edge._cli import at_least
from d2a_edge.training.config import load_config
from d2a_edge.training.distributed import Dist
from d2a_edge.training.feed import build_dataset, make_loader, to_device


def measure(cfg, device: torch.device, workers: int, batches: int, compact: bool) -> dict:
    args = SimpleNamespace(data=None, on_the_fly=["id", "ood"], on_the_fly_size=1_000_000)
    dataset = build_dataset(args, cfg)
    for part in getattr(dataset, "datasets", [dataset]):
        part.compact = compact
    loader = make_loader(dataset, cfg, Dist(device=device), 0, workers)
    it = iter(loader)
    t0 = time.perf_counter()
    for _ in range(max(workers, 1)):  # start-up: every worker has delivered its first batch
        batch = to_device(next(it), device)
    start_s = time.perf_counter() - t0
    for _ in range(workers):  # batches rendered ahead during the start-up (prefetch factor 2),
        batch = to_device(next(it), device)  # which would otherwise count as fast ones
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = to_device(next(it), device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = batches * cfg.train.batch_size
    del it, loader
    return {"compact": compact, "workers": workers, "batch": cfg.train.batch_size,
            "batches": batches, "start_s": round(start_s, 2), "seconds": round(dt, 2),
            "samples_per_s": round(n / dt, 1), "image_dtype": str(batch["image"].dtype)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="edge-s-gpu")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="rendering workers (default: the config's)")
    p.add_argument("--batch-size", type=at_least(1), default=None)
    p.add_argument("--batches", type=at_least(1), default=20, help="batches timed")
    p.add_argument("--float", action="store_true", help="also time float32 images and masks")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    over = {"train": {"batch_size": args.batch_size}} if args.batch_size else {}
    cfg = load_config(args.config, over)
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda":
        torch.zeros(1, device=device)  # a CUDA context, as in d2a-train (spawned workers)
    workers = cfg.train.num_workers if args.workers is None else args.workers
    rows = []
    for compact in ([True, False] if args.float else [True]):
        r = measure(cfg, device, workers, args.batches, compact)
        rows.append(r)
        print(f"{'uint8' if compact else 'float32'} images: {r['samples_per_s']:.0f} fresh "
              f"samples/s ({r['batches']} batches of {r['batch']}, {workers} workers, "
              f"{r['seconds']:.1f} s; start-up {r['start_s']:.1f} s) on {device}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
