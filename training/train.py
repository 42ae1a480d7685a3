"""``d2a-train``: train D2A-HMR (single process or DDP through ``torchrun``).

Writes into ``--out RUN_DIR``: ``run.json`` (config, seed, world size, command line),
``checkpoints/step_*/`` (see ``checkpoint.py``; atomic, resumable with ``--resume``) and ``tb/``
(TensorBoard scalars: every loss term, lr, grad norm, samples/s). The command line is in
``train_cli.py``; the parts of the state in ``train_module.py``; resuming and initialising a
run in ``resume.py``; stopping on SIGINT / SIGTERM in ``stop_signal.py``.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from d2a_edge.training import checkpoint as ckpt
from d2a_edge.training.config import Config, config_to_dict
from d2a_edge.training.cuda_graph import GraphedModule
from d2a_edge.training.distributed import Dist, setup_distributed
from d2a_edge.training.feed import EchoBuffer, make_loader, to_device
from d2a_edge.training.resume import check_warm_fresh, checkpoint_to_resume, init_weights, \
    resume_state, warm_up_fresh
from d2a_edge.training.schedule import Calibration, Schedule, lr_factor
from d2a_edge.training.stop_signal import StopSignal
from d2a_edge.training.losses import D2ALoss
from d2a_edge.training.model import D2AHMR, build_model
from d2a_edge.training.train_module import EMA, TrainModule, amp_dtype, autocast_for, freeze


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


def check_step_options(d: Dist, compile: bool, cuda_graph: bool,
                       stop_after: float | None) -> None:
    """ValueError unless ``cuda_graph`` and ``stop_after`` can apply in this process group."""
    if cuda_graph and (d.device.type != "cuda" or d.world > 1 or compile):
        raise ValueError("--cuda-graph needs one CUDA process (not torchrun) and no --compile; "
                         f"got device {d.device}, {d.world} process(es), compile={compile}")
    if stop_after is not None and not (stop_after > 0 and d.world == 1):
        raise ValueError(f"--stop-after needs seconds > 0 and one process; got {stop_after} s, "
                         f"{d.world} process(es)")


def start_state(cfg: Config, d: Dist, run_dir: Path, start: Path | None, *,
                steps: int | None, asset, echo: int, init: str | None, resume: bool,
                time_budget: float | None) -> tuple[State, int]:
    """The run's state at its first step, and its total steps: built for ``steps`` (default:
    the config's), then restored from the checkpoint ``start`` (``--resume``; with
    ``time_budget`` or no ``steps``, to the saved schedule's total) or given ``init``'s
    weights."""
    total = steps if steps is not None else cfg.train.steps
    st = build_state(cfg, d, total, asset)
    if echo < 1:
        raise ValueError(f"echo must be >= 1, got {echo}")
    if init and start is None:
        init_weights(st, init, d)
    if start is not None:
        meta = resume_state(st, start, d, cfg)
        if (time_budget or steps is None) and "schedule_total" in meta:  # the saved schedule
            total = st.schedule.total = int(meta["schedule_total"])
        elif st.step >= total and d.main:
            print(f"--resume: the run is at step {st.step}, at or past --steps {total}: "
                  "nothing to train (a larger --steps goes on)", file=sys.stderr)
        elif int(meta.get("schedule_total", total)) != total and d.main:
            print(f"--resume: the checkpoint's schedule ran to {meta['schedule_total']} steps; "
                  f"--steps {total} re-fits the learning-rate schedule to {total} from here",
                  file=sys.stderr)
    elif resume and d.main:
        print(f"--resume: no checkpoint in {run_dir}, starting at step 0", file=sys.stderr)
    return st, total


def run(cfg: Config, dataset, run_dir: str | Path, *, steps: int | None = None,
        resume: bool = False, device: str = "auto", workers: int | None = None,
        ckpt_every: int | None = None, asset=None, progress: bool = True,
        time_budget: float | None = None, init: str | None = None, echo: int = 1,
        compile: bool = False, cuda_graph: bool = False,
        stop_after: float | None = None, warm_fresh: int = 0,
        data: list[str] | None = None) -> dict:
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
    ``data``: what ``dataset`` is (``feed.data_source``), recorded in ``run.json``.
    """
    run_dir = Path(run_dir)
    if warm_fresh:  # before the model is built and a bundle recovered (~20 s)
        check_warm_fresh(init, warm_fresh)
    start = checkpoint_to_resume(run_dir, resume)  # the checkpoint --resume continues from
    d = setup_distributed(device)
    check_step_options(d, compile, cuda_graph, stop_after)
    every = ckpt_every if ckpt_every is not None else cfg.train.ckpt_every
    st, total = start_state(cfg, d, run_dir, start, steps=steps, asset=asset, echo=echo,
                            init=init, resume=resume, time_budget=time_budget)
    warm = warm_up_fresh(st, cfg, warm_fresh, d)  # after resuming: st.step is known
    amp, _ = autocast_for(d.device, cfg.optim)
    eager = st.module
    if compile:
        st.module = torch.compile(st.module)
    loader = make_loader(dataset, cfg, d, st.step // echo, workers)
    writer, bar = open_outputs(run_dir, cfg, d, st, total, progress,
                               every=every, init=init, echo=echo, warm=warm, data=data)
    loop = Loop(st, cfg, d, run_dir, loader, total, writer=writer, bar=bar, amp=amp, eager=eager,
                every=every, echo=echo, compile=compile, cuda_graph=cuda_graph,
                time_budget=time_budget, stop_after=stop_after)
    loop.go()
    return loop.close()


def open_outputs(run_dir: Path, cfg: Config, d: Dist, st: State, total: int, progress: bool, *,
                 every: int, init: str | None, echo: int, warm: int,
                 data: list[str] | None = None) -> tuple:
    """Write ``run_dir/run.json`` and open TensorBoard (main process; else None) and the
    progress bar: (writer, bar)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = None
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "run.json").write_text(json.dumps(
            {"config": config_to_dict(cfg), "seed": cfg.train.seed, "world_size": d.world,
             "steps": total, "ckpt_every": every, "argv": sys.argv, "device": str(d.device),
             "init": init, "echo": echo, "warm_fresh": warm, "data": data}, indent=1))
        writer = SummaryWriter(str(run_dir / "tb"))
    bar = tqdm(total=total, initial=st.step, desc=f"d2a-train {cfg.name}", unit="step",
               disable=not (progress and d.main), dynamic_ncols=True)
    return writer, bar


class Loop:
    """``run``'s steps from ``st.step`` to ``total`` (``go``) and what they count: samples
    ``seen``, seconds of ``wait`` for the loader, the ``last`` step's losses, the stop signal
    (``interrupt``); ``close`` writes the last checkpoint and returns the run's summary.
    The first step compiles (``compile``) or captures CUDA graphs (``cuda_graph``); ``eager``
    is the module without either."""

    def __init__(self, st: State, cfg: Config, d: Dist, run_dir: Path, loader, total: int, *,
                 writer, bar, amp, eager: nn.Module, every: int, echo: int, compile: bool,
                 cuda_graph: bool, time_budget: float | None, stop_after: float | None):
        self.st, self.cfg, self.d, self.run_dir, self.total = st, cfg, d, run_dir, total
        self.writer, self.bar, self.amp, self.eager = writer, bar, amp, eager
        self.every, self.echo, self.compile, self.cuda_graph = every, echo, compile, cuda_graph
        self.stop_after, self.first = stop_after, st.step
        self.t0 = time.perf_counter()
        self.last, self.seen, self.wait = {}, 0, 0.0  # wait: seconds spent on the loader
        self.mark = (self.t0, 0.0)  # (time, wait) at the last log: the logged wait is since then
        self.calib = Calibration(st.step, time_budget, self.t0) if time_budget else None
        self.it = iter(loader)
        self.echoes = EchoBuffer(cfg.train.seed) if echo > 1 else None
        self.interrupt = StopSignal() if d.world == 1 else StopSignal(signals=())

    def go(self) -> None:
        """Train until ``total`` steps or a stop; puts the signal handlers back either way."""
        try:
            while self.st.step < self.total:
                batch = self.next_batch()
                if batch is None:
                    self.stopping()
                    break
                self.take_step(batch)
                self.bar.update(1)
                if self.stops():
                    break
                self.log_and_save()
        finally:
            self.interrupt.restore()

    def next_batch(self) -> dict | None:
        """A fresh batch from the loader, or with ``echo`` > 1 between fresh ones, an echo;
        None when a stop signal ended the loader's workers while it waited."""
        st, echoes = self.st, self.echoes
        if echoes is not None and st.step % self.echo != 0 and echoes.batches:
            return echoes.draw(st.step, self.cfg.train.batch_size)  # (none after a resume)
        tw = time.perf_counter()
        try:
            batch = to_device(next(self.it), self.d.device)
        except Exception as e:
            if self.interrupt.received:  # the signal ended the loader's workers while it
                return None  # waited: torch's RuntimeError, or a reset socket (OSError)
            raise self.loader_failed(e) from e
        self.wait += time.perf_counter() - tw
        self.seen += batch["image"].shape[0] * self.d.world
        if echoes is not None:
            echoes.add(batch)
        return batch

    def loader_failed(self, error: Exception) -> RuntimeError:
        """The error to raise when fetching a batch failed (a worker killed by the OOM killer,
        a shard file gone): a single process first saves a checkpoint at this step, which the
        failure leaves whole, so that the steps since the last one are not lost."""
        self.interrupt.ignore_workers()
        kept = save(self.st, self.cfg, self.run_dir, self.d) if self.d.world == 1 else None
        self.bar.close()
        return RuntimeError(
            f"the data loader failed at step {self.st.step} ({type(error).__name__}: {error})"
            + (f"; saved a checkpoint at step {self.st.step}: fix the cause and --resume"
               if kept else ""))

    def take_step(self, batch: dict) -> None:
        """``train_step``; the first one captures CUDA graphs or compiles (eager if that fails)."""
        st, cfg = self.st, self.cfg
        if self.cuda_graph and st.step == self.first and graph_or_eager(
                st, batch, amp_dtype(self.d.device, cfg.optim)):
            self.amp = contextlib.nullcontext  # the autocast is inside the graph
        if self.compile and st.step == self.first:  # the step that compiles
            self.last = first_step_or_eager(st, batch, cfg, self.amp, self.eager)
        else:
            self.last = train_step(st, batch, cfg, self.amp)

    def stops(self) -> bool:
        """Re-fits ``total`` to the time budget; True when the budget, ``stop_after`` or a stop
        signal ends the run at this step."""
        st = self.st
        if self.calib is not None:
            new_total, stop = self.calib.after_step(st.step, self.total, self.d)
            if new_total != self.total:
                self.total = st.schedule.total = new_total
                self.bar.total = self.total
                self.bar.refresh()
            if stop:
                return True
        if self.stop_after is not None and time.perf_counter() - self.t0 > self.stop_after:
            if self.d.main:
                print(f"stopping after {self.stop_after:.0f} s at step {st.step} of {self.total}; "
                      "--resume continues the schedule", file=sys.stderr)
            return True
        if self.interrupt.received:
            self.stopping()
            return True
        return False

    def stopping(self) -> None:
        """The message of a stop signal."""
        print(f"{self.interrupt.received}: stopping at step {self.st.step} of {self.total} with a "
              "checkpoint; --resume continues the schedule", file=sys.stderr)

    def log_and_save(self) -> None:
        """TensorBoard every ``log_every`` steps and at the end; a checkpoint every ``every``."""
        st, cfg = self.st, self.cfg
        if self.writer is not None and (st.step % cfg.train.log_every == 0
                                        or st.step == self.total):
            now = time.perf_counter()
            log_scalars(self.writer, self.bar, st, self.last, self.seen / max(now - self.t0, 1e-9),
                        (self.wait - self.mark[1]) / max(now - self.mark[0], 1e-9))
            self.mark = (now, self.wait)
        if self.every > 0 and st.step % self.every == 0 and st.step < self.total:
            save(st, cfg, self.run_dir, self.d)

    def close(self) -> dict:
        """The last checkpoint (``finish``); closes the bar and TensorBoard; the summary."""
        st, d = self.st, self.d
        if self.cuda_graph:
            st.module = self.eager  # the same weights; a GraphedModule has no state of its own
        path, digests = finish(st, self.cfg, self.run_dir, d)
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
        elapsed = time.perf_counter() - self.t0
        return {"step": st.step, "losses": self.last, "checkpoint": str(path) if path else None,
                "stopped_by": self.interrupt.received,
                "samples_per_s": self.seen / max(elapsed, 1e-9), "seconds": elapsed,
                "data_wait_s": self.wait,
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


if __name__ == "__main__":  # the d2a-train CLI lives in train_cli.py
    from d2a_edge.training.train_cli import main
    main()
