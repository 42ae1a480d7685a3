"""Training configuration: one dataclass per component, read from YAML.

A YAML file holds the sections ``model`` (with ``backbone``, ``depth``, ``depth_backbone``,
``encoder``, ``decoder``), ``loss``, ``optim``, ``train`` and ``data``; any key left out keeps its
dataclass default. ``base: NAME`` inherits another config first (the ablations do this).
``load_config("edge-s")`` reads ``training/configs/edge-s.yaml``; a path works too.
Unknown keys raise ``ValueError`` naming the key and the valid ones (typos never pass silently).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class BackboneConfig:
    """Image backbone: a timm model with ``features_only``; tokens from one stride."""

    name: str = "resnet18"
    token_reduction: int = 16  # stride of the feature map that becomes image tokens


@dataclass
class DepthConfig:
    """Pseudo-depth estimator: timm encoder + light FPN decoder -> relative depth at 1/4 res."""

    enabled: bool = True
    encoder: str = "mobilenetv3_small_100"
    decoder_dim: int = 32


@dataclass
class DepthBackboneConfig:
    """Light conv stack turning the 1/4-res pseudo-depth into depth tokens."""

    channels: tuple[int, ...] = (32, 64)  # one stride-2 stage each: 1/4 -> token stride


@dataclass
class EncoderConfig:
    """Per-modality self-attention, then image<-depth cross-attention."""

    dim: int = 128
    heads: int = 4
    self_layers: int = 1
    cross_layers: int = 1
    mlp_ratio: float = 2.0
    dropout: float = 0.0


@dataclass
class DecoderConfig:
    """Camera/shape/joint/coarse-vertex query tokens cross-attending to the fused tokens."""

    layers: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0


@dataclass
class ModelConfig:
    """The whole D2A-HMR model; joint/shape/vertex counts come from the body asset."""

    body: str = "anny"
    image_size: int = 192
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    depth_backbone: DepthBackboneConfig = field(default_factory=DepthBackboneConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    mask_ratio: float = 0.25  # masked token modeling, training only; 0 disables it
    silhouette: bool = True   # silhouette decoder, training only
    sigma_init: float = 0.05  # initial per-joint sigma (metres)


@dataclass
class LossConfig:
    """Loss weights (0 switches a term off) and the RLE switch (False = plain L1 on joints)."""

    rle: bool = True
    vertex: float = 1.0
    joint3d: float = 1.0
    joint2d: float = 1.0
    rotation: float = 1.0
    shape: float = 0.1
    translation: float = 1.0
    silhouette: float = 0.5
    coarse_vertex: float = 1.0
    depth: float = 0.5
    joint_mu: float = 0.05  # RLE negative log-likelihood (or L1 when rle is False)


@dataclass
class OptimConfig:
    """AdamW + linear warm-up + cosine decay, gradient clipping, optional EMA, AMP."""

    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    amp: bool = True        # bf16/fp16 autocast on CUDA; CPU runs fp32 unless amp_cpu
    amp_cpu: bool = False   # bf16 autocast on CPU

    def __post_init__(self):
        if not all(math.isfinite(v) for v in (self.lr, self.weight_decay, self.grad_clip)) \
                or not self.lr > 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(f"optim: lr and grad_clip must be > 0 and weight_decay >= 0, all "
                             f"finite, got lr={self.lr}, grad_clip={self.grad_clip}, "
                             f"weight_decay={self.weight_decay}")
        if not 0 <= self.ema_decay < 1 or not 0 <= self.min_lr_ratio <= 1 \
                or self.warmup_steps < 0:
            raise ValueError(f"optim: need 0 <= ema_decay < 1, 0 <= min_lr_ratio <= 1 and "
                             f"warmup_steps >= 0, got ema_decay={self.ema_decay}, "
                             f"min_lr_ratio={self.min_lr_ratio}, warmup_steps={self.warmup_steps}")


@dataclass
class TrainConfig:
    """Loop settings."""

    steps: int = 20000
    batch_size: int = 32
    num_workers: int = 2
    log_every: int = 20
    ckpt_every: int = 500
    seed: int = 0
    # conv weights and images in channels-last (NHWC) memory order: on a GPU, cuDNN's NHWC batch
    # norm and convolutions instead of PyTorch's NCHW batch-norm kernels and layout conversions
    channels_last: bool = False
    # top-level model modules whose weights stay fixed (e.g. ("backbone", "depth_net")): no
    # gradients for them and their batch norms keep their running statistics (eval mode); the
    # backward pass stops at the first trained module (edge-s on the 2-core CPU with backbone
    # and depth_net frozen: 1.65 s a step instead of about 2.7 s)
    freeze: tuple[str, ...] = ()


@dataclass
class DataConfig:
    """Where samples come from when the CLI does not say (see ``d2a-train --help``)."""

    split: str = "id"       # on-the-fly split: id | ood
    val_fraction: float = 0.0


@dataclass
class Config:
    name: str = "edge-s"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _build(cls, values: dict, where: str):
    """Dataclass ``cls`` from a (possibly partial) dict; nested dataclasses recursively."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v, hint = values[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            v = _build(hint, v, f"{where}.{f.name}")
        elif typing.get_origin(hint) is tuple:
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(name_or_path: str | Path, seen: tuple = ()) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ValueError(f"config {str(name_or_path)!r} not found (looked at {path}); "
                         f"built-in configs: {available_configs()}")
    if path.resolve() in seen:
        raise ValueError(f"config inheritance loop through {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"config {path} must be a YAML mapping, got {type(raw).__name__}")
    base, name = raw.pop("base", None), raw.get("name", path.stem)
    if base is not None:
        raw = _merge(_read_yaml(base, seen + (path.resolve(),)), raw)
    raw["name"] = name
    return raw


def load_config(name_or_path: str | Path, overrides: dict | None = None) -> Config:
    """A ``Config`` from a built-in name (``edge-s``) or a YAML path, plus optional overrides."""
    raw = _read_yaml(name_or_path)
    if overrides:
        raw = _merge(raw, overrides)
    return _build(Config, raw, str(name_or_path))


def config_from_dict(values: dict) -> Config:
    """Inverse of ``config_to_dict`` (used when loading checkpoints)."""
    return _build(Config, values, "config")


def config_to_dict(cfg: Config) -> dict:
    """Plain JSON/YAML-safe dict (tuples become lists)."""
    def conv(x):
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x
    return conv(dataclasses.asdict(cfg))
