"""What feeds the training loop: the dataset named on the command line, resumable per-step
batches (``StepSampler``), the DataLoader (spawned EGL rendering workers beside CUDA) and data
echoing (``EchoBuffer``)."""
from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import torch

from d2a_edge.training.config import Config
from d2a_edge.training.distributed import Dist


class StepSampler(torch.utils.data.Sampler):
    """Batch indices for steps ``start, start+1, ...``: a seeded permutation per epoch, split
    across ranks, so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, n: int, batch_size: int, rank: int, world: int, seed: int, start: int):
        per_rank = n // world
        if per_rank < batch_size:
            raise ValueError(f"dataset of {n} samples is too small for batch_size={batch_size} "
                             f"on {world} process(es); lower --batch-size (train.batch_size) "
                             "or add data")
        self.n, self.bs, self.rank, self.world = n, batch_size, rank, world
        self.seed, self.start, self.per_epoch = seed, start, per_rank // batch_size

    def __iter__(self):
        step, perm_epoch, perm = self.start, -1, None
        while True:
            epoch, i = divmod(step, self.per_epoch)
            if epoch != perm_epoch:  # one permutation per epoch (on-the-fly epochs are 1e6)
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, perm_epoch = torch.randperm(self.n, generator=g)[self.rank::self.world], epoch
            yield perm[i * self.bs:(i + 1) * self.bs].tolist()
            step += 1


def build_dataset(args, cfg: Config):
    """The Dataset named on the command line (shards, or on-the-fly rendering of one or more
    splits: an equal share of ``--on-the-fly-size`` each, split k seeded ``train.seed + k``), in
    the compact form (``to_device`` expands its batches)."""
    from d2a_edge.training.data.dataset import ConcatOnTheFly, OnTheFlyDataset, ShardDataset
    if args.data:
        npz = [d for d in args.data if str(d).endswith(".npz")]
        if npz:
            raise ValueError(f"--data {npz[0]}: d2a-train takes folders written by d2a-data "
                             "generate; an .npz in the SPIN/HMR2 format can be read with "
                             "SpinNpzDataset (training/data/realdata.py), not trained on")
        parts = [ShardDataset(d, compact=True) for d in args.data]
        for d, ds in zip(args.data, parts):
            size = int(ds[0]["image"].shape[-1])
            if size != cfg.model.image_size:
                raise ValueError(f"shards in {d} have {size}px crops but config "
                                 f"{cfg.name!r} expects model.image_size={cfg.model.image_size}")
        return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    splits = args.on_the_fly or [cfg.data.split]
    parts = [OnTheFlyDataset(split, size=args.on_the_fly_size // len(splits),
                             seed=cfg.train.seed + k, image_size=cfg.model.image_size,
                             body=cfg.model.body, compact=True)
             for k, split in enumerate(splits)]
    return parts[0] if len(parts) == 1 else ConcatOnTheFly(parts)


def data_source(args, cfg: Config) -> list[str]:
    """What ``build_dataset`` reads, for ``run.json``: the shard folders (resolved), or the
    on-the-fly splits and epoch size."""
    if args.data:
        return [str(Path(d).resolve()) for d in args.data]
    return [f"on-the-fly {s}" for s in args.on_the_fly or [cfg.data.split]] + \
        [f"on-the-fly-size {args.on_the_fly_size}"]


ECHO_BUFFER = 8  # fresh batches kept for data echoing


class EchoBuffer:
    """The last ``ECHO_BUFFER`` fresh batches (on the device); ``draw`` mixes their samples."""

    def __init__(self, seed: int):
        self.batches: list[dict] = []
        self.seed = seed

    def add(self, batch: dict) -> None:
        self.batches = (self.batches + [batch])[-ECHO_BUFFER:]

    def draw(self, step: int, size: int) -> dict:
        """``size`` samples drawn without replacement from the buffer (seeded by ``step``);
        only the drawn rows are copied."""
        keys = [k for k, v in self.batches[0].items() if torch.is_tensor(v)]
        lens = [len(b[keys[0]]) for b in self.batches]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        pick = torch.randperm(sum(lens), generator=g)[:size]
        rows, start = [], 0
        for n in lens:  # the picked rows of each buffered batch
            rows.append(pick[(pick >= start) & (pick < start + n)] - start)
            start += n
        return {k: torch.cat([b[k][r.to(b[k].device)] for b, r in zip(self.batches, rows)])
                for k in keys}


def to_device(batch: dict, device: torch.device) -> dict:
    """A loader batch on ``device``, in the float form (images travel compact, as uint8)."""
    from d2a_edge.training.data.dataset import expand
    return expand({k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                   for k, v in batch.items()})


def uses_egl(dataset) -> bool:
    """Whether ``dataset`` (or a part of a ConcatDataset) renders samples through EGL."""
    from d2a_edge.training.data.dataset import OnTheFlyDataset
    parts = getattr(dataset, "datasets", [dataset])
    return any(isinstance(p, OnTheFlyDataset) for p in parts)


def make_loader(dataset, cfg: Config, d: Dist, start: int, workers: int | None):
    """DataLoader over ``StepSampler`` batches from step ``start``.

    Rendering workers are spawned, not forked, when this process holds a CUDA context (the
    GPU's EGL driver in a child forked from a CUDA process is not supported) or has rendered
    itself (``--init BUNDLE`` renders its BatchNorm crops here; EGL does not survive fork).
    """
    sampler = StepSampler(len(dataset), cfg.train.batch_size, d.rank, d.world, cfg.train.seed,
                          start)
    nw = cfg.train.num_workers if workers is None else workers
    from d2a_edge.training.data.render import holds_egl_context
    spawn = nw > 0 and uses_egl(dataset) and (d.device.type == "cuda" or holds_egl_context())
    # the loader gets its own generator so creating it leaves the global RNG (masking) alone
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=nw, pin_memory=d.device.type == "cuda",
        persistent_workers=nw > 0, multiprocessing_context="spawn" if spawn else None,
        worker_init_fn=functools.partial(init_worker, spawned=spawn) if nw > 0 else None,
        prefetch_factor=2 if nw > 0 else None,
        generator=torch.Generator().manual_seed(cfg.train.seed + start))


def init_worker(worker_id: int, spawned: bool) -> None:
    """``worker_init_fn`` of the loader's workers: they ignore SIGINT (a Ctrl-C reaches the
    whole process group; the training process handles it: finish the step, checkpoint, exit
    130). SIGTERM still ends them: multiprocessing ends its worker processes with it at exit,
    and a worker that ignored it hung the exit. A SIGTERM to the whole group is handled in
    the training process instead (``stop_signal.StopSignal``). Spawned workers also
    ``leave_like_a_forked_worker``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spawned:
        leave_like_a_forked_worker(worker_id)


def leave_like_a_forked_worker(worker_id: int) -> None:
    """``worker_init_fn`` of spawned rendering workers: end the process with ``os._exit``.

    A forked worker already ends that way (multiprocessing's fork start method calls
    ``os._exit``). A spawned one ends through ``sys.exit`` and the whole interpreter and C
    library teardown, and on the GPU machine one such worker per run aborted there after the
    final checkpoint ("terminate called without an active exception", from the EGL driver's
    threads is the suspicion). An ``atexit`` handler registered here runs before the teardown
    (atexit runs last-registered first) and skips it. Not yet verified on the GPU.
    """
    import atexit

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(leave)
