"""What a checkpoint's 3D error is made of, on test sets written by ``d2a-data generate``.

    .venv/bin/python bench/error_anatomy.py RUN DATA_DIR [DATA_DIR ...] [--num 512]

RUN is a training run, a checkpoint or an exported bundle (as for ``d2a-eval``). Per test set
it prints, with d2a-eval's protocol (H36M-17 keypoints, pelvis-aligned, EMA weights):

- PA-MPJPE per keypoint, and how often the prediction fits better with left and right swapped;
- the 2D error: the predicted keypoints projected into the crop against the rendered ones, in
  crop pixels, also with both pelvises put on each other (so a translation error does not count).
  A small 2D error with a large 3D one is depth ambiguity; a large 2D error means the model
  did not find the limbs in the image;
- pose against shape: PA-MPJPE of the predicted pose on the true shape, of the true pose on the
  predicted shape and on the mean shape, and how well each shape coefficient is recovered
  (Pearson r between true and predicted);
- PA-MPJPE and translation error by the person's distance from the camera.
"""
import argparse

import numpy as np
import torch

from d2a_edge.body.asset import KP17_NAMES
from d2a_edge.camera import crop_intrinsics, project
from d2a_edge.training import metrics as M
from d2a_edge.training.checkpoint import load_model_config
from d2a_edge.training.data.dataset import ShardDataset

DISTANCES_M = (0, 3, 5, 8, 100)
SIDES = {"l_": "r_", "r_": "l_"}
LEFT_RIGHT = [KP17_NAMES.index(SIDES.get(n[:2], n[:2]) + n[2:]) for n in KP17_NAMES]


def run(model, data: ShardDataset, num: int, batch: int = 64) -> dict[str, np.ndarray]:
    """Predictions and labels for the first ``num`` samples, as numpy arrays."""
    body, acc = model.body, {}
    subset = torch.utils.data.Subset(data, range(min(num, len(data))))
    with torch.no_grad():
        for b in torch.utils.data.DataLoader(subset, batch_size=batch):
            out = model(b["image"], b["bbox_info"])
            verts, joints = body(b["rotmats"], b["betas"], b["transl"])
            rows = {"kp_pr": body.keypoints(out["joints3d"], out["vertices"], 17),
                    "kp_gt": body.keypoints(joints, verts, 17),
                    "rot_pr": out["rotmats"], "rot_gt": b["rotmats"],
                    "betas_pr": out["betas"], "betas_gt": b["betas"],
                    "t_pr": out["translation"], "t_gt": b["transl"],
                    "kp2d": b["kp2d"], "K": b["K"], "crop_box": b["crop_box"]}
            for k, v in rows.items():
                acc.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in acc.items()}


def to_crop_px(points: np.ndarray, K: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Camera-frame points (B, N, 3) projected into crop pixels (B, N, 2)."""
    return np.stack([project(p, crop_intrinsics(k, b, size)) for p, k, b in zip(points, K, box)])


def rest_keypoints(body, rotmats: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Pelvis-aligned H36M-17 keypoints of a pose and shape."""
    with torch.no_grad():
        verts, joints = body(torch.from_numpy(rotmats), torch.from_numpy(betas),
                             torch.zeros(len(rotmats), 3))
        kp = body.keypoints(joints, verts, 17).numpy()
    return kp - kp[:, :1]


def report(name: str, r: dict[str, np.ndarray], body, size: int) -> None:
    pr, gt = r["kp_pr"] - r["kp_pr"][:, :1], r["kp_gt"] - r["kp_gt"][:, :1]
    per_joint = np.linalg.norm(M.procrustes_align(pr, gt) - gt, axis=-1) * 1000
    pa = per_joint.mean(1)
    print(f"\n## {name}: {len(pa)} samples, PA-MPJPE {pa.mean():.1f} mm")
    print("PA-MPJPE per keypoint (mm): "
          + ", ".join(f"{n} {v:.0f}" for n, v in zip(KP17_NAMES, per_joint.mean(0))))

    uv = to_crop_px(r["kp_pr"], r["K"], r["crop_box"], size)
    err2d = np.linalg.norm(uv - r["kp2d"], axis=-1)
    centred = np.linalg.norm((uv - uv[:, :1]) - (r["kp2d"] - r["kp2d"][:, :1]), axis=-1)
    label = np.abs(to_crop_px(r["kp_gt"], r["K"], r["crop_box"], size) - r["kp2d"]).max()
    print(f"labels: the true keypoints project onto the rendered ones within {label:.3f} px")
    print(f"2D error in {size}-px crops: mean {err2d.mean():.1f} px (median {np.median(err2d):.1f}), "
          f"pelvises on each other {centred.mean():.1f} px; per keypoint: "
          + ", ".join(f"{n} {v:.0f}" for n, v in zip(KP17_NAMES, err2d.mean(0))))

    swapped = M.pa_mpjpe(pr[:, LEFT_RIGHT], gt)
    print(f"left and right swapped fit better by over 20 mm: {(swapped < pa - 20).mean():.1%} "
          "of the samples")

    rows = {"predicted pose, true shape": (r["rot_pr"], r["betas_gt"]),
            "true pose, predicted shape": (r["rot_gt"], r["betas_pr"]),
            "true pose, mean shape": (r["rot_gt"], np.zeros_like(r["betas_gt"]))}
    gt_rest = rest_keypoints(body, r["rot_gt"], r["betas_gt"])
    print("pose against shape, PA-MPJPE (mm): " + "; ".join(
        f"{k} {M.pa_mpjpe(rest_keypoints(body, *v), gt_rest).mean():.1f}" for k, v in rows.items()))
    corr = [np.corrcoef(r["betas_gt"][:, i], r["betas_pr"][:, i])[0, 1]
            for i in range(r["betas_gt"].shape[1])]
    print("shape coefficients recovered, Pearson r: " + " ".join(f"{c:.2f}" for c in corr)
          + f"; mean norm predicted {np.linalg.norm(r['betas_pr'], axis=1).mean():.2f}, "
          f"true {np.linalg.norm(r['betas_gt'], axis=1).mean():.2f}")

    z = r["t_gt"][:, 2]
    trans = np.linalg.norm(r["t_pr"] - r["t_gt"], axis=1) * 100
    for lo, hi in zip(DISTANCES_M[:-1], DISTANCES_M[1:]):
        m = (z >= lo) & (z < hi)
        if m.any():
            print(f"distance {lo}-{hi} m: {m.sum()} samples, PA-MPJPE {pa[m].mean():.1f} mm, "
                  f"translation error {trans[m].mean():.1f} cm")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("data", nargs="+")
    p.add_argument("--num", type=int, default=512)
    args = p.parse_args()
    model, cfg, _ = load_model_config(args.run, "cpu", True)
    for path in args.data:
        report(path, run(model, ShardDataset(path), args.num), model.body, cfg.model.image_size)


if __name__ == "__main__":
    main()
