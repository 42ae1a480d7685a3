"""Linear blend skinning in numpy: the runtime twin of ``lbs_torch.lbs`` (same signature).

Pose convention ("local-ref", as SMPL): ``rotmats[:, j]`` rotates joint j's subtree about the
joint in world-aligned axes, composed down the chain; the root joint lands at ``transl``.
"""
from __future__ import annotations

import numpy as np


def _check_inputs(rotmats: np.ndarray, betas: np.ndarray, transl: np.ndarray, J: int, S: int):
    rotmats, betas, transl = np.asarray(rotmats), np.asarray(betas), np.asarray(transl)
    if rotmats.ndim != 4 or rotmats.shape[1:] != (J, 3, 3):
        raise ValueError(f"rotmats must be (B, {J}, 3, 3), got {rotmats.shape}")
    B = rotmats.shape[0]
    if betas.shape != (B, S):
        raise ValueError(f"betas must be (B={B}, S={S}), got {betas.shape}")
    if transl.shape != (B, 3):
        raise ValueError(f"transl must be (B={B}, 3), got {transl.shape}")
    return rotmats, betas, transl


def forward_kinematics(rotmats: np.ndarray, joints: np.ndarray, parents: np.ndarray,
                       transl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posed joints ``(B, J, 3)`` and skinning transforms ``(B, J, 3, 4)``.

    rotmats: (B, J, 3, 3); joints: (B, J, 3) rest joints; parents: (J,); transl: (B, 3).
    """
    B, J = joints.shape[:2]
    rot = np.empty((B, J, 3, 3), dtype=rotmats.dtype)
    pos = np.empty((B, J, 3), dtype=rotmats.dtype)
    rot[:, 0], pos[:, 0] = rotmats[:, 0], transl
    for j in range(1, J):
        p = parents[j]
        rot[:, j] = rot[:, p] @ rotmats[:, j]
        offset = (joints[:, j] - joints[:, p])[..., None]  # (B, 3, 1)
        pos[:, j] = pos[:, p] + (rot[:, p] @ offset)[..., 0]
    t = pos - (rot @ joints[..., None])[..., 0]  # maps rest joint j to posed joint j
    return pos, np.concatenate([rot, t[..., None]], axis=-1)


def dense_weights(skin_indices: np.ndarray, skin_weights: np.ndarray, J: int) -> np.ndarray:
    """(V, J) skinning matrix from the sparse (V, K) indices and weights (duplicates summed)."""
    W = np.zeros((skin_indices.shape[0], J), skin_weights.dtype)
    np.add.at(W, (np.arange(len(W))[:, None], skin_indices), skin_weights)
    return W


def precompute(skin_indices, skin_weights, shapedirs, J: int) -> dict[str, np.ndarray]:
    """Layouts ``lbs`` can reuse across calls: ``weights_t`` (J, V), ``shapedirs_t`` (S, 3 V)."""
    V, _, S = shapedirs.shape
    return {"weights_t": np.ascontiguousarray(dense_weights(skin_indices, skin_weights, J).T),
            "shapedirs_t": np.ascontiguousarray(shapedirs.transpose(2, 1, 0).reshape(S, 3 * V))}


def lbs(rotmats, betas, transl, *, v_template, shapedirs, j_template, j_shapedirs, parents,
        skin_indices, skin_weights, posedirs=None, weights_t=None, shapedirs_t=None
        ) -> tuple[np.ndarray, np.ndarray]:
    """Posed vertices ``(B, V, 3)`` and joints ``(B, J, 3)``, dtype of ``rotmats``.

    rotmats: (B, J, 3, 3); betas: (B, S); transl: (B, 3) root joint position.
    Body arrays as in ``d2a_edge.body.asset`` (``BodyAsset.lbs_arrays()``); ``weights_t`` and
    ``shapedirs_t`` may be passed from ``precompute`` to save their construction per call.
    Computed in a coordinate-major layout (B, 3, V): the returned vertices are a transposed
    view of a contiguous (B, 3, V) array (``verts.transpose(0, 2, 1)`` gives it back, no copy).
    """
    J, (V, _, S) = j_template.shape[0], shapedirs.shape
    rotmats, betas, transl = _check_inputs(rotmats, betas, transl, J, S)
    dt = rotmats.dtype
    B = rotmats.shape[0]
    if weights_t is None or shapedirs_t is None:
        pre = precompute(skin_indices, skin_weights, shapedirs, J)
        weights_t, shapedirs_t = pre["weights_t"], pre["shapedirs_t"]
    v_t = (betas.astype(dt) @ shapedirs_t.astype(dt, copy=False)).reshape(B, 3, V)
    v_t += v_template.T.astype(dt)  # (B, 3, V) shaped rest vertices
    j_rest = j_template.astype(dt) + np.einsum("jcs,bs->bjc", j_shapedirs.astype(dt), betas)
    if posedirs is not None:
        feat = (rotmats[:, 1:] - np.eye(3, dtype=dt)).reshape(B, -1)  # (B, 9 (J-1))
        v_t += (feat @ posedirs.astype(dt)).reshape(B, V, 3).transpose(0, 2, 1)
    joints, A = forward_kinematics(rotmats, j_rest, parents, transl)
    A = A.reshape(B, J, 12).transpose(0, 2, 1).reshape(B * 12, J)  # (12 B, J)
    T = (A @ weights_t.astype(dt, copy=False)).reshape(B, 3, 4, V)  # one GEMM blends all bones
    verts_t = (T[:, :, 0] * v_t[:, 0:1] + T[:, :, 1] * v_t[:, 1:2]
               + T[:, :, 2] * v_t[:, 2:3] + T[:, :, 3])  # (B, 3, V)
    return verts_t.transpose(0, 2, 1), joints
