"""How much error the SDK adds: PA-MPJPE of ``MeshRecoverer`` on rendered test frames, to set
beside ``d2a-eval``'s on the same data.

    .venv/bin/python bench/sdk_vs_eval.py BUNDLE DATA_DIR [--num 128] [--precision int8] [--flip]
        [--dataset-crops]

Each labelled crop of DATA_DIR is pasted back into its full virtual image; the SDK gets that
frame, the true intrinsics and the person box, and its keypoints are scored like d2a-eval does.
``--dataset-crops``: the SDK's engine, skinning and post-processing get the dataset's own crop
instead (as d2a-eval does) and the re-cut crop is compared with it pixel by pixel, so that the
second resampling's share of the difference is measured.
It also prints how ``HumanMesh.joint_sigma`` compares with the joints' actual pelvis-relative
errors, by decile of σ (mean σ, mean error, their ratio).
"""
import argparse

import numpy as np

from d2a_edge.camera import uncrop
from d2a_edge.recoverer import MeshRecoverer, box_for_crop, make_crops
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
    p.add_argument("--dataset-crops", action="store_true",
                   help="feed the dataset's own crops to the SDK's engine and post-processing")
    args = p.parse_args()
    rec = MeshRecoverer(args.bundle, backend="onnxruntime", precision=args.precision,
                        flip=args.flip)
    reader = ShardReader(args.data)
    pred, gt, sigma, err, pixels = [], [], [], [], []
    for i in range(min(args.num, len(reader))):
        s = reader.sample(i)
        box = np.asarray(s["crop_box"], np.float64)
        rec.K = np.asarray(s["K"], np.float32)
        frame = uncrop(np.asarray(s["image"])[..., ::-1], box, s["img_size"])
        if args.dataset_crops:
            person, diff = on_dataset_crop(rec, s, frame, box)
            pixels.append(diff)
        else:
            (person,) = rec(frame, boxes=[box_for_crop(box)])
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
    if pixels:
        print(f"the SDK's re-cut crop against the dataset's: mean |difference| "
              f"{np.mean(pixels):.2f} of 255 (per crop: max {np.max(pixels):.2f})")


def on_dataset_crop(rec: MeshRecoverer, s: dict, frame: np.ndarray, box: np.ndarray):
    """The SDK's engine, skinning and meshes on the dataset's own crop (RGB 0..1, its square
    box and the true K), and the mean absolute difference (0..255) between that crop and the
    one the SDK cuts from ``frame`` with the same box."""
    crops, sq, info = make_crops(frame, np.asarray([box_for_crop(box)], np.float32), rec.K,
                                 rec.size)
    own = np.asarray(s["image"], np.float32).transpose(2, 0, 1)[None] / 255  # RGB 0..1
    if not np.allclose(sq[0], box, atol=1e-3):
        raise SystemExit(f"box_for_crop does not give back the crop box: {sq[0]} vs {box}")
    out = rec.infer(own.astype(np.float32), info)
    verts, joints = rec.skin(out)
    (person,) = rec.meshes(out, verts, joints, sq, rec.K)
    return person, float(np.abs(crops[0] - own[0]).mean() * 255)


if __name__ == "__main__":
    main()
