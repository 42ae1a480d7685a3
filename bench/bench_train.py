"""Model size and training speed of the D2A-HMR configs.

For each config: parameters (model; the RLE flow separately), GFLOPs of one inference forward
at batch 1 (the exported graph: ``forward_features`` + ``forward_head``; LBS skinning counted
separately) with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs = 2 x multiply-adds), and
CPU latency of that forward. For ``--train-config`` (default edge-s): training samples/s of
d2a-train's own step (forward, all losses, backward, grad clip, AdamW, EMA) at ``--batch`` on
``--device`` (cpu, or cuda with the config's autocast; the data pipeline is not included: see
d2a-train's log). ``--count-ops`` counts the ATen ops of one step per phase (on a GPU each is
about one kernel launch); ``--profile N`` prints the N costliest ops of one step;
``--channels-last`` also times each batch size with channels-last weights and images
(``d2a-train --channels-last``).

    python bench/bench_train.py [--configs edge-s edge-m paper ...] [--threads 2] [--json OUT]
    python bench/bench_train.py --configs edge-s --train-config edge-s-gpu --device cuda \
        --batch 256 512 1024 --steps 20 --count-ops --profile 25 [--channels-last]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
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


def label_batch(model, batch: int, s: int) -> dict[str, torch.Tensor]:
    """Random ``s`` px images with body-model-consistent labels, on the model's device: rest
    pose at 3 m, crop = the projected box, f = 500."""
    J, device = model.num_joints, model.body.v_template.device
    x, bi = inputs(batch, s)
    with torch.no_grad():
        rot = torch.eye(3, device=device).expand(batch, J, 3, 3).contiguous()
        betas = torch.zeros(batch, model.num_betas, device=device)
        transl = torch.tensor([[0.0, 0.0, 3.0]] * batch, device=device)
        verts, joints = model.body(rot, betas, transl)
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]]).expand(batch, 3, 3)
    b = {"image": x, "bbox_info": bi, "rotmats": rot, "betas": betas, "transl": transl,
         "joints3d": joints, "joints2d": torch.full((batch, J, 2), s / 2.0),
         "verts_coarse": verts[:, model.body.coarse_index], "K": K,
         "crop_box": torch.tensor([[170.0, 90, 470, 390]]).expand(batch, 4),
         "depth": torch.full((batch, s, s), 3.0), "mask": torch.ones(batch, s, s)}
    return {k: v.to(device) for k, v in b.items()}


VIEW_OPS = frozenset((
    "view", "_unsafe_view", "_reshape_alias", "reshape", "as_strided", "expand", "t",
    "transpose", "permute", "slice", "select", "unsqueeze", "squeeze", "alias", "unbind",
    "split", "split_with_sizes", "chunk", "narrow", "diagonal", "unflatten", "flatten",
    "detach", "lift_fresh", "empty", "empty_strided", "new_empty", "new_empty_strided",
    "resolve_conj", "resolve_neg", "_local_scalar_dense"))


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that do work (views, allocations and read-backs excluded), per
    phase: on a GPU each is roughly one kernel launch."""

    def __init__(self):
        super().__init__()
        self.phase, self.counts = "backward + grad clip", {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] not in VIEW_OPS:
            self.counts[self.phase] = self.counts.get(self.phase, 0) + 1
        return func(*args, **(kwargs or {}))

    def wrap(self, fn, phase: str):
        def run(*a, **k):
            prev, self.phase = self.phase, phase
            try:
                return fn(*a, **k)
            finally:
                self.phase = prev
        return run


