"""Convolutional parts: pseudo-depth estimator, image backbone, depth backbone.

All timm models are built with ``pretrained=False``: nothing is ever downloaded.
"""
from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn


def _feature_index(model_name: str, reduction: int) -> tuple[int, list[int], list[int]]:
    """Index of the timm feature level with stride ``reduction``, plus all reductions/channels."""
    probe = timm.create_model(model_name, pretrained=False, features_only=True)
    reds, chans = probe.feature_info.reduction(), probe.feature_info.channels()
    if reduction not in reds:
        raise ValueError(f"backbone {model_name!r} has feature strides {reds}; "
                         f"token_reduction={reduction} is not one of them")
    return reds.index(reduction), reds, chans


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class PseudoDepth(nn.Module):
    """Relative depth at 1/4 resolution from a normalised image.

    A timm encoder (levels at strides 4..32) and a light FPN decoder (top-down, 1x1 laterals).
    Forward: ``(B, 3, H, W) -> (B, 1, H/4, W/4)``; scale and shift are arbitrary (SSI loss).
    """

    def __init__(self, encoder: str, decoder_dim: int):
        super().__init__()
        _, reds, chans = _feature_index(encoder, 4)
        idx = [i for i, r in enumerate(reds) if r >= 4]
        self.encoder = timm.create_model(encoder, pretrained=False, features_only=True,
                                         out_indices=tuple(idx))
        self.laterals = nn.ModuleList(nn.Conv2d(chans[i], decoder_dim, 1) for i in idx)
        self.smooth = conv_bn_relu(decoder_dim, decoder_dim)
        self.head = nn.Conv2d(decoder_dim, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)  # strides 4, 8, 16, 32
        y = self.laterals[-1](feats[-1])
        for lat, f in zip(reversed(self.laterals[:-1]), reversed(feats[:-1])):
            y = F.interpolate(y, size=f.shape[-2:], mode="bilinear", align_corners=False) + lat(f)
        return self.head(self.smooth(y))  # (B, 1, H/4, W/4)


class ImageBackbone(nn.Module):
    """timm ``features_only`` backbone cut at stride ``token_reduction`` + 1x1 projection.

    Forward: ``(B, 3, H, W) -> (B, dim, H/r, W/r)``.
    """

    def __init__(self, name: str, token_reduction: int, dim: int):
        super().__init__()
        idx, _, chans = _feature_index(name, token_reduction)
        self.body = timm.create_model(name, pretrained=False, features_only=True,
                                      out_indices=(idx,))
        self.proj = nn.Conv2d(chans[idx], dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x)[-1])


class DepthBackbone(nn.Module):
    """Light conv stack: 1/4-res relative depth -> depth tokens at the image-token stride.

    The depth map is standardised per sample first (relative depth has no scale), which is part
    of the exported graph. Forward: ``(B, 1, H/4, W/4) -> (B, dim, H/r, W/r)``.
    """

    def __init__(self, channels: tuple[int, ...], token_reduction: int, dim: int):
        super().__init__()
        stages = int(round(math.log2(token_reduction / 4)))
        if 4 * 2 ** stages != token_reduction or len(channels) != stages:
            raise ValueError(f"depth_backbone.channels needs log2(token_reduction/4) = {stages} "
                             f"entries for token_reduction={token_reduction}, got {channels}")
        layers, cin = [], 1
        for c in channels:
            layers += [conv_bn_relu(cin, c, stride=2), conv_bn_relu(c, c)]
            cin = c
        self.body = nn.Sequential(*layers)
        self.proj = nn.Conv2d(cin, dim, 1)

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        mean = depth.mean(dim=(2, 3), keepdim=True)
        std = depth.std(dim=(2, 3), keepdim=True) + 1e-6
        return self.proj(self.body((depth - mean) / std))
