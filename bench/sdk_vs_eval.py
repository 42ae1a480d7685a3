"""The SDK adds no error: PA-MPJPE of ``MeshRecoverer`` on rendered test frames vs ``d2a-eval``.

    .venv/bin/python bench/sdk_vs_eval.py BUNDLE DATA_DIR [--num 128] [--precision int8] [--flip]

Each labelled crop of DATA_DIR is pasted back into its full virtual image; the SDK gets that
frame, the true intrinsics and the person box, and its keypoints are scored like d2a-eval does.
It also prints how ``HumanMesh.joint_sigma`` compares with the joints' actual pelvis-relative
errors, by decile of σ (mean σ, mean error, their ratio).
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
    p.add_argument("--flip", action="store_true", help="MeshRecoverer(flip=True)")
    args = p.parse_args()
    rec = MeshRecoverer(args.bundle, backend="onnxruntime", precision=args.precision,
                        flip=args.flip)
    reader = ShardReader(args.data)
    pred, gt, sigma, err = [], [], [], []
    for i in range(min(args.num, len(reader))):
        s = reader.sample(i)
        box = np.asarray(s["crop_box"], np.float64)
        rec.K = np.asarray(s["K"], np.float32)
        (person,) = rec(uncrop(np.asarray(s["image"])[..., ::-1], box, s["img_size"]),
                        boxes=[box_for_crop(box)])
        kp = rec.bundle.asset.keypoints(person.joints3d, person.vertices, 17)
        pred.append(kp - kp[:1])
        gt.append(np.asarray(s["kp3d"]) - np.asarray(s["kp3d"])[:1])
        j_gt = np.asarray(s["joints3d"], np.float64)
        j_pr = np.asarray(person.joints3d, np.float64)
        err.append(np.linalg.norm((j_pr - j_pr[:1]) - (j_gt - j_gt[:1]), axis=-1)[1:])
        sigma.append(np.asarray(person.joint_sigma, np.float64)[1:])  # the pelvis: 0 by definition
    pred, gt = np.stack(pred), np.stack(gt)
    print(f"SDK ({args.precision}) on {len(pred)} frames of {args.data}: "
          f"MPJPE {M.mpjpe(pred, gt).mean():.1f} mm, PA-MPJPE {M.pa_mpjpe(pred, gt).mean():.1f} mm")
    bins = M.calibration_bins(np.stack(sigma) * 1000, np.stack(err) * 1000)
    print("joint_sigma vs pelvis-relative joint error, by decile of sigma (mm): " + ", ".join(
        f"{b['sigma']:.0f}/{b['error']:.0f}" for b in bins))
    ratio = np.mean(np.stack(err)) / np.mean(np.stack(sigma))
    print(f"mean error / mean sigma: {ratio:.2f} (1 = calibrated on average)")


if __name__ == "__main__":
    main()
