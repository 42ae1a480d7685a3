"""``d2a-eval``: accuracy of a checkpoint on one or more datasets.

Metrics (per split): MPJPE and PA-MPJPE (mm, H36M-17 keypoints, pelvis-aligned), PVE (mm, all
mesh vertices, root-aligned), root translation error (cm), root orientation error (degrees,
camera frame), PCK3D@150 mm, and the calibration of the predicted per-joint sigma against the
joint head's actual error.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from d2a_edge._cli import at_least
from d2a_edge.body import load_body
from d2a_edge.flip import average_mirrored, mirror_inputs
from d2a_edge.training import checkpoint as ckpt
from d2a_edge.training import metrics as M
from d2a_edge.training import recover
from d2a_edge.training.checkpoint import load_model_config
from d2a_edge.training.model import D2AHMR

HELP = """Evaluate CHECKPOINT (a run directory -> its latest checkpoint, or a step_* directory)
on each --data DIR (shards from `d2a-data generate`). Writes to --out (default: RUN_DIR/eval/
step_N for a checkpoint, outside checkpoints/, which training prunes; ./eval-NAME for an
exported bundle): metrics.json (per split), metrics.md (Markdown table) and
calibration_<split>.png (predicted sigma vs actual joint error, binned)."""

METRIC_KEYS = ("mpjpe", "pa_mpjpe", "pve", "trans_err_cm", "root_rot_deg", "pck3d_150")


@torch.no_grad()
def predict(model: D2AHMR, loader, device, progress: bool = True) -> dict[str, np.ndarray]:
    """Per-sample errors over a DataLoader of sample-schema batches (numpy, see METRIC_KEYS),
    plus ``sigma`` and ``mu_err`` (B, J) in mm for the calibration."""
    from tqdm import tqdm

    body = model.body
    acc: dict[str, list] = {}
    for batch in tqdm(loader, desc="d2a-eval", unit="batch", disable=not progress):
        b = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        out = model(b["image"], b["bbox_info"])
        verts_gt, joints_gt = body(b["rotmats"], b["betas"], b["transl"])
        kp_pr = body.keypoints(out["joints3d"], out["vertices"], 17).cpu().numpy()
        kp_gt = body.keypoints(joints_gt, verts_gt, 17).cpu().numpy()
        kp_pr, kp_gt = kp_pr - kp_pr[:, :1], kp_gt - kp_gt[:, :1]  # pelvis-aligned
        v_pr = M.root_align(out["vertices"].cpu().numpy(), out["translation"].cpu().numpy())
        v_gt = M.root_align(verts_gt.cpu().numpy(), b["transl"].cpu().numpy())
        mu_gt = (b["joints3d"] - b["transl"][:, None]).cpu().numpy()
        mu_err = np.linalg.norm(out["joint_mu"].cpu().numpy() - mu_gt, axis=-1) * 1000
        rows = {"mpjpe": M.mpjpe(kp_pr, kp_gt), "pa_mpjpe": M.pa_mpjpe(kp_pr, kp_gt),
                "pve": M.pve(v_pr, v_gt),
                "trans_err_cm": M.translation_error(out["translation"].cpu().numpy(),
                                                    b["transl"].cpu().numpy()),
                "root_rot_deg": M.rotation_error_deg(out["rotmats"][:, 0].cpu().numpy(),
                                                     b["rotmats"][:, 0].cpu().numpy()),
                "pck3d_150": M.pck3d(kp_pr, kp_gt, 150.0),
                "sigma": np.linalg.norm(out["joint_sigma"].cpu().numpy(), axis=-1) * 1000,
                "mu_err": mu_err}
        for k, v in rows.items():
            acc.setdefault(k, []).append(v)
    if not acc:
        raise ValueError("the dataset is empty: nothing to evaluate")
    return {k: np.concatenate(v) for k, v in acc.items()}


def summarize(per_sample: dict[str, np.ndarray]) -> dict:
    out = {k: float(per_sample[k].mean()) for k in METRIC_KEYS}
    out["num_samples"] = int(len(per_sample["mpjpe"]))
    out["calibration"] = M.calibration_bins(per_sample["sigma"], per_sample["mu_err"])
    s, e = per_sample["sigma"].ravel(), per_sample["mu_err"].ravel()
    out["sigma_error_spearman"] = float(_spearman(s, e))
    return out


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation, ties given their mean rank; 0 when either is constant (the
    ranks by position gave a constant input a correlation)."""
    from scipy.stats import rankdata
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def calibration_png(bins: list[dict], path: str | Path, title: str, size: int = 480) -> Path:
    """Binned mean sigma (x) vs mean error (y), both mm, with the y = x line (OpenCV drawing)."""
    img = np.full((size, size, 3), 255, np.uint8)
    m, top = 60, max(max(b["sigma"] for b in bins), max(b["error"] for b in bins), 1e-6) * 1.1
    to_px = lambda x, y: (int(m + x / top * (size - 2 * m)),  # noqa: E731
                          int(size - m - y / top * (size - 2 * m)))
    cv2.rectangle(img, to_px(0, 0), to_px(top, top), (0, 0, 0), 1)
    cv2.line(img, to_px(0, 0), to_px(top, top), (160, 160, 160), 1, cv2.LINE_AA)
    pts = [to_px(b["sigma"], b["error"]) for b in bins]
    for p, q in zip(pts, pts[1:]):
        cv2.line(img, p, q, (200, 80, 0), 2, cv2.LINE_AA)
    for p in pts:
        cv2.circle(img, p, 4, (200, 80, 0), -1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (m, 30), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "predicted sigma |s| (mm)", (size // 2 - 90, size - 20), font, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "joint error (mm)", (5, m - 8), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for frac in (0.0, 0.5, 1.0):
        v = top * frac
        cv2.putText(img, f"{v:.0f}", (to_px(v, 0)[0] - 10, size - m + 18), font, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{v:.0f}", (10, to_px(0, v)[1] + 4), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    path = Path(path)
    if not cv2.imwrite(str(path), img):
        raise RuntimeError(f"could not write {path}")
    return path


def markdown_table(results: dict[str, dict], title: str) -> str:
    head = ("| split | N | MPJPE (mm) | PA-MPJPE (mm) | PVE (mm) | transl. err (cm) | "
            "orient. err (deg) | PCK3D@150 | sigma-error Spearman |")
    lines = [f"# {title}", "", head, "|" + "---|" * 9]
    for split, r in results.items():
        lines.append(f"| {split} | {r['num_samples']} | {r['mpjpe']:.1f} | {r['pa_mpjpe']:.1f} | "
                     f"{r['pve']:.1f} | {r['trans_err_cm']:.1f} | {r['root_rot_deg']:.1f} | "
                     f"{r['pck3d_150']:.3f} | "
                     f"{r['sigma_error_spearman']:.2f} |")
    return "\n".join(lines) + "\n"


class FlipAveraged(torch.nn.Module):
    """``model`` with flip test-time augmentation, as the SDK's ``MeshRecoverer(flip=True)``
    (``d2a_edge.flip``): its outputs for each crop and for the crop's mirror image, averaged,
    then skinned. ``perm``: ``BodyAsset.mirror_joints()`` of the model's body."""

    KEYS = {"rotmats": "pose", "betas": "shape", "translation": "translation",
            "joint_sigma": "joint_sigma", "joint_mu": "joint_mu"}  # model output -> SDK name

    def __init__(self, model: D2AHMR, perm: np.ndarray):
        super().__init__()
        self.model, self.body, self.perm = model, model.body, perm

    def _run(self, image: torch.Tensor, info: torch.Tensor) -> dict[str, np.ndarray]:
        out = self.model.forward_head(self.model.forward_features(image), info)
        return {sdk: out[k].float().cpu().numpy() for k, sdk in self.KEYS.items()}

    def forward(self, image: torch.Tensor, bbox_info: torch.Tensor) -> dict[str, torch.Tensor]:
        mirrored = [torch.from_numpy(a).to(image.device) for a in
                    mirror_inputs(image.float().cpu().numpy(), bbox_info.float().cpu().numpy())]
        avg = average_mirrored(self._run(image, bbox_info), self._run(*mirrored), self.perm)
        return self.model.skin({k: torch.from_numpy(avg[sdk]).to(image.device)
                                for k, sdk in self.KEYS.items()})


def evaluate_checkpoint(checkpoint: str | Path, datasets: dict[str, object], out_dir: str | Path,
                        *, batch_size: int = 32, device: str = "cpu", use_ema: bool = True,
                        workers: int = 0, progress: bool = True,
                        flip: bool = False) -> dict[str, dict]:
    """Evaluate on ``{split_name: Dataset}``; writes metrics.json / metrics.md / PNGs to out_dir.
    ``flip``: with flip test-time augmentation (``FlipAveraged``)."""
    model, cfg, meta = load_model_config(checkpoint, device, use_ema)
    for split, ds in datasets.items():  # all of them before anything is written
        size = int(ds[0]["image"].shape[-1])
        if size != cfg.model.image_size:
            raise ValueError(f"dataset {split!r} has {size}px crops; the checkpoint's config "
                             f"{cfg.name!r} expects {cfg.model.image_size}px")
    if flip:
        model = FlipAveraged(model, load_body(cfg.model.body).mirror_joints())
    bundle = recover.is_bundle(checkpoint)  # its weights carry no step: name the bundle
    label = f"{cfg.name}, bundle {checkpoint}" if bundle else f"{cfg.name}, step {meta['step']}"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for split, ds in datasets.items():
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)
        results[split] = summarize(predict(model, loader, device, progress))
        results[split]["calibration_png"] = str(calibration_png(
            results[split]["calibration"], out_dir / f"calibration_{_safe(split)}.png",
            f"{label} - {split}"))
    source = checkpoint if bundle else ckpt.resolve_checkpoint(checkpoint)
    payload = {"checkpoint": str(source), "config": cfg.name,
               "step": meta["step"], "flip": flip, "splits": results}
    (out_dir / "metrics.json").write_text(json.dumps(payload, indent=1))
    (out_dir / "metrics.md").write_text(markdown_table(
        results, f"d2a-eval: {label}" + (", flip" if flip else "")))
    return results


def default_out(checkpoint) -> Path:
    """Where d2a-eval writes without --out: ``RUN_DIR/eval/step_N`` for a checkpoint (not inside
    ``checkpoints/step_N``, which training deletes when it prunes old checkpoints), and
    ``./eval-NAME`` for an exported bundle."""
    if recover.is_bundle(checkpoint):
        return Path(f"eval-{Path(checkpoint).resolve().name}")
    step = ckpt.resolve_checkpoint(checkpoint)
    run = step.parent.parent if step.parent.name == "checkpoints" else step.parent
    return run / "eval" / step.name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2a-eval", description=HELP,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="run directory, checkpoints/step_* directory, or an "
                                      "exported bundle (its weights are recovered first)")
    p.add_argument("--data", action="append", required=True,
                   help="shard directory (repeat for several splits); the split name comes "
                        "from its manifest (id / ood), else the directory name")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/eval/step_N, "
                   "or ./eval-NAME for a bundle)")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--workers", type=at_least(0), default=0, help="DataLoader workers")
    p.add_argument("--no-ema", action="store_true", help="use raw weights even if EMA exists")
    p.add_argument("--flip", action="store_true", help="flip test-time augmentation, as "
                   "MeshRecoverer(flip=True): each crop and its mirror image, averaged")
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    from d2a_edge.training.data.dataset import ShardDataset
    device = args.device if args.device != "auto" else \
        ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        datasets = {}
        for d in args.data:
            ds = ShardDataset(d)
            name = str(getattr(ds, "split", None) or Path(d).name)
            datasets[name if name not in datasets else f"{name}-{Path(d).name}"] = ds
        out = args.out or default_out(args.checkpoint)
        results = evaluate_checkpoint(args.checkpoint, datasets, out, batch_size=args.batch_size,
                                      device=device, use_ema=not args.no_ema,
                                      workers=args.workers, flip=args.flip)
    except (ValueError, RuntimeError, OSError) as e:
        sys.exit(f"d2a-eval: error: {e}")
    print((Path(out) / "metrics.md").read_text())
    print(f"wrote {Path(out) / 'metrics.json'}, {Path(out) / 'metrics.md'} and "
          f"{', '.join(r['calibration_png'] for r in results.values())}")


if __name__ == "__main__":
    main()
