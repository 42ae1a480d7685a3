"""Prediction heads, the 6D rotation map and the CLIFF camera conversion."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from d2a_edge.training.model.backbones import conv_bn_relu

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # first two columns of I, column-major


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """Zhou et al. 6D -> rotation ``(..., 6) -> (..., 3, 3)``; the 6D are the first two columns."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1, eps=1e-6)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-6)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns


def rotmat_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """Inverse of ``rot6d_to_rotmat``: ``(..., 3, 3) -> (..., 6)``."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def cam_crop_to_full(cam: torch.Tensor, bbox_info: torch.Tensor) -> torch.Tensor:
    """CLIFF: weak-perspective crop camera -> root translation in the camera frame (metres).

    cam: (B, 3) = (s, tx, ty) in the crop's normalised [-1, 1] frame; bbox_info: (B, 3) =
    [(cx - px)/fx, (cy - py)/fy, b/fx] (``d2a_edge.camera.bbox_info``). The root projects to
    the crop point (s*tx, s*ty).
    Returns (B, 3) = (tx + 2 u / (s b'), ty + 2 v / (s b'), 2 / (s b')) with (u, v, b') = bbox_info.
    """
    s, tx, ty = cam.unbind(-1)
    u, v, b = bbox_info.unbind(-1)
    sb = (s * b).clamp_min(1e-6)
    return torch.stack([tx + 2 * u / sb, ty + 2 * v / sb, 2 / sb], dim=-1)


class JointHead(nn.Module):
    """Per joint token, with its own linear map: 6D rotation, root-relative position mu (m) and
    per-axis sigma (m).

    ``forward(tokens (B, J, D)) -> rot6d (B, J, 6), mu (B, J, 3), sigma (B, J, 3)``. Rotations start
    at identity and mu at the rest-pose joints (``rest_joints (J, 3)``, root-relative).
    """

    def __init__(self, dim: int, rest_joints: torch.Tensor, sigma_init: float):
        super().__init__()
        J = rest_joints.shape[0]
        self.weight = nn.Parameter(torch.zeros(J, dim, 12))
        bias = torch.zeros(J, 12)
        bias[:, :6] = torch.tensor(IDENTITY_6D)
        bias[:, 6:9] = rest_joints.float()
        bias[:, 9:] = math.log(sigma_init / (1 - sigma_init))  # sigmoid^-1
        self.bias = nn.Parameter(bias)

    def forward(self, tokens: torch.Tensor):
        y = torch.einsum("bjd,jdk->bjk", tokens, self.weight) + self.bias  # (B, J, 12)
        return y[..., :6], y[..., 6:9], torch.sigmoid(y[..., 9:]) + 1e-4


class CameraHead(nn.Module):
    """CLIFF-style camera from the camera token conditioned on bbox_info.

    ``forward(token (B, D), bbox_info (B, 3)) -> cam (B, 3) = (s, tx, ty)``; s starts at 0.9.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim + 3, dim), nn.GELU(), nn.Linear(dim, 3))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, token: torch.Tensor, bbox_info: torch.Tensor) -> torch.Tensor:
        # CLIFF's normalisation of bbox_info: centre offsets x2.8, box size around 0.24 f
        norm = torch.stack([bbox_info[:, 0] * 2.8, bbox_info[:, 1] * 2.8,
                            (bbox_info[:, 2] - 0.24) / 0.06], dim=-1)
        raw = self.mlp(torch.cat([token, norm], dim=-1))
        s = 0.9 * torch.exp(raw[:, :1].clamp(-5.0, 5.0))
        return torch.cat([s, raw[:, 1:]], dim=-1)


class OffsetHead(nn.Module):
    """Linear head added to a fixed template: ``(B, N, D) -> (B, N, out)`` (shape, vertices)."""

    def __init__(self, dim: int, template: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(dim, template.shape[-1])
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.register_buffer("template", template.float(), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(tokens) + self.template


class SilhouetteDecoder(nn.Module):
    """Fused token grid -> person-mask logits at 1/4 input resolution (training only).

    ``forward(grid (B, D, h, w), out_hw) -> (B, 1, *out_hw)``.
    """

    def __init__(self, dim: int, hidden: int = 32, ups: int = 2):
        super().__init__()
        layers, cin = [], dim
        for _ in range(ups):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       conv_bn_relu(cin, hidden)]
            cin = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(hidden, 1, 3, padding=1)

    def forward(self, grid: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        y = self.head(self.body(grid))
        if tuple(y.shape[-2:]) != tuple(out_hw):
            y = F.interpolate(y, size=out_hw, mode="bilinear", align_corners=False)
        return y
