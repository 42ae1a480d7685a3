"""The built-in person box against the true box and the whole frame, on rendered test frames.

    .venv/bin/python bench/locate_vs_box.py DATA_DIR [--num 24] [--model BUNDLE]

Each labelled crop of DATA_DIR is pasted back into its full virtual image (black elsewhere, true
intrinsics); the SDK runs with ``boxes="auto"`` (``MeshRecoverer.locate``), with the true person
box and with the whole frame. Prints mean PA-MPJPE (H36M-17, mm), mean score and the median
time of an ``auto`` call.
"""
import argparse
import time

import numpy as np

from d2a_edge.camera import uncrop
from d2a_edge.recoverer import MeshRecoverer, box_for_crop
from d2a_edge.tracking import search_windows
from d2a_edge.training import metrics as M
from d2a_edge.training.data.shards import ShardReader


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--num", type=int, default=24)
    p.add_argument("--model", default=None)
    args = p.parse_args()
    rec = MeshRecoverer(args.model, backend="onnxruntime")
    reader = ShardReader(args.data)
    err = {"auto": [], "true box": [], "whole frame": []}
    score = {k: [] for k in err}
    seconds = []
    for i in range(min(args.num, len(reader))):
        s = reader.sample(i)
        box = np.asarray(s["crop_box"], np.float64)
        true = [box_for_crop(box)]
        rec.K = np.asarray(s["K"], np.float32)
        frame = uncrop(np.asarray(s["image"])[..., ::-1], box, s["img_size"])
        gt = np.asarray(s["kp3d"])
        for name, boxes in (("auto", "auto"), ("true box", true), ("whole frame", None)):
            t0 = time.perf_counter()
            (person,) = rec(frame, boxes=boxes)
            if name == "auto":
                seconds.append(time.perf_counter() - t0)
            kp = rec.bundle.asset.keypoints(person.joints3d, person.vertices, 17)
            err[name].append(M.pa_mpjpe(kp[None], gt[None])[0])
            score[name].append(person.score)
    h, w = frame.shape[:2]
    print(f"{len(seconds)} frames of {args.data}; auto searched {len(search_windows(w, h))} "
          f"windows of the last {w}x{h} frame, median {np.median(seconds):.2f} s per call")
    print("| boxes | PA-MPJPE mm | mean score |\n|---|---|---|")
    for k in err:
        print(f"| {k} | {np.mean(err[k]):.1f} | {np.mean(score[k]):.2f} |")


if __name__ == "__main__":
    main()
