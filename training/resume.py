"""Where a ``train.run`` starts: the checkpoint ``--resume`` continues (restored with optimizer,
scheduler, AMP scaler, RNG and step), ``--init`` weights (a checkpoint or an exported bundle)
and ``--warm-fresh`` (the recovered weights wait while the fresh parts warm up)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from d2a_edge.training import checkpoint as ckpt
from d2a_edge.training import recover
from d2a_edge.training.config import Config, config_to_dict
from d2a_edge.training.distributed import Dist

if TYPE_CHECKING:  # train.py imports this module
    from d2a_edge.training.train import State


def checkpoint_to_resume(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint in ``run_dir`` that ``resume`` continues from (None: start at step 0).
    A ``run_dir`` with checkpoints but no ``resume`` is a ValueError; one whose checkpoints
    are all damaged, a CheckpointError (damaged ones are passed over with a message)."""
    if (run_dir / "manifest.json").is_file():  # training into it would hide the run
        raise ValueError(f"--out {run_dir} holds a manifest.json: it is a model bundle or a "
                         "dataset, not a training run; choose another --out")
    held = (run_dir / "checkpoints" / "latest.json").is_file() or \
        any((run_dir / "checkpoints").glob("step_*"))
    if not resume and held:
        raise ValueError(f"{run_dir} already holds a run's checkpoints; pass --resume to continue "
                         "it, or choose another --out")
    start = None
    if resume and held:
        start, skipped = ckpt.latest_intact(run_dir)
        if start is None:
            raise ckpt.CheckpointError(f"--resume: no intact checkpoint in {run_dir}: "
                                       + "; ".join(skipped))
        for why in skipped:
            print(f"--resume: passing over {why}", file=sys.stderr)
    return start


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
              "follows the new seed and batch size, and the learning-rate schedule goes on "
              "from the checkpoint's step with the new peak --lr", file=sys.stderr)
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
    if saved_cfg.get("optim", {}).get("lr") != cfg.optim.lr:  # the scheduler kept the saved one
        set_peak_lr(st.optimizer, st.scheduler, cfg.optim.lr)
    match_param_layout(st.optimizer)
    if d.main:
        print(f"resumed from {c['dir']} at step {st.step}", file=sys.stderr)
    return c["meta"]


def set_peak_lr(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """Make ``lr`` the peak of a restored ``LambdaLR`` schedule, from its current step on."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() gives


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
        model, bundle_cfg, report = recover.recover(path, progress=lambda m: d.main and print(
            m, file=sys.stderr))
        _load_init(st.model, model.state_dict(), path, bundle_cfg.name)
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
    name = c["meta"].get("config", {}).get("name")
    _load_init(st.model, model, path, name)
    if ckpt.split_weights(w, "loss"):
        _load_init(st.loss, ckpt.split_weights(w, "loss"), path, name)
    if st.ema is not None:
        st.ema.load_state_dict(model)
    if d.main:
        print(f"initialised from {c['dir']} (step {c['meta'].get('step')})", file=sys.stderr)


def _load_init(module: torch.nn.Module, weights: dict, path, config_name) -> None:
    """``module.load_state_dict(weights)``; weights of another model are a one-line
    ValueError (PyTorch lists every mismatched tensor: hundreds of lines)."""
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e))
        raise ValueError(f"--init {path}: its weights (config {config_name!r}) do not fit "
                         f"this run's model ({first[:160]}...); --init needs a checkpoint or "
                         "bundle of the same model") from None


def check_warm_fresh(init: str | None, steps: int) -> None:
    """ValueError unless ``--warm-fresh steps`` can apply: ``init`` leaves fresh parts."""
    if steps < 0 or not (init and recover.has_fresh_parts(init)):
        raise ValueError(f"--warm-fresh {steps}: needs steps >= 0 and --init BUNDLE or a "
                         "checkpoint recovered from one (a trained checkpoint's weights, and a "
                         "bundle with training extras, leave no fresh parts to warm up)")


def warm_up_fresh(st: State, cfg: Config, steps: int, d: Dist) -> int:
    """Freeze what a bundle ``init`` (or a checkpoint recovered from one) provided for the
    first ``steps`` steps (``train.run``'s ``warm_fresh``, which ``check_warm_fresh`` has
    checked before building the model); returns the steps. Set again on ``--resume`` (same
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
