"""``load_body``: the one way to get a body asset, and ``BodyModel``: numpy skinning of it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from d2a_edge.body import lbs_numpy
from d2a_edge.body.asset import BodyAsset, load_body_asset

BODY_CHOICES = ("anny", "smpl", "smplx")
ROTATION_TOL = 1e-2  # BodyModel: |R^T R - I| allowed (an FP16 engine's rotations are ~1e-3 off)


def cache_dir() -> Path:
    """Where converted assets are cached: ``$D2A_EDGE_CACHE`` or ``~/.cache/d2a_edge``."""
    return Path(os.environ.get("D2A_EDGE_CACHE", Path.home() / ".cache" / "d2a_edge"))


def load_body(body: str | os.PathLike = "anny", path: str | os.PathLike | None = None,
              **build_options) -> BodyAsset:
    """A body asset from an ``.npz`` path, ``"anny"`` (cached build) or ``"smpl"``/``"smplx"``.

    ``path`` is the user's SMPL/SMPL-X model file (required for those bodies, never bundled).
    ``build_options`` go to the Anny converter (``topology``, ``num_betas``, ``all_ages``).
    """
    if body not in BODY_CHOICES and (str(body).endswith(".npz") or Path(body).is_file()):
        return load_body_asset(body)  # the names first: a file called "anny" is not the body
    if body == "anny":
        from d2a_edge.body.anny_convert import cached_anny_asset
        return cached_anny_asset(**build_options)
    if body in ("smpl", "smplx"):
        if path is None:
            raise ValueError(f"body {body!r} needs path= to your {body.upper()} model file "
                             "(e.g. SMPL_NEUTRAL.pkl); d2a-edge does not bundle it")
        from d2a_edge.body.smpl_convert import convert_smpl
        return convert_smpl(path, kind=body)
    raise ValueError(f"unknown body {str(body)!r}: give one of {BODY_CHOICES} or a .npz path")


class BodyModel:
    """Numpy LBS over a ``BodyAsset``: ``model(rotmats, betas, transl) -> (verts, joints)``."""

    def __init__(self, asset: BodyAsset, mesh="full"):
        """``mesh``: the output resolution (``BodyAsset.mesh_index``): "full", "coarse" or a
        vertex index array; only those vertices are skinned (joints are unchanged)."""
        self.asset = asset
        self._arrays = asset.lbs_arrays()
        index = asset.mesh_index(mesh)
        if index is not None:
            for name in ("v_template", "shapedirs", "skin_indices", "skin_weights", "posedirs"):
                if self._arrays[name] is not None:
                    a = self._arrays[name]  # posedirs (P, V * 3): columns per vertex
                    self._arrays[name] = (a.reshape(len(a), -1, 3)[:, index].reshape(len(a), -1)
                                          if name == "posedirs" else a[index])
        a = self._arrays
        a.update(lbs_numpy.precompute(a["skin_indices"], a["skin_weights"], a["shapedirs"],
                                      asset.num_joints))

    def __call__(self, rotmats: np.ndarray, betas: np.ndarray | None = None,
                 transl: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """rotmats: (B, J, 3, 3); betas: (B, S) or None (mean shape); transl: (B, 3) or None."""
        rotmats = np.asarray(rotmats)
        if rotmats.ndim != 4:
            raise ValueError(f"rotmats must be (B, J, 3, 3), got shape {rotmats.shape}")
        B, dt = rotmats.shape[0], rotmats.dtype
        if dt.kind != "f":
            raise ValueError(f"rotmats must be floating point, got dtype {dt}")
        if any(np.iscomplexobj(x) for x in (betas, transl) if x is not None):
            raise ValueError("betas and transl must be real numbers")
        betas = np.zeros((B, self.asset.num_betas), dt) if betas is None else np.asarray(betas, dt)
        transl = np.zeros((B, 3), dt) if transl is None else np.asarray(transl, dt)
        if rotmats.shape[1:] != (self.asset.num_joints, 3, 3):  # lbs names the shape problem
            return lbs_numpy.lbs(rotmats, betas, transl, **self._arrays)
        for name, x in (("rotmats", rotmats), ("betas", betas), ("transl", transl)):
            if not np.all(np.isfinite(x)):
                raise ValueError(f"{name} holds NaN or inf")
        if rotmats.size:
            R = rotmats.reshape(-1, 3, 3).astype(np.float64)
            off = np.abs(R.transpose(0, 2, 1) @ R - np.eye(3)).max()
            if off > ROTATION_TOL or np.linalg.det(R).min() <= 0:
                raise ValueError(f"rotmats must be rotations (R^T R = I within {ROTATION_TOL}, "
                                 f"det > 0); the worst is off by {off:.3g}")
        return lbs_numpy.lbs(rotmats, betas, transl, **self._arrays)

    def rest(self, batch: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Mean shape in the rest pose with the root at the origin."""
        return self(np.broadcast_to(np.eye(3, dtype=np.float32),
                                    (batch, self.asset.num_joints, 3, 3)).copy())
