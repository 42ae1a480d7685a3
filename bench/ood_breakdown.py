"""Where a checkpoint's error comes from, on a test set written by ``d2a-data generate``.

    .venv/bin/python bench/ood_breakdown.py RUN DATA_DIR [--num 512] [--scene 256]

Per branch of the pose sampler (ID; OOD: the four sports templates and the uniform-random
extreme poses) it prints the checkpoint's MPJPE and PA-MPJPE (d2a-eval's protocol) beside the
PA-MPJPE of the branch's noise-free centre pose on the same side, with the true shape: a
baseline that knows the template but none of its jitter. ``--scene N`` re-renders the first N
samples with the same poses and shapes, taking the OOD scene away one factor at a time (lighting
and image effects, then the camera elevation, then field of view, framing and crop).
"""
import argparse
import dataclasses

import numpy as np
import torch

from d2a_edge.body import load_body
from d2a_edge.training import metrics as M
from d2a_edge.training.checkpoint import load_model_config
from d2a_edge.training.data.dataset import ShardDataset, to_tensors
from d2a_edge.training.data.engine import SampleGenerator, SceneConfig
from d2a_edge.training.evaluate import predict

BRANCHES = ("id", "pitch", "kick", "lunge", "jump", "uniform")


def centre_pa_mpjpe(body, gen: SampleGenerator, params: list, data: ShardDataset) -> np.ndarray:
    """(N,) PA-MPJPE (mm) of each sample's noise-free branch-centre pose against its labels."""
    rot_c, rot_gt, betas = [], [], []
    for i, p in enumerate(params):
        s = data.sample(i)
        if not np.allclose(p.rotmats[1:], s["rotmats"][1:], atol=1e-4):
            raise RuntimeError(f"sample {i} of {data.root} was not rendered by this data engine "
                               "(its pose differs): re-render the test set")
        centre = gen.poser.compose(p.pose.centre, p.pose.mirrored)
        centre[0] = s["rotmats"][0]  # the true root: PA-MPJPE ignores it anyway
        rot_c.append(centre)
        rot_gt.append(s["rotmats"])
        betas.append(s["betas"])
    to = lambda a: torch.as_tensor(np.stack(a), dtype=torch.float32)  # noqa: E731
    zero = torch.zeros(len(params), 3)
    kp = []
    with torch.no_grad():
        for rot in (rot_c, rot_gt):
            verts, joints = body(to(rot), to(betas), zero)
            k = body.keypoints(joints, verts, 17).numpy()  # (N, 17, 3)
            kp.append(k - k[:, :1])  # pelvis-aligned
    return M.pa_mpjpe(*kp)


def scene_rows(model, gen: SampleGenerator, seed: int, num: int, device: str) -> list[tuple]:
    """(label, MPJPE, PA-MPJPE) of the first ``num`` samples as the scene loses OOD factors."""
    base = gen.config
    ref = SceneConfig.for_split("id", base.image_size, base.background_dir)
    steps = [("as rendered", {}),
             ("ID lighting and image effects", {"effects": "id"}),
             ("+ ID camera elevation range", {"elevation": ref.elevation}),
             ("+ ID field of view, framing and crop",
              {k: getattr(ref, k) for k in ("hfov", "body_frac", "crop_scale", "crop_jitter")})]
    rows, change = [], {}
    for label, more in steps:
        change.update(more)
        g = SampleGenerator(gen.asset, dataclasses.replace(base, **change))
        batches = []
        for start in range(0, num, 32):
            idx = list(range(start, min(start + 32, num)))
            arrays = g.generate(seed, idx)
            samples = [to_tensors({k: v[n] for k, v in arrays.items()}, i)
                       for n, i in enumerate(idx)]
            batches.append(torch.utils.data.default_collate(samples))
        r = predict(model, batches, device, progress=False)
        rows.append((label, r["mpjpe"].mean(), r["pa_mpjpe"].mean()))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="run directory or checkpoints/step_* directory")
    p.add_argument("data", help="test set written by `d2a-data generate`")
    p.add_argument("--num", type=int, default=512, help="first N samples (default 512)")
    p.add_argument("--scene", type=int, default=0, metavar="N",
                   help="also re-render the first N samples without the OOD scene factors")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    data = ShardDataset(args.data)
    cfg = data.manifest["config"]
    num = min(args.num, len(data))
    model, mcfg, meta = load_model_config(args.checkpoint, args.device, True)
    gen = SampleGenerator(load_body(mcfg.model.body), SceneConfig.for_split(
        cfg["split"], cfg["image_size"], cfg.get("backgrounds")))
    params = [gen.params(cfg["seed"], i) for i in range(num)]
    kinds = np.array([q.pose.kind for q in params])
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(num)), batch_size=32)
    r = predict(model, loader, args.device, progress=True)
    centre = centre_pa_mpjpe(model.body, gen, params, data)
    print(f"{args.checkpoint} (step {meta['step']}) on {args.data}, {num} samples, mm\n")
    print("| pose branch | samples | MPJPE | PA-MPJPE | branch centre pose, PA-MPJPE |")
    print("|---|---|---|---|---|")
    for kind in [k for k in BRANCHES if k in kinds] + ["all"]:
        m = kinds == kind if kind != "all" else np.ones(num, bool)
        print(f"| {kind} | {m.sum()} | {r['mpjpe'][m].mean():.1f} | {r['pa_mpjpe'][m].mean():.1f}"
              f" | {centre[m].mean():.1f} |")
    if args.scene:
        print(f"\nfirst {min(args.scene, num)} samples, same poses and shapes, re-rendered:\n")
        print("| scene | MPJPE | PA-MPJPE |\n|---|---|---|")
        for label, mpjpe, pa in scene_rows(model, gen, cfg["seed"], min(args.scene, num),
                                           args.device):
            print(f"| {label} | {mpjpe:.1f} | {pa:.1f} |")


if __name__ == "__main__":
    main()
