"""``d2a-train --cuda-graph``: the training step's forward and backward replayed from CUDA graphs.

One edge-s step at batch 256 launches about 2,600 kernels. On the lent H200 it took 0.16–0.19 s
inside d2a-train against 0.124 s alone (docs/gpu.md), where the launching process shares the CPU
with the rendering workers. A CUDA graph replays the forward (model + losses) and the backward
as two launches. Grad clipping, the fused AdamW step and the EMA stay eager (a few multi-tensor
ops), and so does the skip-on-non-finite logic of ``train.train_step``.

``torch.cuda.make_graphed_callables`` captures them on the first batch. Its warm-up passes
update BatchNorm's running statistics, which are put back afterwards. A batch whose tensors
differ in shape or dtype from that first one (a short last batch of stored data) runs eagerly.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def autocast(dtype: torch.dtype | None):
    """CUDA autocast to ``dtype`` (None: off) without the weight cache, which capture forbids."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype, cache_enabled=False)


class _Flat(nn.Module):
    """``module`` (TrainModule) with tensors in and tensors out, as graphing needs: the batch's
    tensors as positional arguments in ``keys`` order, the loss terms as a tuple; autocast
    inside."""

    def __init__(self, module: nn.Module, keys: list[str], dtype: torch.dtype | None):
        super().__init__()
        self.module, self.keys, self.dtype = module, keys, dtype
        self.names: list[str] = []

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with autocast(self.dtype):
            _, losses = self.module(dict(zip(self.keys, tensors)))
        self.names = list(losses)
        return tuple(losses.values())


class GraphedModule:
    """Stands in for the TrainModule in ``train.train_step``: ``module(batch) -> (out,
    losses)``, with the forward and backward replayed from CUDA graphs captured on ``batch``
    (``out`` is None then: the graph returns the losses only).

    ``dtype``: the autocast dtype (None: fp32). Call ``train_step`` with a null ``amp``: the
    autocast is part of the graph. Raises whatever capture raises (the caller falls back).
    """

    def __init__(self, module: nn.Module, batch: dict, dtype: torch.dtype | None,
                 warmup: int = 3):
        self.module, self.dtype = module, dtype
        self.keys = sorted(k for k, v in batch.items() if torch.is_tensor(v))
        self.layout = {k: (batch[k].shape, batch[k].dtype) for k in self.keys}
        flat = _Flat(module, self.keys, dtype)
        module.train()
        saved = [b.detach().clone() for b in module.buffers()]
        try:
            sample = tuple(batch[k].detach().clone() for k in self.keys)
            self.graphed = torch.cuda.make_graphed_callables(
                flat, sample, num_warmup_iters=warmup, allow_unused_input=True)
        finally:
            with torch.no_grad():
                for b, s in zip(module.buffers(), saved):
                    b.copy_(s)
        self.names = flat.names

    def fits(self, batch: dict) -> bool:
        """Whether ``batch`` has the captured batch's tensors, shapes and dtypes."""
        return all(k in batch and (batch[k].shape, batch[k].dtype) == self.layout[k]
                   for k in self.keys)

    def train(self) -> GraphedModule:
        return self  # captured in training mode

    def __call__(self, batch: dict) -> tuple[dict | None, dict[str, torch.Tensor]]:
        if not self.fits(batch):
            with autocast(self.dtype):
                return self.module(batch)
        return None, dict(zip(self.names, self.graphed(*(batch[k] for k in self.keys))))
