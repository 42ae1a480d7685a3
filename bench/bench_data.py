"""Synthetic data engine throughput (samples/s) and where the time goes. Not a test.

    .venv/bin/python bench/bench_data.py [--num 512] [--size 192] [--workers 2]

1. Stage breakdown, one process: pose sampling, LBS, camera/crop, render, readback,
   post-process (background, effects, labels) and shard write, in ms per sample (wall and the
   process's CPU time, which is what the stage costs when the machine is quiet).
2. End to end ``generate()`` (spawned workers, shards on disk) for --workers 1 and N: samples/s
   by the wall clock, and samples per CPU-second of the workers (x cores = the quiet-machine
   estimate on a machine shared with other jobs).
Target: >= 150 samples/s at 192 px on the 2-core CPU machine (llvmpipe).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


from d2a_edge.body import load_body
from d2a_edge.training.data.engine import SampleGenerator, SceneConfig
from d2a_edge.training.data.shards import GenerateConfig, generate, write_shard

STAGES = ("pose_sampling", "lbs", "camera", "render", "readback", "post_process", "write")


def breakdown(split: str, num: int, size: int, batch: int) -> dict[str, float]:
    """ms per sample per stage in this process (after a warm-up batch)."""
    gen = SampleGenerator(load_body("anny"), SceneConfig.for_split(split, size))
    gen.generate(0, range(batch))
    gen.timings.clear()
    tmp = tempfile.mkdtemp(prefix="bench_data_")
    t0, c0 = time.perf_counter(), time.process_time()
    write = 0.0
    for start in range(0, num, batch):
        arrays = gen.generate(1, range(start, min(start + batch, num)))
        tw = time.perf_counter()
        write_shard(Path(tmp), f"s{start}", arrays)
        write += time.perf_counter() - tw
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(tmp)
    ms = {k: 1e3 * gen.timings[k] / num for k in STAGES if k != "write"}
    ms["write"] = 1e3 * write / num
    ms["total_wall"], ms["total_cpu"] = 1e3 * wall / num, 1e3 * cpu / num
    return ms


def end_to_end(split: str, num: int, size: int, workers: int) -> tuple[float, float, float]:
    """generate() into a temp dir: (samples/s overall, samples/s in steady state (without the
    workers' start-up and idle tail: ``steady_rate``), samples per worker-CPU-second)."""
    out = tempfile.mkdtemp(prefix="bench_data_e2e_")
    shutil.rmtree(out)
    cfg = GenerateConfig(split=split, num=num, out=out, size=size, seed=0,
                         shard_size=max(num // (8 * workers), 16), workers=workers)
    stamps: list[tuple[float, int]] = []
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    generate(cfg, on_shard=lambda e: stamps.append((time.perf_counter(), e["count"])))
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(out)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return num / wall, steady_rate(stamps, workers), num / max(cpu, 1e-9)


def steady_rate(stamps: list[tuple[float, int]], workers: int) -> float:
    """Samples/s between the arrival of the ``workers``-th shard (each worker's first shard
    includes its start-up) and, with enough shards, the ``workers``-th from the end (the tail,
    where workers run out of shards and sit idle, is left out too)."""
    first = workers
    last = len(stamps) - workers if len(stamps) > 2 * workers + 1 else len(stamps)
    window = stamps[first:last]
    return sum(n for _, n in window) / max(stamps[last - 1][0] - stamps[first - 1][0], 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num", type=int, default=512)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=32, help="samples per LBS batch / shard")
    p.add_argument("--skip-e2e", action="store_true")
    a = p.parse_args()
    print(f"cores={os.cpu_count()} affinity={len(os.sched_getaffinity(0))} "
          f"load={os.getloadavg()[0]:.2f} size={a.size} num={a.num}")
    for split in ("id", "ood"):
        ms = breakdown(split, a.num, a.size, a.batch)
        parts = " ".join(f"{k}={ms[k]:.2f}" for k in STAGES)
        print(f"[{split}] one process, ms/sample: {parts} | total wall={ms['total_wall']:.2f} "
              f"cpu={ms['total_cpu']:.2f} -> {1e3 / ms['total_wall']:.0f} samples/s wall, "
              f"{1e3 / ms['total_cpu']:.0f} per CPU-second")
    if a.skip_e2e:
        return
    for split in ("id", "ood"):
        for w in sorted({1, a.workers}):
            rate, steady, per_cpu = end_to_end(split, a.num, a.size, w)
            print(f"[{split}] generate --workers {w}: {rate:.0f} samples/s overall, {steady:.0f} "
                  f"steady state (after start-up), {per_cpu:.0f} samples per worker-CPU-second "
                  f"incl. start-up; load={os.getloadavg()[0]:.2f}")
    print(f"target: >= 150 samples/s at 192 px; measured load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
