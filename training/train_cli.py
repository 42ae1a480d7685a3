"""``d2a-train``'s command line: parses the flags, fills in a resumed run's settings, loads the
config and the data and calls ``train.run``; prints the run's summary as JSON."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

from d2a_edge._cli import at_least
from d2a_edge.training import checkpoint as ckpt
from d2a_edge.training.config import available_configs, load_config
from d2a_edge.training.feed import build_dataset, data_source
from d2a_edge.training.train import run

HELP = """Train D2A-HMR from CONFIG (a built-in name: {names}, or a YAML path).

Data: --data DIR reads shards written by `d2a-data generate`; --on-the-fly renders samples
as it goes (needs EGL). Writes RUN_DIR/run.json, RUN_DIR/checkpoints/step_*/ (model.safetensors,
train_state.safetensors, meta.json; latest.json points at the newest) and RUN_DIR/tb/
(TensorBoard). --resume continues from RUN_DIR's latest checkpoint with the same optimizer,
scheduler, AMP scaler, RNG and data position. Multi-GPU / multi-process:
  torchrun --standalone --nproc_per_node N -m d2a_edge.training.train_cli CONFIG ...
(gloo on CPU, nccl on GPU; multi-node: torchrun --nnodes ... --rdzv-endpoint ...)."""


CPU_SPEED_UP = ("12.6 -> 16.2 samples/s with bf16 and channels-last together on the 2-core "
                "development CPU; README, Training on a CPU")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="d2a-train", description=HELP.format(
        names=", ".join(available_configs())), formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("config", help="built-in config name or YAML path")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", nargs="+", help="shard directories written by `d2a-data generate` "
                     "(several are concatenated)")
    src.add_argument("--on-the-fly", nargs="*", metavar="SPLIT", choices=("id", "ood"),
                     help="render samples while training, from these splits (default: the "
                     "config's data.split); e.g. --on-the-fly id ood")
    p.add_argument("--on-the-fly-size", type=at_least(1), default=1_000_000,
                   help="samples per on-the-fly epoch (default 1e6)")
    p.add_argument("--out", required=True, help="run directory (created)")
    p.add_argument("--steps", type=at_least(1), default=None, help="total steps (default: config)")
    p.add_argument("--resume", action="store_true",
                   help="continue from RUN_DIR's latest checkpoint (same config and --freeze); "
                   "a RUN_DIR without one starts at step 0 with a warning, so a restart loop "
                   "can always pass --resume. It keeps the stopped run's schedule, seed, batch "
                   "size, learning rate and checkpoint interval unless those flags are given")
    p.add_argument("--batch-size", type=at_least(1), default=None, help="per-process batch size")
    p.add_argument("--lr", type=float, default=None, help="override optim.lr (peak learning rate)")
    p.add_argument("--ckpt-every", type=at_least(0), default=None,
                   help="steps between checkpoints (0: only the last)")
    p.add_argument("--workers", type=at_least(0), default=None,
                   help="DataLoader workers per process")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=at_least(1), default=None,
                   help="torch CPU threads per process")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (EMA if present), fresh optimizer")
    p.add_argument("--echo", type=at_least(1), default=1,
                   help="data echoing factor for data-bound runs (steps per fresh batch)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last (NHWC) weights and images (GPU: cuDNN's NHWC batch norm "
                   "and convolutions; same results up to rounding)")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast when training on the CPU (optim.amp_cpu; the GPU uses "
                   "its own autocast, optim.amp). The speed-up needs native bf16 (AVX512-BF16 or "
                   f"AMX): {CPU_SPEED_UP}")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the forward (GPU: fewer kernel launches; the first step "
                   "compiles for minutes; falls back to eager with a warning if that fails)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="replay each step's forward and backward from CUDA graphs captured on "
                   "the first batch (one CUDA process; far fewer kernel launches from the "
                   "host; falls back to eager with a warning if capturing fails)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="fit the step count (and the cosine schedule) to this much training "
                   "time after timing the first steps, re-fitted 20 times as the speed changes; "
                   "stop with a checkpoint when it runs out")
    p.add_argument("--stop-after", type=float, default=None, metavar="SECONDS",
                   help="stop with a checkpoint after this many seconds, before the schedule "
                   "ends (one process); --resume continues it")
    p.add_argument("--warm-fresh", type=at_least(0), default=0, metavar="STEPS",
                   help="with --init BUNDLE (or a checkpoint recovered from one): for the "
                   "first STEPS steps train only the training-only parts the bundle lacks "
                   "(default 0)")
    p.add_argument("--freeze", nargs="+", default=None, metavar="MODULE",
                   help="keep these top-level modules of the model fixed (train.freeze), e.g. "
                   "`--freeze backbone depth_net` to fine-tune the fusion transformer and heads "
                   "(on the 2-core CPU a step took 1.65 s instead of about 2.7 s); give the "
                   "same on --resume")
    return p


RESUMED = ("seed", "batch_size", "lr", "ckpt_every")  # --resume keeps these unless given again


def resumed_settings(run_dir) -> dict:
    """The settings of the run ``--resume`` continues (``RUN_DIR/run.json``): its seed, batch
    size, learning rate and checkpoint interval, which a resumed run keeps for the flags not
    given again (the config's defaults took their place, e.g. batch 32 for a run of batch 8);
    empty when there is no readable run.json."""
    try:
        r = json.loads((Path(run_dir) / "run.json").read_text())
        c = r["config"]
        return {"seed": c["train"]["seed"], "batch_size": c["train"]["batch_size"],
                "lr": c["optim"]["lr"], "ckpt_every": r.get("ckpt_every"),
                "data": r.get("data")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def config_overrides(args) -> dict:
    """The config overrides that d2a-train's flags ask for (``load_config``'s ``overrides``)."""
    over: dict = {"train": {}, "optim": {}}
    if args.batch_size:
        over["train"]["batch_size"] = args.batch_size
    if args.lr is not None:
        over["optim"]["lr"] = args.lr
    if args.seed is not None:
        over["train"]["seed"] = args.seed
    if args.channels_last:
        over["train"]["channels_last"] = True
    if args.cpu_bf16:
        over["optim"]["amp_cpu"] = True
    if args.freeze:
        over["train"]["freeze"] = args.freeze
    return over


def cpu_speed_hint(device: str, cfg) -> str | None:
    """A hint to pass --cpu-bf16 / --channels-last when training runs on a CPU with native
    bf16 (AVX512-BF16 or AMX) and the run lacks one or both; None otherwise."""
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    check = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
             getattr(torch.cpu, "_is_amx_tile_supported", None))
    native = any(f() for f in check if f is not None)
    missing = [flag for flag, on in (("--cpu-bf16", cfg.optim.amp_cpu),
                                     ("--channels-last", cfg.train.channels_last)) if not on]
    if not (on_cpu and native and missing):
        return None
    return (f"hint: this CPU has native bf16; {' '.join(missing)} trains faster on it "
            f"({CPU_SPEED_UP})")


def main(argv: list[str] | None = None) -> None:
    """``d2a-train ARGV``; errors exit with a message, a stop signal with 128 + its number."""
    p = _parser()
    args = p.parse_args(argv)
    kept = resumed_settings(args.out) if args.resume else {}
    if args.resume:  # the stopped run's settings, for the flags not given again
        for name in RESUMED:
            if getattr(args, name) is None and kept.get(name) is not None:
                setattr(args, name, kept[name])
    if args.time_budget is not None and not args.time_budget > 0:
        p.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.stop_after is not None and not args.stop_after > 0:
        p.error(f"--stop-after must be > 0 seconds, got {args.stop_after}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config, config_overrides(args))
        hint = cpu_speed_hint(args.device, cfg)
        if hint and int(os.environ.get("RANK", "0")) == 0:
            print(hint, file=sys.stderr)
        dataset, data = build_dataset(args, cfg), data_source(args, cfg)
        if kept.get("data") not in (None, data) and int(os.environ.get("RANK", "0")) == 0:
            print(f"--resume: warning: the run trained on {', '.join(kept['data'])}; this call "
                  f"reads {', '.join(data)}, so the data position restored from the checkpoint "
                  "is a position in other data", file=sys.stderr)
        summary = run(cfg, dataset, args.out, steps=args.steps, resume=args.resume,
                      device=args.device, workers=args.workers, ckpt_every=args.ckpt_every,
                      time_budget=args.time_budget, init=args.init, echo=args.echo,
                      compile=args.compile, cuda_graph=args.cuda_graph,
                      stop_after=args.stop_after, warm_fresh=args.warm_fresh, data=data)
    except (ValueError, RuntimeError, OSError, ckpt.CheckpointError) as e:
        sys.exit(f"d2a-train: error: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    if summary["stopped_by"]:  # stopped early on purpose, with a checkpoint: 128 + signal
        sys.exit(128 + signal.Signals[summary["stopped_by"]].value)


if __name__ == "__main__":
    main()
