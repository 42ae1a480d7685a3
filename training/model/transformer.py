"""Token parts: hybrid positional encoding, fusion encoder, query decoder (pre-norm blocks)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sine_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2D sine-cosine embedding ``(h*w, dim)`` (half the channels for y, half for x)."""
    if dim % 4:
        raise ValueError(f"sine positional encoding needs dim divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / temperature ** (torch.arange(q, dtype=torch.float32) / q)  # (q,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    ay = ys.reshape(-1, 1) * omega  # (h*w, q)
    ax = xs.reshape(-1, 1) * omega
    return torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)  # (h*w, dim)


class HybridPositionalEncoding(nn.Module):
    """Fixed 2D sine + learned per-position embedding + learned per-modality embedding.

    ``forward(tokens (B, h*w, D), modality, (h, w)) -> (B, h*w, D)``. The learned table is sized
    for ``grid``; another grid size interpolates it bilinearly.
    """

    def __init__(self, dim: int, grid: tuple[int, int], num_modalities: int):
        super().__init__()
        self.grid = grid
        self.learned = nn.Parameter(torch.zeros(1, dim, *grid))
        self.modality = nn.Parameter(torch.zeros(num_modalities, dim))
        nn.init.trunc_normal_(self.learned, std=0.02)
        nn.init.trunc_normal_(self.modality, std=0.02)
        self.register_buffer("sine", sine_2d(*grid, dim).unsqueeze(0), persistent=False)

    def forward(self, tokens: torch.Tensor, modality: int, hw: tuple[int, int]) -> torch.Tensor:
        if tuple(hw) == tuple(self.grid):
            learned, sine = self.learned, self.sine
        else:
            learned = F.interpolate(self.learned, size=hw, mode="bilinear", align_corners=False)
            sine = sine_2d(*hw, tokens.shape[-1]).to(tokens).unsqueeze(0)
        learned = learned.flatten(2).transpose(1, 2)  # (1, h*w, D)
        return tokens + sine + learned + self.modality[modality]


class Attention(nn.Module):
    """Multi-head attention (queries ``(B, Nq, D)``, keys/values ``(B, Nk, D)``)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.q, self.kv = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        B, Nq, D = x.shape
        h = self.heads
        q = self.q(x).reshape(B, Nq, h, D // h).transpose(1, 2)  # (B, h, Nq, D/h)
        k, v = self.kv(mem).reshape(B, -1, 2, h, D // h).permute(2, 0, 3, 1, 4)  # (B, h, Nk, D/h)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, Nq, D/h)
        return self.out(y.transpose(1, 2).reshape(B, Nq, D))


class Block(nn.Module):
    """Pre-norm block: optional self-attention, optional cross-attention to ``mem``, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float,
                 self_attn: bool, cross_attn: bool):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim) if self_attn else None
        self.attn_s = Attention(dim, heads, dropout) if self_attn else None
        self.norm_q = nn.LayerNorm(dim) if cross_attn else None
        self.norm_m = nn.LayerNorm(dim) if cross_attn else None
        self.attn_c = Attention(dim, heads, dropout) if cross_attn else None
        hidden = int(dim * mlp_ratio)
        self.norm_f = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None = None) -> torch.Tensor:
        if self.attn_s is not None:
            y = self.norm_s(x)
            x = x + self.attn_s(y, y)
        if self.attn_c is not None:
            x = x + self.attn_c(self.norm_q(x), self.norm_m(mem))
        return x + self.mlp(self.norm_f(x))


class FusionEncoder(nn.Module):
    """Self-attention within image tokens and within depth tokens, then image<-depth cross-attn.

    ``forward(img (B, N, D), depth (B, N', D) | None) -> (B, N, D)``; without depth tokens only
    the image self-attention runs (the no-depth ablation).
    """

    def __init__(self, dim: int, heads: int, self_layers: int, cross_layers: int,
                 mlp_ratio: float, dropout: float, with_depth: bool):
        super().__init__()
        blk = lambda s, c: Block(dim, heads, mlp_ratio, dropout, s, c)  # noqa: E731
        self.img_layers = nn.ModuleList(blk(True, False) for _ in range(self_layers))
        self.depth_layers = nn.ModuleList(blk(True, False) for _ in range(self_layers)) \
            if with_depth else nn.ModuleList()
        self.cross_layers = nn.ModuleList(blk(False, True) for _ in range(cross_layers)) \
            if with_depth else nn.ModuleList()
        self.norm = nn.LayerNorm(dim)

    def forward(self, img: torch.Tensor, depth: torch.Tensor | None) -> torch.Tensor:
        for layer in self.img_layers:
            img = layer(img)
        if depth is not None:
            for layer in self.depth_layers:
                depth = layer(depth)
            for layer in self.cross_layers:
                img = layer(img, depth)
        return self.norm(img)


class QueryDecoder(nn.Module):
    """Query tokens: self-attention among queries + cross-attention to the fused tokens.

    ``forward(queries (B, Q, D), mem (B, N, D)) -> (B, Q, D)``.
    """

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, True, True)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, mem: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, mem)
        return self.norm(queries)


def grid_size(image_size: int, reduction: int) -> tuple[int, int]:
    n = math.ceil(image_size / reduction)
    return n, n
