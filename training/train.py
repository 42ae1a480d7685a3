"""``d2a-train``: train D2A-HMR (single process or DDP through ``torchrun``).

Writes into ``--out RUN_DIR``: ``run.json`` (config, seed, world size, command line),
``checkpoints/step_*/`` (see ``checkpoint.py``; atomic, resumable with ``--resume``) and ``tb/``
(TensorBoard scalars: every loss term, lr, grad norm, samples/s).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from d2a_edge._cli import at_least
from d2a_edge.training import checkpoint as ckpt
from d2a_edge.training import recover
from d2a_edge.training.config import Config, OptimConfig, available_configs, config_to_dict, \
    load_config
from d2a_edge.training.cuda_graph import GraphedModule
from d2a_edge.training.distributed import Dist, setup_distributed
from d2a_edge.training.feed import EchoBuffer, build_dataset, make_loader, to_device
from d2a_edge.training.schedule import Calibration, Schedule, lr_factor
from d2a_edge.training.losses import D2ALoss
from d2a_edge.training.model import D2AHMR, build_model

HELP = """Train D2A-HMR from CONFIG (a built-in name: {names}, or a YAML path).

Data: --data DIR reads shards written by `d2a-data generate`; --on-the-fly renders samples
as it goes (needs EGL). Writes RUN_DIR/run.json, RUN_DIR/checkpoints/step_*/ (model.safetensors,
train_state.safetensors, meta.json; latest.json points at the newest) and RUN_DIR/tb/
(TensorBoard). --resume continues from RUN_DIR's latest checkpoint with the same optimizer,
scheduler, AMP scaler, RNG and data position. Multi-GPU / multi-process:
  torchrun --standalone --nproc_per_node N -m d2a_edge.training.train CONFIG ...
