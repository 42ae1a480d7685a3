"""D2A-HMR training losses: ``D2ALoss(cfg, body)(out, batch) -> {name: loss}`` plus ``total``.

Each term is returned unweighted (for logging) and ``total`` is the weighted sum; the weights
live in ``LossConfig``. The RLE flow is a parameter of this module (train it with the model).
"""
from __future__ import annotations

import torch
from torch import nn

from d2a_edge.body.lbs_torch import BodyLayer
from d2a_edge.training.config import LossConfig
from d2a_edge.training.losses import terms
from d2a_edge.training.losses.rle import RealNVP, flow_nll, laplace_nll, rle_nll

__all__ = ["D2ALoss", "RealNVP", "flow_nll", "laplace_nll", "rle_nll", "terms"]


class D2ALoss(nn.Module):
    """All loss terms of D2A-HMR.

    ``out``: the model's dict (``rotmats, betas, translation, joints3d, vertices, joint_mu,
    joint_sigma, verts_coarse`` and, when present, ``depth, silhouette_logits``); ``batch``: the
    sample schema as tensors (``rotmats, betas, transl, joints3d, joints2d, verts_coarse, K,
    crop_box, depth, mask``; images ``(B, 3, s, s)``).
    """

    def __init__(self, cfg: LossConfig, body: BodyLayer):
        super().__init__()
        self.cfg = cfg
        self.body = body
        self.flow = RealNVP(dim=3, layers=6, hidden=64) if cfg.rle else None

    def forward(self, out: dict, batch: dict) -> dict[str, torch.Tensor]:
        c, b = self.cfg, batch
        t_gt, t_pr = b["transl"], out["translation"]
        with torch.no_grad():
            verts_gt, _ = self.body(b["rotmats"], b["betas"], t_gt)
        crop = b["image"].shape[-1]
        L = {
            "vertex": terms.root_relative_l1(out["vertices"], t_pr, verts_gt, t_gt),
            "joint3d": terms.root_relative_l1(out["joints3d"], t_pr, b["joints3d"], t_gt),
            "joint2d": terms.reprojection(out["joints3d"], b["joints2d"], b["K"], b["crop_box"],
                                          crop),
            "rotation": terms.l1(out["rotmats"], b["rotmats"]),
            "shape": terms.l1(out["betas"], b["betas"]),
            "translation": terms.l1(t_pr, t_gt),
            "coarse_vertex": terms.root_relative_l1(out["verts_coarse"], t_pr, b["verts_coarse"],
                                                    t_gt),
        }
        target_mu = b["joints3d"] - t_gt[:, None]  # (B, J, 3) root-relative
        if self.flow is not None:
            L["joint_mu"] = rle_nll(out["joint_mu"], out["joint_sigma"], target_mu,
                                    self.flow).mean()
        else:
            L["joint_mu"] = terms.l1(out["joint_mu"], target_mu)
        if "depth" in out:
            L["depth"] = terms.depth_ssi(out["depth"], b["depth"])
        if "silhouette_logits" in out:
            L["silhouette"] = terms.silhouette(out["silhouette_logits"], b["mask"])
        L["total"] = sum(getattr(c, k) * v for k, v in L.items())
        return L
