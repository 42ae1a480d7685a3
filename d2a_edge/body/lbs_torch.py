"""Linear blend skinning in torch: THE reference implementation (the oracle).

Same signature and conventions as ``lbs_numpy.lbs``; device and dtype come from the inputs.
``BodyLayer`` holds a body asset as buffers for training. Imports torch: never imported by
``d2a_edge/__init__``.
"""
from __future__ import annotations

import torch

from d2a_edge.body.asset import BodyAsset


def forward_kinematics(rotmats: torch.Tensor, joints: torch.Tensor, parents,
                       transl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed joints ``(B, J, 3)`` and skinning transforms ``(B, J, 3, 4)``."""
    J = joints.shape[1]
    rots, poss = [rotmats[:, 0]], [transl]
    for j in range(1, J):
        p = int(parents[j])
        rots.append(rots[p] @ rotmats[:, j])
        offset = (joints[:, j] - joints[:, p]).unsqueeze(-1)  # (B, 3, 1)
        poss.append(poss[p] + (rots[p] @ offset).squeeze(-1))
    rot, pos = torch.stack(rots, 1), torch.stack(poss, 1)  # (B, J, 3, 3), (B, J, 3)
    t = pos - (rot @ joints.unsqueeze(-1)).squeeze(-1)
    return pos, torch.cat([rot, t.unsqueeze(-1)], dim=-1)


def dense_weights(skin_indices: torch.Tensor, skin_weights: torch.Tensor, J: int) -> torch.Tensor:
    """(V, J) skinning matrix from the sparse (V, K) indices and weights (duplicates summed)."""
    W = skin_weights.new_zeros(skin_indices.shape[0], J)
    return W.scatter_add_(1, skin_indices.long(), skin_weights)


def lbs(rotmats, betas, transl, *, v_template, shapedirs, j_template, j_shapedirs, parents,
        skin_indices, skin_weights, posedirs=None, weights_dense=None
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed vertices ``(B, V, 3)`` and joints ``(B, J, 3)``.

    rotmats: (B, J, 3, 3); betas: (B, S); transl: (B, 3) root joint position.
    ``weights_dense`` (V, J) may be passed pre-computed (``dense_weights``).
    """
    J, S = j_template.shape[0], shapedirs.shape[2]
    B = rotmats.shape[0]
    if rotmats.shape[1:] != (J, 3, 3) or betas.shape != (B, S) or transl.shape != (B, 3):
        raise ValueError(f"expected rotmats (B, {J}, 3, 3), betas (B, {S}), transl (B, 3); got "
                         f"{tuple(rotmats.shape)}, {tuple(betas.shape)}, {tuple(transl.shape)}")
    v_shaped = v_template + torch.einsum("vcs,bs->bvc", shapedirs, betas)
    j_rest = j_template + torch.einsum("jcs,bs->bjc", j_shapedirs, betas)
    if posedirs is not None:
        eye = torch.eye(3, dtype=rotmats.dtype, device=rotmats.device)
        feat = (rotmats[:, 1:] - eye).reshape(B, -1)  # (B, 9 (J-1))
        v_shaped = v_shaped + (feat @ posedirs).reshape(B, -1, 3)
    joints, A = forward_kinematics(rotmats, j_rest, parents, transl)
    if weights_dense is None:
        weights_dense = dense_weights(skin_indices, skin_weights, J)
    # blend the transforms with one matrix product, (V, J) x (J, B 12): no (B, V, K) gather
    T = (weights_dense.to(A.dtype) @ A.permute(1, 0, 2, 3).reshape(J, -1))
    T = T.reshape(-1, B, 3, 4).permute(1, 0, 2, 3)  # (B, V, 3, 4)
    verts = torch.einsum("bvrc,bvc->bvr", T[..., :3], v_shaped) + T[..., 3]
    return verts, joints


class BodyLayer(torch.nn.Module):
    """A body asset as buffers; ``forward(rotmats, betas, transl) -> (verts, joints)``."""

    def __init__(self, asset: BodyAsset, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.asset_name = asset.name
        self.parents = [int(p) for p in asset.parents]
        for key, arr in asset.lbs_arrays().items():
            if key == "parents" or arr is None:
                continue
            t = torch.from_numpy(arr.copy())
            self.register_buffer(key, t.to(dtype) if t.is_floating_point() else t.long(),
                                 persistent=False)
        if asset.posedirs is None:
            self.posedirs = None
        self.register_buffer("weights_dense", dense_weights(
            self.skin_indices, self.skin_weights, len(self.parents)), persistent=False)
        self.register_buffer("faces", torch.from_numpy(asset.faces.astype("int64")),
                             persistent=False)
        self.register_buffer("kp17_src", torch.from_numpy(asset.kp17_src.astype("int64")),
                             persistent=False)
        self.register_buffer("kp14_src", torch.from_numpy(asset.kp14_src.astype("int64")),
                             persistent=False)
        self.register_buffer("coarse_index", torch.from_numpy(asset.coarse_index.astype("int64")),
                             persistent=False)

    @property
    def num_joints(self) -> int:
        return len(self.parents)

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[2]

    def forward(self, rotmats: torch.Tensor, betas: torch.Tensor, transl: torch.Tensor):
        return lbs(rotmats, betas, transl, v_template=self.v_template, shapedirs=self.shapedirs,
                   j_template=self.j_template, j_shapedirs=self.j_shapedirs,
                   parents=self.parents, skin_indices=self.skin_indices,
                   skin_weights=self.skin_weights, posedirs=self.posedirs,
                   weights_dense=self.weights_dense)

    def keypoints(self, joints: torch.Tensor, verts: torch.Tensor, which: int = 17):
        """Evaluation keypoints ``(B, which, 3)``."""
        src = {17: self.kp17_src, 14: self.kp14_src}[which]
        return torch.cat([joints, verts], dim=1)[:, src]
