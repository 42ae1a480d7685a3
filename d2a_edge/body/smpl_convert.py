"""SMPL / SMPL-X model files (user-supplied, never bundled) -> d2a-edge body asset.

The official ``.pkl`` files hold chumpy objects and scipy sparse matrices, and chumpy does not
import on current numpy. ``safe_load_pickle`` reads them with a restricted unpickler: an
allow-list that maps chumpy arrays to numpy and refuses every other global (the answer to
"a pickle from an untrusted file"). ``.npz`` model files are read with ``allow_pickle=False``.
"""
from __future__ import annotations

import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from d2a_edge.body.asset import NUM_INFLUENCES, BodyAsset, BodyAssetError, _validate
from d2a_edge.body.keypoints import farthest_points, vertex_keypoints

# SMPL (Y up, faces +Z) -> optical frame (x right, y down, z forward).
SMPL_TO_CAM = np.diag([1.0, -1.0, -1.0])
SMPL_JOINTS = ("pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle",
               "r_ankle", "spine3", "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head",
               "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_wrist", "r_wrist")
KP17_SMPL = ("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine1",
             "neck", "@nose", "@head_top", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder",
             "r_elbow", "r_wrist")
KP14_SMPL = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
             "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "@head_top")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
    ("_codecs", "encode"),  # protocol-2 bytes
} | {(m, n) for m in ("__builtin__", "builtins") for n in ("set", "frozenset", "list", "tuple",
                                                           "dict", "slice", "complex")}
_SPARSE = {"csc_matrix", "csr_matrix", "coo_matrix"}


class _ChumpyArray:
    """Stands in for ``chumpy.ch.Ch`` during unpickling; keeps only its value."""

    def __setstate__(self, state):
        self.value = next((np.asarray(state[k]) for k in ("x", "r", "a")
                           if isinstance(state, dict) and k in state), None)
        if self.value is None:
            raise BodyAssetError("chumpy object without an array value ('x') in the pickle")


class _SparseStub:
    """Stands in for a scipy sparse matrix; ``dense()`` rebuilds it from its arrays."""

    kind = ""

    def __setstate__(self, state):
        self.state = state

    def dense(self) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape", s.get("shape")))
        out = np.zeros(shape, np.float64)
        if self.kind == "coo_matrix":
            out[s["row"], s["col"]] = s["data"]
            return out
        ptr, idx, data = s["indptr"], s["indices"], s["data"]
        for k in range(len(ptr) - 1):  # k: column (csc) or row (csr)
            sl = slice(ptr[k], ptr[k + 1])
            if self.kind == "csc_matrix":
                out[idx[sl], k] = data[sl]
            else:
                out[k, idx[sl]] = data[sl]
        return out


_SPARSE_STUBS = {n: type(n, (_SparseStub,), {"kind": n}) for n in _SPARSE}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module.startswith("chumpy"):
            return _ChumpyArray
        if module.startswith("scipy.sparse") and name in _SPARSE:
            return _SPARSE_STUBS[name]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a model "
                                     "file (only numpy, scipy.sparse and chumpy arrays are allowed)")


def _plain(obj):
    if isinstance(obj, _ChumpyArray):
        return obj.value
    if isinstance(obj, _SparseStub):
        return obj.dense()
    return obj


def safe_load_pickle(path: str | os.PathLike) -> dict:
    """Read an SMPL-family ``.pkl`` without executing anything but array reconstruction."""
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise BodyAssetError(f"{path}: not a readable SMPL model pickle ({e})") from e
    if not isinstance(data, dict):
        raise BodyAssetError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
    return {k: _plain(v) for k, v in data.items()}


def read_smpl_file(path: str | os.PathLike) -> dict:
    """The raw arrays of an SMPL/SMPL-X ``.pkl`` or ``.npz`` model file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SMPL model file not found: {path} (download it from the "
                                "SMPL/SMPL-X website after accepting its licence)")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as e:
            raise BodyAssetError(f"{path}: this .npz needs pickle; use the .pkl file") from e
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise BodyAssetError(f"{path} is not a readable .npz model file ({e})") from e
    return safe_load_pickle(path)


def _rotate_posedirs(posedirs: np.ndarray, M: np.ndarray) -> np.ndarray:
    """(V, 3, P) SMPL posedirs -> (P, 3V) for poses conjugated by M (R' = M R M^T)."""
    V, _, P = posedirs.shape
    K = np.kron(M, M)  # row-major vec(M A M^T) = kron(M, M) vec(A)
    pd = posedirs.reshape(V * 3, P).T.reshape(P // 9, 9, V * 3)  # (J-1, 9, 3V)
    pd = np.einsum("ab,jbx->jax", K, pd).reshape(P, V, 3)
    return (pd @ M.T).reshape(P, 3 * V)


def convert_smpl(path: str | os.PathLike, kind: str = "smpl", num_betas: int = 10) -> BodyAsset:
    """Convert a user's SMPL (24 joints) or SMPL-X (55 joints) file into a ``BodyAsset``,
    validated like a loaded asset; a damaged file is a ``BodyAssetError``."""
    try:
        asset = _convert(path, kind, num_betas)
        _validate(asset.to_npz_dict(), str(path))
    except (ValueError, IndexError, TypeError) as e:
        if isinstance(e, BodyAssetError):
            raise
        raise BodyAssetError(f"{path}: not a consistent {kind} model file ({e})") from e
    return asset


def _convert(path, kind: str, num_betas: int) -> BodyAsset:
    d = read_smpl_file(path)
    need = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")
    missing = [k for k in need if k not in d]
    if missing:
        raise BodyAssetError(f"{path}: not an SMPL-family model file, missing keys {missing}")
    M = SMPL_TO_CAM
    v = np.asarray(d["v_template"], np.float64)
    sd = np.asarray(d["shapedirs"], np.float64)[:, :, :num_betas]
    jr = np.asarray(d["J_regressor"], np.float64)
    w = np.asarray(d["weights"], np.float64)
    parents = np.asarray(d["kintree_table"], np.int64)[0].copy()
    parents[0] = -1
    idx = np.argsort(-w, axis=1)[:, :NUM_INFLUENCES]
    sw = np.take_along_axis(w, idx, 1)
    v_cam = v @ M.T
    names = SMPL_JOINTS + tuple(f"joint{j}" for j in range(len(SMPL_JOINTS), len(parents)))
    return BodyAsset(
        v_template=v_cam, faces=np.asarray(d["f"], np.int32),
        shapedirs=np.einsum("ab,vbs->vas", M, sd), j_template=(jr @ v) @ M.T,
        j_shapedirs=np.einsum("ab,jv,vbs->jas", M, jr, sd), parents=parents,
        skin_indices=idx, skin_weights=sw / np.where(sw.sum(1, keepdims=True) > 0,
                                                     sw.sum(1, keepdims=True), np.nan),
        joint_names=names[:len(parents)],
        kp17_src=vertex_keypoints(KP17_SMPL, list(names), v_cam),
        kp14_src=vertex_keypoints(KP14_SMPL, list(names), v_cam),
        coarse_index=farthest_points(v_cam, 431), coarse_faces=np.zeros((0, 3), np.int32),
        posedirs=_rotate_posedirs(np.asarray(d["posedirs"], np.float64), M),
        meta={"name": f"{kind}-{Path(path).stem}", "source": kind, "num_betas": num_betas,
              "licence": "SMPL-family model licence of the user's file (not redistributable)",
              "frame": "x right, y down, z forward (metres); body faces -z"})
