"""The fused inference graph: pseudo-depth + backbones + transformer + heads, one module.

This is what ``d2a-export`` traces to ONNX and what the SDK's torch backend runs. Inputs:
``image (B, 3, s, s)`` float32 RGB in [0, 1] (ImageNet normalisation is inside the graph) and
``bbox_info (B, 3)``. Outputs, in ``OUTPUT_NAMES`` order (= ``HumanMesh`` field names):
pose (B, J, 3, 3), shape (B, S), translation (B, 3) metres, joint_sigma (B, J, 3) metres.
Skinning is not in the graph: the SDK runs it (CUDA kernel or numpy).
"""
from __future__ import annotations

import os

import torch
from torch import nn

OUTPUT_NAMES = ("pose", "shape", "translation", "joint_sigma")


class FusedGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()

    def forward(self, image: torch.Tensor, bbox_info: torch.Tensor):
        out = self.model.forward_head(self.model.forward_features(image), bbox_info)
        return out["rotmats"], out["betas"], out["translation"], out["joint_sigma"]

    def output_shapes(self) -> dict[str, list[int]]:
        m = self.model
        J, S = m.num_joints, m.num_betas
        return {"pose": [J, 3, 3], "shape": [S], "translation": [3], "joint_sigma": [J, 3]}


def load_inference_module(checkpoint: str | os.PathLike) -> FusedGraph:
    """A ``FusedGraph`` in eval mode from a training checkpoint (weights-only loading)."""
    from d2a_edge.training.checkpoint import load_model
    return FusedGraph(load_model(checkpoint))
