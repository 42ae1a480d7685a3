"""D2A-HMR: depth-aware transformer for monocular human mesh recovery (arXiv 2403.09063).

Split like timm: ``forward_features`` (pseudo-depth, backbones, positional encoding, fusion,
masked token modeling) -> ``forward_head`` (decoder + heads -> body parameters) -> ``skin``
(body-model LBS). ``forward = skin(forward_head(forward_features(image), bbox_info))``.
The exported graph is ``forward_features`` + ``forward_head``; skinning runs in the SDK.

Output names follow the SDK's ``HumanMesh`` fields where they overlap.
"""
from __future__ import annotations

import torch
from torch import nn

from d2a_edge.body.asset import BodyAsset
from d2a_edge.body.lbs_torch import BodyLayer
from d2a_edge.training.config import ModelConfig
from d2a_edge.training.model.backbones import DepthBackbone, ImageBackbone, PseudoDepth
from d2a_edge.training.model.heads import (CameraHead, JointHead, OffsetHead, SilhouetteDecoder,
                                           cam_crop_to_full, rot6d_to_rotmat)
from d2a_edge.training.model.transformer import (FusionEncoder, HybridPositionalEncoding,
                                                 QueryDecoder, grid_size)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class D2AHMR(nn.Module):
    """The D2A-HMR model for one body asset.

    Inputs: ``image (B, 3, s, s)`` float RGB in [0, 1] (ImageNet normalisation is inside the
    graph) and ``bbox_info (B, 3)`` (see ``d2a_edge.camera.bbox_info``).
    """

    def __init__(self, cfg: ModelConfig, asset: BodyAsset):
        super().__init__()
        self.cfg = cfg
        D, r = cfg.encoder.dim, cfg.backbone.token_reduction
        self.body = BodyLayer(asset)
        J, S, Vc = asset.num_joints, asset.num_betas, len(asset.coarse_index)
        self.num_joints, self.num_betas, self.num_coarse = J, S, Vc
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        self.depth_net = PseudoDepth(cfg.depth.encoder, cfg.depth.decoder_dim) \
            if cfg.depth.enabled else None
        self.depth_backbone = DepthBackbone(cfg.depth_backbone.channels, r, D) \
            if cfg.depth.enabled else None
        self.backbone = ImageBackbone(cfg.backbone.name, r, D)
        self.grid = grid_size(cfg.image_size, r)
        self.pos = HybridPositionalEncoding(D, self.grid, num_modalities=2)
        e = cfg.encoder
        self.encoder = FusionEncoder(D, e.heads, e.self_layers, e.cross_layers, e.mlp_ratio,
                                     e.dropout, with_depth=cfg.depth.enabled)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

        d = cfg.decoder
        self.queries = nn.Parameter(torch.zeros(1, 2 + J + Vc, D))  # cam, shape, joints, verts
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.decoder = QueryDecoder(D, d.heads, d.layers, d.mlp_ratio, d.dropout)
        rest_v, rest_j = self._rest_pose(asset)
        self.joint_head = JointHead(D, rest_j - rest_j[:1], cfg.sigma_init)
        self.shape_head = OffsetHead(D, torch.zeros(S))
        self.vertex_head = OffsetHead(D, rest_v[asset.coarse_index] - rest_j[:1])
        self.camera_head = CameraHead(D)
        self.silhouette = SilhouetteDecoder(D) if cfg.silhouette else None

    def _rest_pose(self, asset: BodyAsset) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(3).expand(1, asset.num_joints, 3, 3)
        with torch.no_grad():
            v, j = self.body(eye, torch.zeros(1, asset.num_betas), torch.zeros(1, 3))
        return v[0], j[0]

    def forward_features(self, image: torch.Tensor) -> dict:
        """Backbones + fusion. ``image (B, 3, s, s)`` -> ``tokens (B, N, D)``, ``depth
        (B, 1, s/4, s/4) | None``, ``token_mask (B, N) bool | None`` (set in training only)."""
        x = (image - self.mean) / self.std
        img = self.backbone(x)  # (B, D, h, w)
        hw = tuple(img.shape[-2:])
        img = self.pos(img.flatten(2).transpose(1, 2), 0, hw)  # (B, h*w, D)
        depth = dep = None
        if self.depth_net is not None:
            depth = self.depth_net(x)  # (B, 1, s/4, s/4)
            dep = self.depth_backbone(depth)
            dep = self.pos(dep.flatten(2).transpose(1, 2), 1, tuple(dep.shape[-2:]))
        tokens = self.encoder(img, dep)
        token_mask = None
        if self.training and self.cfg.mask_ratio > 0:
            token_mask = torch.rand(tokens.shape[:2], device=tokens.device) < self.cfg.mask_ratio
            tokens = torch.where(token_mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        return {"tokens": tokens, "depth": depth, "token_mask": token_mask,
                "grid_hw": hw}

    def forward_head(self, feats: dict, bbox_info: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoder + heads: body parameters, camera, sigma, coarse vertices (camera frame)."""
        tokens = feats["tokens"]
        B, J = tokens.shape[0], self.num_joints
        q = self.decoder(self.queries.expand(B, -1, -1), tokens)  # (B, 2+J+Vc, D)
        cam = self.camera_head(q[:, 0], bbox_info.to(q.dtype))
        translation = cam_crop_to_full(cam.float(), bbox_info.float())  # (B, 3)
        rot6d, mu, sigma = self.joint_head(q[:, 2:2 + J])
        out = {
            "rotmats": rot6d_to_rotmat(rot6d.float()),  # (B, J, 3, 3)
            "betas": self.shape_head(q[:, 1]).float(),  # (B, S)
            "cam": cam.float(),  # (B, 3) weak-perspective crop camera
            "translation": translation,  # (B, 3) root position, camera frame
            "joint_mu": mu.float(),  # (B, J, 3) root-relative
            "joint_sigma": sigma.float(),  # (B, J, 3) metres
            "verts_coarse": self.vertex_head(q[:, 2 + J:]).float() + translation[:, None],
        }
        if feats.get("depth") is not None:
            out["depth"] = feats["depth"].float()
        if self.training and self.silhouette is not None:
            h, w = feats["grid_hw"]
            grid = tokens.transpose(1, 2).reshape(B, -1, h, w)  # (B, D, h, w)
            s = self.cfg.image_size // 4
            out["silhouette_logits"] = self.silhouette(grid, (s, s)).float()
        return out

    def skin(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adds ``vertices (B, V, 3)`` and ``joints3d (B, J, 3)`` (camera frame) by LBS."""
        with torch.autocast(out["rotmats"].device.type, enabled=False):  # LBS stays fp32
            verts, joints = self.body(out["rotmats"].float(), out["betas"].float(),
                                      out["translation"].float())
        return {**out, "vertices": verts, "joints3d": joints}

    def forward(self, image: torch.Tensor, bbox_info: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.skin(self.forward_head(self.forward_features(image), bbox_info))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
