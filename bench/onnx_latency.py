"""Batch-1 latency of several ONNX graphs on the CPU, interleaved so that they share the machine's
load alike. Not a test.

    .venv/bin/python bench/onnx_latency.py GRAPH.onnx [GRAPH.onnx ...] [--blocks 16] [--calls 25]
        [--threads 2]

Each block runs every graph --calls times in turn (after 10 warm-up calls each) on one random
192x192 crop; prints each graph's median ms over all calls, the block medians in time order
(whose spread shows how noisy the machine was: on the 2-core VM here all graphs slow down in the
same blocks) and each graph's time against the first graph's, block by block. ``d2a-bench`` times the whole SDK call of one bundle; this
compares graphs (e.g. two INT8 recipes) under the same conditions.
"""
import argparse
import time

import numpy as np
import onnxruntime as ort


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("graphs", nargs="+")
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--calls", type=int, default=25)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    sessions = []
    for path in args.graphs:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions.append(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
    size = sessions[0].get_inputs()[0].shape[-1]
    feed = {"image": np.random.default_rng(0).random((1, 3, size, size), np.float32),
            "bbox_info": np.array([[0.05, -0.02, 0.3]], np.float32)}
    for s in sessions:
        for _ in range(10):
            s.run(None, feed)
    times = np.zeros((len(sessions), args.blocks, args.calls))
    for b in range(args.blocks):
        for k, s in enumerate(sessions):
            for c in range(args.calls):
                t0 = time.perf_counter()
                s.run(None, feed)
                times[k, b, c] = time.perf_counter() - t0
    for path, t in zip(args.graphs, times * 1000):
        blocks = " ".join(f"{v:.1f}" for v in np.median(t, axis=1))
        print(f"{path}: median {np.median(t):.1f} ms; block medians in time order {blocks}")
    if len(sessions) > 1:  # the same block, the same machine: a drift cancels in the ratio
        block = np.median(times, axis=2)
        for path, ratio in zip(args.graphs[1:], block[1:] / block[0]):
            print(f"{path} / {args.graphs[0]}, block by block: median {np.median(ratio):.2f} "
                  f"(min {ratio.min():.2f}, max {ratio.max():.2f})")


if __name__ == "__main__":
    main()