(gloo on CPU, nccl on GPU; multi-node: torchrun --nnodes ... --rdzv-endpoint ...)."""


class TrainModule(nn.Module):
    """Model + loss as one module (so DDP syncs the RLE flow's gradients too). With
    ``channels_last`` the images enter in the model's channels-last memory order."""

    def __init__(self, model: D2AHMR, loss: D2ALoss, channels_last: bool = False,
                 frozen: tuple[str, ...] = ()):
        super().__init__()
        self.model, self.loss = model, loss
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.frozen = frozen

    def train(self, mode: bool = True):
        super().train(mode)
        for name in self.frozen:  # frozen batch norms keep their running statistics
            getattr(self.model, name).eval()
        return self

    def forward(self, batch: dict) -> tuple[dict, dict]:
        image = batch["image"].contiguous(memory_format=self.memory_format)
        out = self.model(image, batch["bbox_info"])
        return out, self.loss(out, batch)


class EMA:
    """Exponential moving average of ``model``'s floating-point state (``decay`` in (0, 1)).

    ``update()`` is two multi-tensor ops (``torch._foreach_lerp_`` on the floating-point tensors,
    ``_foreach_copy_`` on the integer ones, BatchNorm's step counters) instead of one op per
    tensor: about 500 tensors (498 ops per step counted by bench_train --count-ops, each a kernel
    launch on a GPU). The model's tensors are looked up once, so they must stay the same objects
    (``load_state_dict`` copies in place).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        floats, others = ([], []), ([], [])
        for k, v in model.state_dict().items():
            shadow, live = floats if v.is_floating_point() else others
            shadow.append(self.shadow[k])
            live.append(v)
        self._floats, self._others = floats, others

    @torch.no_grad()
    def update(self) -> None:
        if self._floats[0]:
            torch._foreach_lerp_(*self._floats, 1 - self.decay)
        if self._others[0]:
            torch._foreach_copy_(*self._others)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        for k, v in sd.items():
            self.shadow[k].copy_(v)


def amp_dtype(device: torch.device, o: OptimConfig) -> torch.dtype | None:
    """The autocast dtype on ``device`` (None: fp32)."""
    if device.type == "cuda" and o.amp:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and o.amp_cpu:
        return torch.bfloat16
    return None


def autocast_for(device: torch.device, o: OptimConfig):
    """(autocast context factory, use fp16 GradScaler)."""
    dtype = amp_dtype(device, o)
    if dtype is None:
        return contextlib.nullcontext, False
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype == torch.float16


@dataclass
class State:
    """Everything a checkpoint restores."""

    model: D2AHMR
    loss: D2ALoss
    module: nn.Module  # TrainModule, DDP-wrapped when world > 1
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: EMA | None
    schedule: Schedule
    step: int = 0
    nonfinite: int = 0  # consecutive steps skipped for a non-finite loss
    frozen: tuple = ()  # parameters left alone until step ``frozen_until`` (``warm_fresh``)
    frozen_until: int = 0


def build_state(cfg: Config, d: Dist, total_steps: int, asset=None) -> State:
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    model = build_model(cfg.model, asset).to(d.device)
    if cfg.train.channels_last:  # before the optimizer and EMA take references to the weights
        model = model.to(memory_format=torch.channels_last)
    loss = D2ALoss(cfg.loss, model.body).to(d.device)
    freeze(model, cfg.train.freeze)
    module: nn.Module = TrainModule(model, loss, cfg.train.channels_last, cfg.train.freeze)
    if d.world > 1:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    params = [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]
    o = cfg.optim
    # fused: one kernel for all parameters on a GPU (about 400 tensors)
    optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay,
                                  fused=d.device.type == "cuda")
    schedule = Schedule(total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, schedule.total, o))
    _, fp16 = autocast_for(d.device, o)
    scaler = torch.amp.GradScaler(d.device.type, enabled=fp16)
    ema = EMA(model, o.ema_decay) if o.ema_decay > 0 else None
    return State(model, loss, module, optimizer, scheduler, scaler, ema, schedule)


def freeze(model: D2AHMR, names: tuple[str, ...]) -> None:
    """``train.freeze``: the named top-level modules of ``model`` get no gradients (the
    optimizer leaves them out; ``TrainModule.train`` keeps them in eval mode)."""
    modules = dict(model.named_children())
    for name in names:
        if modules.get(name) is None:
            trainable = sorted(n for n, m in modules.items()
                               if m is not None and any(True for _ in m.parameters()))
            raise ValueError(f"train.freeze: the model has no module {name!r}; "
                             f"modules with weights: {trainable}")
        modules[name].requires_grad_(False)


RESUME_SETTINGS = (("train", "seed", "--seed"), ("train", "batch_size", "--batch-size"),
                   ("optim", "lr", "--lr"))  # resume_state warns when these differ


def resume_state(st: State, path: Path, d: Dist, cfg: Config) -> dict:
    """Restore ``st`` from the checkpoint at ``path`` (weights, optimizer, RNG, step); returns
    its meta. A checkpoint of another model config is a ValueError; another seed, batch size
    or learning rate is a warning (the data order changes; the schedule stays the saved one)."""
    c = ckpt.read_checkpoint(path, with_train_state=True)
    saved_cfg, now = ckpt.config_of(c), config_to_dict(cfg)
    if saved_cfg.get("model") != now["model"]:
        raise ValueError(f"{path} was trained with config {saved_cfg.get('name')!r}, "
                         f"whose model differs from {cfg.name!r}'s: resume with the same config")
    changed = [f"{flag} {saved_cfg.get(sec, {}).get(key)} -> {now[sec][key]}"
               for sec, key, flag in RESUME_SETTINGS
               if saved_cfg.get(sec, {}).get(key) != now[sec][key]]
    if changed and d.main:
        print(f"--resume: warning: {', '.join(changed)} since the checkpoint; the data order "
              "follows the new values, the learning-rate schedule stays the checkpoint's",
              file=sys.stderr)
    saved = tuple(saved_cfg.get("train", {}).get("freeze", ()))
    frozen = tuple(n for n, m in st.model.named_children()
                   if any(True for _ in m.parameters())
                   and not any(p.requires_grad for p in m.parameters()))
    if sorted(saved) != sorted(frozen):  # the optimizer state holds the other parameters
        raise ValueError(f"{path} was trained with train.freeze {list(saved)}, this run has "
                         f"{list(frozen)}: resume with the same --freeze")
    w = {k: v.to(d.device) for k, v in c["weights"].items()}
    st.model.load_state_dict(ckpt.split_weights(w, "model"))
    st.loss.load_state_dict(ckpt.split_weights(w, "loss"))
    if st.ema is not None and any(k.startswith("ema.") for k in w):
        st.ema.load_state_dict(ckpt.split_weights(w, "ema"))
    st.step = ckpt.restore_train_state(c, optimizer=st.optimizer, scheduler=st.scheduler,
                                       scaler=st.scaler)
    match_param_layout(st.optimizer)
    if d.main:
        print(f"resumed from {c['dir']} at step {st.step}", file=sys.stderr)
    return c["meta"]


def match_param_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimizer state its parameter's memory order (a checkpoint stores every
    tensor contiguous; a channels-last weight's moments must be channels-last as well, as the
    optimizer makes them on its first step)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def init_weights(st: State, path: str, d: Dist) -> None:
    """Start from a checkpoint's weights (its EMA when it has one); optimizer state is fresh.
    An exported bundle (``d2a_edge/models/edge-s``) is turned back into weights first
    (``training.recover``; every rank computes the same)."""
    if recover.is_bundle(path):
        model, _, report = recover.recover(path, progress=lambda m: d.main and print(
            m, file=sys.stderr))
        st.model.load_state_dict(model.state_dict())
        if st.ema is not None:
            st.ema.load_state_dict(model.state_dict())
        loss = recover.loss_state(path)  # a bundle with training extras holds the RLE flow
        if loss:
            st.loss.load_state_dict({k: v.to(d.device) for k, v in loss.items()})
        if d.main:
            recover.print_report(report, file=sys.stderr)
        return
    c = ckpt.read_checkpoint(path)
    w = {k: v.to(d.device) for k, v in c["weights"].items()}
    model = ckpt.split_weights(w, "ema") or ckpt.split_weights(w, "model")
    st.model.load_state_dict(model)
    if ckpt.split_weights(w, "loss"):
        st.loss.load_state_dict(ckpt.split_weights(w, "loss"))
    if st.ema is not None:
        st.ema.load_state_dict(model)
    if d.main:
        print(f"initialised from {c['dir']} (step {c['meta'].get('step')})", file=sys.stderr)


def check_warm_fresh(init: str | None, steps: int) -> None:
    """ValueError unless ``--warm-fresh steps`` can apply: ``init`` leaves fresh parts."""
    if steps < 0 or not (init and recover.has_fresh_parts(init)):
        raise ValueError(f"--warm-fresh {steps}: needs steps >= 0 and --init BUNDLE or a "
                         "checkpoint recovered from one (a trained checkpoint's weights, and a "
                         "bundle with training extras, leave no fresh parts to warm up)")


def warm_up_fresh(st: State, cfg: Config, steps: int, d: Dist) -> int:
    """Freeze what a bundle ``init`` (or a checkpoint recovered from one) provided for the
    first ``steps`` steps (``run``'s ``warm_fresh``, which ``check_warm_fresh`` has checked
    before building the model); returns the steps. Set again on ``--resume`` (same
    arguments)."""
    if steps == 0:
        return 0
    if st.step < steps:
        graph = recover.graph_parameters(st.model, cfg.model.image_size)
        st.frozen = tuple(p for n, p in st.model.named_parameters() if n in graph)
        st.frozen_until = steps
        if d.main:
            print(f"warming up the fresh training-only parts until step {steps}: "
                  f"{len(st.frozen)} recovered parameters wait", file=sys.stderr)
    return steps


class StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption) during a single-process run: the
    current step finishes, a checkpoint is written and ``run`` returns, so that ``--resume``
    loses nothing. A second signal interrupts at once (KeyboardInterrupt). ``received``: the
    signal's name, or None. ``restore`` puts the previous handlers back. Handlers can only be
    set from the main thread; elsewhere (and with ``signals=()``, under DDP, where ranks would
    stop at different steps) signals act as before."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.received: str | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        # A scheduler's SIGTERM reaches the loader's workers too (the whole process group), and
        # torch's SIGCHLD handler would raise "DataLoader worker is killed by signal" anywhere
        # in the step or the checkpoint; no more batches are needed, so stop listening.
        # Python runs pending handlers in signal-number order: SIGTERM (15) before SIGCHLD (17).
        self._previous.setdefault(signal.SIGCHLD, signal.signal(signal.SIGCHLD, signal.SIG_DFL))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


MAX_NONFINITE = 10  # consecutive non-finite losses before training gives up


def train_step(st: State, batch: dict, cfg: Config, amp) -> dict[str, float]:
    """One optimisation step; returns the (rank-local) loss terms and the grad norm.

    A non-finite loss (or, without fp16 loss scaling, a non-finite gradient norm) skips the
    update; the step still counts, so data order and the LR schedule stay aligned.
    ``MAX_NONFINITE`` in a row raise RuntimeError. The backward pass always runs: under DDP a
    rank that skipped it would leave the others waiting in the gradient all-reduce, and a NaN
    reaches every rank's gradient norm, so all ranks skip together. The numbers are read back
    from the device once, at the end (each read-back stalls the GPU's queue).
    """
    st.module.train()
    with amp():
        _, losses = st.module(batch)
    st.optimizer.zero_grad(set_to_none=True)
    st.scaler.scale(losses["total"]).backward()
    st.scaler.unscale_(st.optimizer)
    if st.step < st.frozen_until:  # no gradient: AdamW skips them (no weight decay either)
        for p in st.frozen:
            p.grad = None
    params = [p for g in st.optimizer.param_groups for p in g["params"]]
    gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    values = torch.stack([v.detach().float() for v in losses.values()] + [gnorm.float()])
    out = dict(zip([*losses, "grad_norm"], values.tolist()))  # the step's one host sync
    # with fp16 scaling an overflowing gradient is routine: the scaler skips and rescales
    bad_grad = not math.isfinite(out["grad_norm"]) and not st.scaler.is_enabled()
    if not math.isfinite(out["total"]) or bad_grad:
        st.nonfinite += 1
        if st.nonfinite >= MAX_NONFINITE:
            raise RuntimeError(f"{st.nonfinite} non-finite losses in a row, last at step "
                               f"{st.step}: {out}")
        print(f"warning: non-finite loss at step {st.step}, update skipped: {out}",
              file=sys.stderr)
        st.scaler.update()  # ends this step's unscale_ (fp16: lowers the scale)
        with warnings.catch_warnings():  # skipping the update is deliberate, not a misuse
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step")
            st.scheduler.step()
        st.step += 1
        return out
    st.nonfinite = 0
    st.scaler.step(st.optimizer)
    st.scaler.update()
    st.scheduler.step()
    if st.ema is not None:
        st.ema.update()
    st.step += 1
    return out


def first_step_or_eager(st: State, batch: dict, cfg: Config, amp, eager: nn.Module) -> dict:
    """A step of the compiled module; the first one compiles, and if that fails training goes
    on with ``eager`` (nothing was updated: gradients are reset at the start of every step)."""
    try:
        out = train_step(st, batch, cfg, amp)
    except Exception as e:  # torch.compile's backends raise many types; the eager retry tells
        print(f"warning: torch.compile failed ({type(e).__name__}: {str(e)[:300]}); "
              "training in eager mode", file=sys.stderr)
        st.module = eager
        return train_step(st, batch, cfg, amp)
    return out


def graph_or_eager(st: State, batch: dict, dtype: torch.dtype | None) -> bool:
    """Replace ``st.module`` by a ``GraphedModule`` captured on ``batch``; True if that worked.
    If capture fails, training goes on eagerly with a warning (nothing was updated)."""
    try:
        st.module = GraphedModule(st.module, batch, dtype)
    except Exception as e:  # capture fails in many ways (unsupported ops, syncs, memory)
        print(f"warning: CUDA graph capture failed ({type(e).__name__}: {str(e)[:300]}); "
              "training without it", file=sys.stderr)
        return False
    print(f"CUDA graphs captured: forward + backward of {len(st.module.names)} loss terms",
          file=sys.stderr)
    return True


def weights_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state (names, shapes and bytes), for cross-rank checks."""
    import hashlib
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save(st: State, cfg: Config, run_dir: Path, d: Dist) -> Path | None:
    if not d.main:
        return None
    meta = {"config": config_to_dict(cfg), "seed": cfg.train.seed, "world_size": d.world,
            "body": cfg.model.body, "body_name": st.model.body.asset_name,
            "schedule_total": st.schedule.total}
    return ckpt.save_checkpoint(run_dir, st.step, model=st.model, loss=st.loss,
                                optimizer=st.optimizer, scheduler=st.scheduler, scaler=st.scaler,
                                ema=st.ema, meta=meta)


def run(cfg: Config, dataset, run_dir: str | Path, *, steps: int | None = None,
        resume: bool = False, device: str = "auto", workers: int | None = None,
        ckpt_every: int | None = None, asset=None, progress: bool = True,
        time_budget: float | None = None, init: str | None = None, echo: int = 1,
        compile: bool = False, cuda_graph: bool = False,
        stop_after: float | None = None, warm_fresh: int = 0) -> dict:
    """Train on ``dataset`` (sample-schema dicts) into ``run_dir``; returns a summary dict.

    Works single-process and under ``torchrun`` (reads RANK / WORLD_SIZE / LOCAL_RANK).
    ``time_budget`` (seconds of training in this process, data start-up included): after
    ``CALIBRATION_STEPS`` timed steps the total is lowered to what fits, and fitted again
    ``REFITS`` times from the latest steps (``Calibration``), so the cosine schedule ends on
    time; a single process also stops (with a checkpoint) when the budget runs out.
    ``init``: a checkpoint whose weights (EMA when present) start a new run (fresh optimizer),
    or an exported bundle (its weights recovered: ``training.recover``).
    ``warm_fresh``: with a bundle ``init`` (or a checkpoint recovered from one), the first
    ``warm_fresh`` steps train only the training-only parts that the bundle lacks and that
    start fresh (silhouette decoder, mask token, coarse-vertex head, RLE flow); the recovered
    weights wait, so that the fresh parts' first, large gradients do not reach them. Off by
    default: at lr 1e-4 on the CPU, 300 frozen steps left the training losses on the same
    batches where they were without (docs/gpu.md).
    ``echo``: data echoing (Choi et al. 2019) for data-bound runs: after each fresh batch,
    ``echo - 1`` steps on batches drawn from the last ``ECHO_BUFFER`` fresh batches.
    ``compile``: ``torch.compile`` the model + loss forward (fewer kernel launches and fused
    elementwise work on a GPU; the first step compiles for minutes).
    If compiling fails, training goes on in eager mode with a warning.
    ``cuda_graph``: replay the forward and backward from CUDA graphs captured on the first
    batch (``cuda_graph.py``; one CUDA process, not with ``compile``); if capturing fails,
    training goes on in eager mode with a warning.
    ``stop_after``: stop with a checkpoint after this many seconds of this process (single
    process), leaving the schedule where it is: ``resume`` continues it, e.g. in a second lent
    GPU call (with ``time_budget``, the resumed run re-fits the rest of the saved schedule to
    its own budget).
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    run_dir = Path(run_dir)
    if warm_fresh:  # before the model is built and a bundle recovered (~20 s)
        check_warm_fresh(init, warm_fresh)
    held = (run_dir / "checkpoints" / "latest.json").is_file() or \
        any((run_dir / "checkpoints").glob("step_*"))
    if not resume and held:
        raise ValueError(f"{run_dir} already holds a run's checkpoints; pass --resume to continue "
                         "it, or choose another --out")
    start = None  # the checkpoint --resume continues from
    if resume and held:
        start, skipped = ckpt.latest_intact(run_dir)
        if start is None:
            raise ckpt.CheckpointError(f"--resume: no intact checkpoint in {run_dir}: "
                                       + "; ".join(skipped))
        for why in skipped:
            print(f"--resume: passing over {why}", file=sys.stderr)
    d = setup_distributed(device)
    if cuda_graph and (d.device.type != "cuda" or d.world > 1 or compile):
        raise ValueError("--cuda-graph needs one CUDA process (not torchrun) and no --compile; "
                         f"got device {d.device}, {d.world} process(es), compile={compile}")
    if stop_after is not None and not (stop_after > 0 and d.world == 1):
        raise ValueError(f"--stop-after needs seconds > 0 and one process; got {stop_after} s, "
                         f"{d.world} process(es)")
    total = steps if steps is not None else cfg.train.steps
    every = ckpt_every if ckpt_every is not None else cfg.train.ckpt_every
    st = build_state(cfg, d, total, asset)
    if echo < 1:
        raise ValueError(f"echo must be >= 1, got {echo}")
    if init and start is None:
        init_weights(st, init, d)
    if start is not None:
        meta = resume_state(st, start, d, cfg)
        if (time_budget or steps is None) and "schedule_total" in meta:  # the saved schedule
            total = st.schedule.total = int(meta["schedule_total"])
        elif int(meta.get("schedule_total", total)) != total and d.main:
            print(f"--resume: the checkpoint's schedule ran to {meta['schedule_total']} steps; "
                  f"--steps {total} re-fits the learning-rate schedule to {total} from here",
                  file=sys.stderr)
    elif resume and d.main:
        print(f"--resume: no checkpoint in {run_dir}, starting at step 0", file=sys.stderr)
    warm = warm_up_fresh(st, cfg, warm_fresh, d)  # after resuming: st.step is known
    amp, _ = autocast_for(d.device, cfg.optim)
    eager, first = st.module, st.step
    if compile:
        st.module = torch.compile(st.module)
    loader = make_loader(dataset, cfg, d, st.step // echo, workers)
    writer = None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(
            {"config": config_to_dict(cfg), "seed": cfg.train.seed, "world_size": d.world,
             "steps": total, "ckpt_every": every, "argv": sys.argv, "device": str(d.device),
             "init": init, "echo": echo, "warm_fresh": warm}, indent=1))
        writer = SummaryWriter(str(run_dir / "tb"))
    bar = tqdm(total=total, initial=st.step, desc=f"d2a-train {cfg.name}", unit="step",
               disable=not (progress and d.main), dynamic_ncols=True)
    last, t0, seen, wait = {}, time.perf_counter(), 0, 0.0  # wait: seconds spent on the loader
    mark = (t0, 0.0)  # (time, wait) at the last log: the logged wait share is since then
    calib = Calibration(st.step, time_budget, t0) if time_budget else None
    it = iter(loader)
    echoes = EchoBuffer(cfg.train.seed) if echo > 1 else None
    interrupt = StopSignal() if d.world == 1 else StopSignal(signals=())

    def stopping() -> None:
        print(f"{interrupt.received}: stopping at step {st.step} of {total} with a "
              "checkpoint; --resume continues the schedule", file=sys.stderr)

    try:
        while st.step < total:
            if echoes is None or st.step % echo == 0 or not echoes.batches:  # (a resume empties it)
                tw = time.perf_counter()
                try:
                    batch = to_device(next(it), d.device)
                except RuntimeError:  # the signal ended the loader's workers while it waited
                    if interrupt.received:
                        stopping()
                        break
                    raise
                wait += time.perf_counter() - tw
                seen += batch["image"].shape[0] * d.world
                if echoes is not None:
                    echoes.add(batch)
            else:
                batch = echoes.draw(st.step, cfg.train.batch_size)
            if cuda_graph and st.step == first and graph_or_eager(st, batch,
                                                                  amp_dtype(d.device, cfg.optim)):
                amp = contextlib.nullcontext  # the autocast is inside the graph
            if compile and st.step == first:  # the step that compiles
                last = first_step_or_eager(st, batch, cfg, amp, eager)
            else:
                last = train_step(st, batch, cfg, amp)
            bar.update(1)
            if calib is not None:
                new_total, stop = calib.after_step(st.step, total, d)
                if new_total != total:
                    total = st.schedule.total = new_total
                    bar.total = total
                    bar.refresh()
                if stop:
                    break
            if stop_after is not None and time.perf_counter() - t0 > stop_after:
                if d.main:
                    print(f"stopping after {stop_after:.0f} s at step {st.step} of {total}; "
                          "--resume continues the schedule", file=sys.stderr)
                break
            if interrupt.received:
                stopping()
                break
            if writer is not None and (st.step % cfg.train.log_every == 0 or st.step == total):
                now = time.perf_counter()
                log_scalars(writer, bar, st, last, seen / max(now - t0, 1e-9),
                            (wait - mark[1]) / max(now - mark[0], 1e-9))
                mark = (now, wait)
            if every > 0 and st.step % every == 0 and st.step < total:
                save(st, cfg, run_dir, d)
    finally:
        interrupt.restore()
    if cuda_graph:
        st.module = eager  # the same weights; a GraphedModule has no state of its own
    path, digests = finish(st, cfg, run_dir, d)
    bar.close()
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - t0
    return {"step": st.step, "losses": last, "checkpoint": str(path) if path else None,
            "stopped_by": interrupt.received,
            "samples_per_s": seen / max(elapsed, 1e-9), "seconds": elapsed,
            "data_wait_s": wait,
            "world_size": d.world, "rank_weight_digests": digests}


def log_scalars(writer, bar, st: State, last: dict[str, float], rate: float,
                wait_frac: float) -> None:
    """Every loss term, grad norm, lr, samples/s and the share of the time since the last log
    spent waiting for the loader (``wait``: more than a few % means the data, not the step,
    limits the run) to TensorBoard; loss, rate and wait on the bar."""
    for k, v in last.items():
        writer.add_scalar(f"loss/{k}" if k != "grad_norm" else "train/grad_norm", v, st.step)
    writer.add_scalar("train/lr", st.scheduler.get_last_lr()[0], st.step)
    writer.add_scalar("train/samples_per_s", rate, st.step)
    writer.add_scalar("train/data_wait_fraction", wait_frac, st.step)
    bar.set_postfix(loss=f"{last['total']:.4f}", sps=f"{rate:.1f}", wait=f"{wait_frac:.0%}")


def finish(st: State, cfg: Config, run_dir: Path, d: Dist) -> tuple[Path | None, list]:
    """Final checkpoint; under DDP also syncs buffers, checks weights agree, ends the group."""
    if d.world > 1:  # BatchNorm statistics are rank-local: adopt rank 0's, which are saved
        for buf in st.module.buffers():
            dist.broadcast(buf, 0)
    path = save(st, cfg, run_dir, d)
    digests = [weights_digest(st.module)]
    if d.world > 1:  # every rank must hold the same weights after DDP training
        digests = [None] * d.world
        dist.all_gather_object(digests, weights_digest(st.module))
        if len(set(digests)) > 1 and d.main:
            print(f"warning: weights differ across ranks: {digests}", file=sys.stderr)
        dist.barrier()
        dist.destroy_process_group()
    return path, digests


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
    p.add_argument("--workers", type=at_least(0), default=None, help="DataLoader workers per process")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=at_least(1), default=None, help="torch CPU threads per process")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--init", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (EMA if present), fresh optimizer")
    p.add_argument("--echo", type=at_least(1), default=1,
                   help="data echoing factor for data-bound runs (steps per fresh batch)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last (NHWC) weights and images (GPU: cuDNN's NHWC batch norm "
                   "and convolutions; same results up to rounding)")
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
                "lr": c["optim"]["lr"], "ckpt_every": r.get("ckpt_every")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def main(argv: list[str] | None = None) -> None:
    p = _parser()
    args = p.parse_args(argv)
    if args.resume:  # the stopped run's settings, for the flags not given again
        kept = resumed_settings(args.out)
        for name in RESUMED:
            if getattr(args, name) is None and kept.get(name) is not None:
                setattr(args, name, kept[name])
    if args.time_budget is not None and not args.time_budget > 0:
        p.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.stop_after is not None and not args.stop_after > 0:
        p.error(f"--stop-after must be > 0 seconds, got {args.stop_after}")
    if args.threads:
        torch.set_num_threads(args.threads)
    over: dict = {"train": {}, "optim": {}}
    if args.batch_size:
        over["train"]["batch_size"] = args.batch_size
    if args.lr is not None:
        over["optim"]["lr"] = args.lr
    if args.seed is not None:
        over["train"]["seed"] = args.seed
    if args.channels_last:
        over["train"]["channels_last"] = True
    if args.freeze:
        over["train"]["freeze"] = args.freeze
    try:
        cfg = load_config(args.config, over)
        dataset = build_dataset(args, cfg)
        summary = run(cfg, dataset, args.out, steps=args.steps, resume=args.resume,
                      device=args.device, workers=args.workers, ckpt_every=args.ckpt_every,
                      time_budget=args.time_budget, init=args.init, echo=args.echo,
                      compile=args.compile, cuda_graph=args.cuda_graph,
                      stop_after=args.stop_after, warm_fresh=args.warm_fresh)
    except (ValueError, RuntimeError, OSError, ckpt.CheckpointError) as e:
        sys.exit(f"d2a-train: error: {e}")
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    if summary["stopped_by"]:  # stopped early on purpose, with a checkpoint: 128 + signal
        sys.exit(128 + signal.Signals[summary["stopped_by"]].value)


if __name__ == "__main__":
    main()
