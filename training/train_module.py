"""What a training step runs and keeps beside the weights: ``TrainModule`` (model + loss),
``freeze`` (modules left out of training), ``EMA`` (the averaged weights) and the autocast
dtype (``amp_dtype``, ``autocast_for``); ``train.build_state`` puts them together."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from d2a_edge.training.config import OptimConfig
from d2a_edge.training.losses import D2ALoss
from d2a_edge.training.model import D2AHMR


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