def train_speed(name: str, asset, batch: int, steps: int, device: str = "cpu",
                count_ops: bool = False, profile: int = 0, channels_last: bool = False,
                cuda_graph: bool = False) -> dict:
    """Samples/s of d2a-train's own step (``train_step``: forward, losses, backward, grad clip,
    AdamW, EMA, in the config's precision) on random images with consistent labels; with
    ``count_ops`` also the ATen ops of one step, per phase; with ``profile`` the table of the
    ``profile`` ops that took the most (device, on a GPU) time in one step; ``channels_last``:
    the config's ``train.channels_last`` on; ``cuda_graph``: the forward and backward replayed
    from CUDA graphs as ``d2a-train --cuda-graph`` does (raises if capturing fails)."""
    from d2a_edge.training import train as T
    cfg = load_config(name, {"train": {"channels_last": True}} if channels_last else None)
    st = T.build_state(cfg, T.Dist(device=torch.device(device)), total_steps=steps + 4,
                       asset=asset)
    amp, _ = T.autocast_for(torch.device(device), cfg.optim)
    batch_d = label_batch(st.model, batch, cfg.model.image_size)
    cuda = device.startswith("cuda")
    if cuda_graph:
        if not T.graph_or_eager(st, batch_d, T.amp_dtype(torch.device(device), cfg.optim)):
            raise RuntimeError("CUDA graph capture failed (the warning above says why)")
        amp = contextlib.nullcontext
    times = []
    for i in range(steps + 3):
        t = time.perf_counter()
        T.train_step(st, batch_d, cfg, amp)
        if cuda:
            torch.cuda.synchronize()
        if i >= 3:  # the first steps warm up
            times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    out = {"config": name, "batch": batch, "step_s": sec, "samples_per_s": batch / sec,
           "device": torch.cuda.get_device_name() if cuda else "cpu",
           "channels_last": channels_last, "cuda_graph": cuda_graph}
    if count_ops:
        c = OpCounter()
        if not cuda_graph:  # replayed graphs issue no ATen ops to count
            st.module.forward = c.wrap(st.module.forward, "forward + losses")
        st.optimizer.step = c.wrap(st.optimizer.step, "AdamW")
        if st.ema is not None:
            st.ema.update = c.wrap(st.ema.update, "EMA")
        with c:
            T.train_step(st, batch_d, cfg, amp)
        out["ops"] = c.counts
    if profile:
        from torch.profiler import ProfilerActivity
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            T.train_step(st, batch_d, cfg, amp)
            if cuda:
                torch.cuda.synchronize()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        out["profile"] = prof.key_averages().table(sort_by=key, row_limit=profile)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=None, help="default: all built-in configs")
    p.add_argument("--train-config", default="edge-s")
    p.add_argument("--batch", type=int, nargs="+", default=[8],
                   help="training batch sizes to time (ops and profile: the first only)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=10, help="timed inference forwards")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the training speed is measured")
    p.add_argument("--count-ops", action="store_true",
                   help="also count the ATen ops of one training step, per phase")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile one training step and print its N costliest ops")
    p.add_argument("--channels-last", action="store_true",
                   help="also time each batch size with channels-last weights and images")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time each batch size with the forward and backward replayed from "
                   "CUDA graphs (d2a-train --cuda-graph; GPU only)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.cuda_graph and not args.device.startswith("cuda"):
        p.error("--cuda-graph needs --device cuda")
    torch.set_num_threads(args.threads)
    asset = load_body("anny")
    rows = [describe(n, asset, args.repeats) for n in (args.configs or available_configs())]
    print(f"| config | size | backbone | depth | params (M) | GFLOPs graph | GFLOPs LBS | "
          f"CPU ms b1 ({args.threads} thr) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['image_size']} | {r['backbone']} | {r['depth']} | "
              f"{r['params_m']:.2f} | {r['gflops_graph']:.2f} | {r['gflops_skinning']:.3f} | "
              f"{r['cpu_latency_ms_b1']:.1f} |")
    trains = []
    variants = [(False, False)] + [(True, False)] * args.channels_last \
        + [(False, True)] * args.cuda_graph  # (channels-last, CUDA graphs)
    runs = [(b, *v) for b in args.batch for v in variants]
    for i, (batch, channels_last, graphed) in enumerate(runs):
        first = i < len(variants)  # ops and profile: each variant once, at the first batch size
        tr = train_speed(args.train_config, asset, batch, args.steps, args.device,
                         args.count_ops and first, args.profile if first else 0, channels_last,
                         graphed)
        where = tr["device"] if tr["device"] != "cpu" else f"CPU ({args.threads} threads)"
        layout = ", channels-last" * channels_last + ", CUDA graphs" * graphed
        print(f"\ntraining {tr['config']} on {where}, batch {tr['batch']}{layout}: "
              f"{tr['step_s']:.3f} s/step = {tr['samples_per_s']:.1f} samples/s")
        if "ops" in tr:
            print(f"ATen ops of one step (~kernel launches on a GPU): "
                  f"{sum(tr['ops'].values())} = "
                  + ", ".join(f"{k} {v}" for k, v in tr["ops"].items()))
        if "profile" in tr:
            print(tr.pop("profile"))
        trains.append(tr)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"configs": rows, "train": trains, "threads": args.threads}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
