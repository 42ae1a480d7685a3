"""The SDK adds no error: PA-MPJPE of ``MeshRecoverer`` on rendered test frames vs ``d2a-eval``.

    .venv/bin/python bench/sdk_vs_eval.py BUNDLE DATA_DIR [--num 128] [--precision int8]

Each labelled crop of DATA_DIR is pasted back into its full virtual image; the SDK gets that
frame, the true intrinsics and the person box, and its keypoints are scored like d2a-eval does.
"""
import argparse

import numpy as np

from d2a_edge.camera import uncrop
from d2a_edge.recoverer import MeshRecoverer, box_for_crop
from d2a_edge.training import metrics as M
from d2a_edge.training.data.shards import ShardReader


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("data")
    p.add_argument("--num", type=int, default=128)
    p.add_argument("--precision", default="fp32")
    args = p.parse_args()
    rec = MeshRecoverer(args.bundle, backend="onnxruntime", precision=args.precision)
    reader = ShardReader(args.data)
    pred, gt = [], []
    for i in range(min(args.num, len(reader))):
        s = reader.sample(i)
        box = np.asarray(s["crop_box"], np.float64)
        rec.K = np.asarray(s["K"], np.float32)
        (person,) = rec(uncrop(np.asarray(s["image"])[..., ::-1], box, s["img_size"]),
                        boxes=[box_for_crop(box)])
        kp = rec.bundle.asset.keypoints(person.joints3d, person.vertices, 17)
        pred.append(kp - kp[:1])
        gt.append(np.asarray(s["kp3d"]) - np.asarray(s["kp3d"])[:1])
    pred, gt = np.stack(pred), np.stack(gt)
    print(f"SDK ({args.precision}) on {len(pred)} frames of {args.data}: "
          f"MPJPE {M.mpjpe(pred, gt).mean():.1f} mm, PA-MPJPE {M.pa_mpjpe(pred, gt).mean():.1f} mm")


if __name__ == "__main__":
    main()
