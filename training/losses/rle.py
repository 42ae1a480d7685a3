"""Residual log-likelihood estimation (RLE; Li et al., ICCV 2021).

A RealNVP flow (6 coupling layers, 64-wide nets, as in ``Jeff-sjtu/res-loglikelihood-regression``)
models the density ``G`` of the normalised residual ``z = (mu - y) / sigma``; a fixed Laplace
term ``Q`` carries the bulk ("residual" design). Per joint, as in the official code:

    flow term:     sum_d log sigma_d - log G(z)                 (3D flow, one density per joint)
    Laplace term:  sum_d log(sigma_d / amp) + |r_d| / (sqrt(2) sigma_d),   amp = 1/sqrt(2 pi)

Each term alone is the negative log-likelihood of a scale family, so it is minimised at the true
sigma when the residuals follow its shape (the flow term for the shape the flow has learned,
e.g. Gaussian at initialisation; the Laplace term for Laplace residuals with scale sqrt(2) sigma).
Their sum, the RLE loss, is not a normalised likelihood: its minimiser is a sigma that tracks
the error scale, not the exact standard deviation. (Upstream broadcasts the 3D flow's
``log G`` over the three axes; we subtract it once per joint, its proper Jacobian form.)
The flow is used in training only.
"""
from __future__ import annotations

import math

import torch
from torch import nn

AMP = 1 / math.sqrt(2 * math.pi)


def _net(dim: int, hidden: int, tanh: bool) -> nn.Sequential:
    layers = [nn.Linear(dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden), nn.LeakyReLU(),
              nn.Linear(hidden, dim)]
    if tanh:
        layers.append(nn.Tanh())
    net = nn.Sequential(*layers)
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, gain=0.01)
            nn.init.zeros_(m.bias)
    return net


class RealNVP(nn.Module):
    """RealNVP density on ``R^dim`` with a standard-normal base.

    Coupling ``i`` keeps the coordinates where ``mask[i] = 1`` and maps the others as
    ``z = (x - t(x_m)) * exp(-s(x_m))`` (data -> base direction, as upstream's ``backward_p``).
    """

    def __init__(self, dim: int = 3, layers: int = 6, hidden: int = 64):
        super().__init__()
        if dim < 2:
            raise ValueError(f"RealNVP needs dim >= 2, got {dim}")
        half = [1.0 if i >= dim // 2 else 0.0 for i in range(dim)]  # upstream 3D: [0, 0, 1]
        masks = [half if i % 2 == 0 else [1.0 - m for m in half] for i in range(layers)]
        self.register_buffer("masks", torch.tensor(masks), persistent=False)  # (layers, dim)
        self.s = nn.ModuleList(_net(dim, hidden, tanh=True) for _ in range(layers))
        self.t = nn.ModuleList(_net(dim, hidden, tanh=False) for _ in range(layers))
        self.dim = dim

    def to_base(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (N, dim) -> (z (N, dim), log|det dz/dx| (N,))``."""
        z, log_det = x, x.new_zeros(x.shape[0])
        for i in reversed(range(len(self.s))):
            m = self.masks[i]
            zm = z * m
            s = self.s[i](zm) * (1 - m)
            t = self.t[i](zm) * (1 - m)
            z = zm + (1 - m) * (z - t) * torch.exp(-s)
            log_det = log_det - s.sum(dim=1)
        return z, log_det

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density ``(N, dim) -> (N,)``."""
        z, log_det = self.to_base(x)
        base = -0.5 * (z ** 2).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi)
        return base + log_det


def flow_nll(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor,
             flow: RealNVP) -> torch.Tensor:
    """Flow term ``(B, J)``: ``sum log sigma - log G((mu - target) / sigma)``; inputs (B, J, 3)."""
    z = (mu - target) / sigma
    log_g = flow.log_prob(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1])  # (B, J)
    return sigma.log().sum(-1) - log_g


def laplace_nll(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Residual (Laplace) term ``(B, J)`` exactly as upstream's ``logQ``, summed over axes."""
    return (torch.log(sigma / AMP) + (mu - target).abs() / (math.sqrt(2) * sigma + 1e-9)).sum(-1)


def rle_nll(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor,
            flow: RealNVP) -> torch.Tensor:
    """Per-joint RLE loss ``(B, J)`` = flow term + Laplace term; ``mu, sigma, target (B, J, 3)``."""
    return flow_nll(mu, sigma, target, flow) + laplace_nll(mu, sigma, target)
