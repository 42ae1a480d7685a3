"""Linear blend skinning in torch: THE reference implementation (the oracle).

Same signature and conventions as ``lbs_numpy.lbs``; device and dtype come from the inputs.
``BodyLayer`` holds a body asset as buffers for training. Imports torch: never imported by
``d2a_edge/__init__``.
"""
from __future__ import annotations

import functools

import torch

from d2a_edge.body.asset import BodyAsset


@functools.lru_cache(maxsize=16)
def _fk_levels(parents: tuple[int, ...], device: torch.device):
    """The kinematic tree by depth: ``(order, inverse, parent_of, levels)``. ``order`` lists
    the joints level by level (root first), ``inverse`` maps back, ``parent_of`` is each listed
    joint's parent (0 for the root); each level after the root is ``(start, stop, parent_pos)``:
    its slice of ``order`` and each joint's parent as a position in the previous level's slice.
    Index tensors live on ``device``."""
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        if not 0 <= parents[j] < j:
            raise ValueError(f"parents must precede their children; joint {j} has {parents[j]}")
        depth[j] = depth[parents[j]] + 1
    order = sorted(range(len(parents)), key=lambda j: depth[j])  # stable: ties keep index order
    pos = {j: i for i, j in enumerate(order)}
    levels, start = [], 1
    for d in range(1, max(depth) + 1):
        stop = start + depth.count(d)
        prev = start - depth.count(d - 1)  # the previous level's first position
        parent_pos = [pos[parents[order[i]]] - prev for i in range(start, stop)]
        levels.append((start, stop, torch.tensor(parent_pos, device=device)))
        start = stop
    inverse = [pos[j] for j in range(len(parents))]
    as_t = lambda x: torch.tensor(x, device=device)  # noqa: E731
    return as_t(order), as_t(inverse), as_t([max(parents[j], 0) for j in order]), levels


def forward_kinematics(rotmats: torch.Tensor, joints: torch.Tensor, parents,
                       transl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posed joints ``(B, J, 3)`` and skinning transforms ``(B, J, 3, 4)``.

    One step per level of the tree (8 for Anny's 25 joints), not per joint: on a GPU every op
    is a kernel launch, and a training step of this small model may be bound by launches."""
    order, inverse, parent_of, levels = _fk_levels(tuple(int(p) for p in parents),
                                                   rotmats.device)
    rot_o = rotmats[:, order]  # (B, J, 3, 3) in level order
    offset = (joints[:, order] - joints[:, parent_of]).unsqueeze(-1)  # (B, J, 3, 1)
    rots, poss = [rot_o[:, :1]], [transl[:, None]]
    for start, stop, parent_pos in levels:
        r_parent = rots[-1][:, parent_pos]  # (B, n, 3, 3)
        rots.append(r_parent @ rot_o[:, start:stop])
        poss.append(poss[-1][:, parent_pos] + (r_parent @ offset[:, start:stop]).squeeze(-1))
    rot = torch.cat(rots, 1)[:, inverse]  # (B, J, 3, 3)
    pos = torch.cat(poss, 1)[:, inverse]  # (B, J, 3)
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
