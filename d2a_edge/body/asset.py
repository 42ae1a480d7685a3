"""The generic LBS body asset: one ``.npz`` file, no pickle.

Frame: metres, the OpenCV / ROS optical convention (x right, y down, z forward). An identity
root rotation is an upright person facing a camera that looks along +z (the person faces -z).

Keys (V vertices, F faces, J joints, S shape coefficients, K = 8 skinning influences):

==================  ==============  =========================================================
key                 shape, dtype    meaning
==================  ==============  =========================================================
format_version      () int64        ``FORMAT_VERSION``
v_template          (V, 3) f32      rest vertices of the mean shape
faces               (F, 3) i32      triangles
shapedirs           (V, 3, S) f32   linear shape directions: v = v_template + shapedirs @ beta
j_template          (J, 3) f32      rest joints (bone heads) of the mean shape
j_shapedirs         (J, 3, S) f32   joint shape directions: j = j_template + j_shapedirs @ beta
posedirs            (9(J-1), 3V)    optional pose correctives (SMPL); absent for Anny
parents             (J,) i32        parent joint, -1 for the root (index 0); parent < child
skin_indices        (V, K) i32      skinning bones per vertex (padding: index 0, weight 0)
skin_weights        (V, K) f32      skinning weights, rows sum to 1
joint_names         (J,) str
kp17_src, kp14_src  (17,), (14,)    evaluation keypoints: index into concat(joints, vertices)
kp17_names, ...     str             their names (H36M-17 and LSP-14 orders)
coarse_index        (Vc,) i32       vertex-token sub-mesh: full-mesh vertex per coarse vertex
coarse_faces        (Fc, 3) i32     faces of the coarse sub-mesh (indices into coarse_index)
meta_json           () str          JSON: name, source, licence, shape space, fit errors
==================  ==============  =========================================================

Pose is a rotation per joint in world-aligned axes at the joint ("local-ref", like SMPL), and
``transl`` is the absolute position of the root joint (see ``lbs_numpy.lbs``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
NUM_INFLUENCES = 8

KP17_NAMES = ("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine",
              "thorax", "nose", "head_top", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder",
              "r_elbow", "r_wrist")  # Human3.6M order
KP14_NAMES = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
              "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top")  # LSP order

_REQUIRED = {  # key -> (ndim, dtype kind)
    "format_version": (0, "i"), "v_template": (2, "f"), "faces": (2, "i"),
    "shapedirs": (3, "f"), "j_template": (2, "f"), "j_shapedirs": (3, "f"), "parents": (1, "i"),
    "skin_indices": (2, "i"), "skin_weights": (2, "f"), "joint_names": (1, "U"),
    "kp17_src": (1, "i"), "kp17_names": (1, "U"), "kp14_src": (1, "i"), "kp14_names": (1, "U"),
    "coarse_index": (1, "i"), "coarse_faces": (2, "i"), "meta_json": (0, "U"),
}


MIRROR_TOLERANCE_M = 0.01  # Anny's rest joints mirror onto each other within 3.1 mm


def other_side(name: str) -> str:
    """"LeftArm" <-> "RightArm", "LHipJoint" <-> "RHipJoint"; other names unchanged."""
    for this, that in (("Left", "Right"), ("Right", "Left"), ("LHip", "RHip"), ("RHip", "LHip")):
        if name.startswith(this):
            return that + name[len(this):]
    return name


class BodyAssetError(ValueError):
    """A body asset file is missing, corrupt, foreign or inconsistent."""


@dataclasses.dataclass(frozen=True)
class BodyAsset:
    """All arrays of one body asset (see the module docstring for shapes)."""

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    j_template: np.ndarray
    j_shapedirs: np.ndarray
    parents: np.ndarray
    skin_indices: np.ndarray
    skin_weights: np.ndarray
    joint_names: tuple[str, ...]
    kp17_src: np.ndarray
    kp14_src: np.ndarray
    coarse_index: np.ndarray
    coarse_faces: np.ndarray
    meta: dict
    posedirs: np.ndarray | None = None

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def num_joints(self) -> int:
        return self.j_template.shape[0]

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[2]

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "unnamed"))

    def mesh_index(self, mesh="full") -> np.ndarray | None:
        """The vertices of an output mesh resolution: "full" (None: all of them), "coarse"
        (``coarse_index``, the vertex-token sub-mesh; its faces are ``mesh_faces("coarse")``)
        or an explicit 1-D integer array of vertex indices (in [0, V))."""
        if isinstance(mesh, str):
            if mesh == "full":
                return None
            if mesh == "coarse":
                return np.asarray(self.coarse_index, np.int64)
            raise ValueError(f"mesh must be 'full', 'coarse' or an index array, got {mesh!r}")
        index = np.asarray(mesh)
        if index.ndim != 1 or index.size == 0 or index.dtype.kind not in "iu":
            raise ValueError(f"a vertex index array must be 1-D, non-empty and integer, got "
                             f"shape {index.shape} and dtype {index.dtype}")
        if index.min() < 0 or index.max() >= self.num_vertices:
            raise ValueError(f"vertex indices must be in [0, {self.num_vertices}), got "
                             f"{int(index.min())}..{int(index.max())}")
        return index.astype(np.int64)

    def mesh_faces(self, mesh="full") -> np.ndarray | None:
        """Faces of ``mesh_index(mesh)``'s vertices: ``faces``, ``coarse_faces``, or None for
        an index array (no triangulation is known for an arbitrary vertex subset)."""
        self.mesh_index(mesh)  # validates
        if isinstance(mesh, str):
            return self.faces if mesh == "full" else self.coarse_faces
        return None

    def lbs_arrays(self) -> dict[str, np.ndarray | None]:
        """The keyword arguments of ``lbs_numpy.lbs`` / ``lbs_torch.lbs``."""
        return dict(v_template=self.v_template, shapedirs=self.shapedirs,
                    j_template=self.j_template, j_shapedirs=self.j_shapedirs,
                    parents=self.parents, skin_indices=self.skin_indices,
                    skin_weights=self.skin_weights, posedirs=self.posedirs)

    def mirror_joints(self) -> np.ndarray:
        """(J,) index of each joint's counterpart on the other side of the body ("LeftArm" <->
        "RightArm", spine and head joints their own), for mirroring poses left-right. Raises
        ``BodyAssetError`` unless the rest skeleton is left-right symmetric (x -> -x) within
        ``MIRROR_TOLERANCE_M``: a mirrored pose is only the mirror image on such a body."""
        names = list(self.joint_names)
        perm = np.array([names.index(other_side(n)) if other_side(n) in names else i
                         for i, n in enumerate(names)])
        mirrored = self.j_template[perm] * np.array([-1.0, 1.0, 1.0])
        gap = float(np.abs(mirrored - self.j_template).max())
        if gap > MIRROR_TOLERANCE_M:
            raise BodyAssetError(f"body {self.name!r} is not left-right symmetric: its mirrored "
                                 f"rest joints are up to {gap * 1000:.1f} mm off (joint names "
                                 f"need Left/Right or L/R pairs)")
        return perm

    def keypoints(self, joints: np.ndarray, vertices: np.ndarray, which: int = 17) -> np.ndarray:
        """Evaluation keypoints ``(..., which, 3)`` from joints ``(..., J, 3)`` and vertices."""
        src = {17: self.kp17_src, 14: self.kp14_src}.get(which)
        if src is None:
            raise ValueError(f"keypoint set must be 14 or 17, got {which!r}")
        return np.concatenate([joints, vertices], axis=-2)[..., src, :]

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        d = {
            "format_version": np.array(FORMAT_VERSION, np.int64),
            "v_template": self.v_template.astype(np.float32),
            "faces": self.faces.astype(np.int32),
            "shapedirs": self.shapedirs.astype(np.float32),
            "j_template": self.j_template.astype(np.float32),
            "j_shapedirs": self.j_shapedirs.astype(np.float32),
            "parents": self.parents.astype(np.int32),
            "skin_indices": self.skin_indices.astype(np.int32),
            "skin_weights": self.skin_weights.astype(np.float32),
            "joint_names": np.array(self.joint_names, dtype=np.str_),
            "kp17_src": self.kp17_src.astype(np.int32), "kp17_names": np.array(KP17_NAMES),
            "kp14_src": self.kp14_src.astype(np.int32), "kp14_names": np.array(KP14_NAMES),
            "coarse_index": self.coarse_index.astype(np.int32),
            "coarse_faces": self.coarse_faces.astype(np.int32),
            "meta_json": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self.posedirs is not None:
            d["posedirs"] = self.posedirs.astype(np.float32)
        return d


def save_body_asset(asset: BodyAsset, path: str | os.PathLike) -> Path:
    """Validate and write ``asset`` atomically (temp file + rename); returns the path."""
    path = Path(path)
    arrays = asset.to_npz_dict()
    _validate(arrays, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_body_asset(path: str | os.PathLike) -> BodyAsset:
    """Load and validate a body asset ``.npz``; raises ``BodyAssetError`` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise BodyAssetError(f"body asset not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy renamed
            raise ValueError("an .npy array, not an .npz archive")
        with z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise BodyAssetError(f"{path} is not a readable .npz body asset ({e})") from e
    _validate(arrays, str(path))
    return BodyAsset(
        v_template=arrays["v_template"], faces=arrays["faces"], shapedirs=arrays["shapedirs"],
        j_template=arrays["j_template"], j_shapedirs=arrays["j_shapedirs"],
        parents=arrays["parents"], skin_indices=arrays["skin_indices"],
        skin_weights=arrays["skin_weights"],
        joint_names=tuple(str(n) for n in arrays["joint_names"]),
        kp17_src=arrays["kp17_src"], kp14_src=arrays["kp14_src"],
        coarse_index=arrays["coarse_index"], coarse_faces=arrays["coarse_faces"],
        meta=json.loads(str(arrays["meta_json"])), posedirs=arrays.get("posedirs"),
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (body assets, model artifacts, checkpoints), read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _validate(a: dict[str, np.ndarray], where: str) -> None:
    missing = sorted(set(_REQUIRED) - set(a))
    if missing:
        raise BodyAssetError(f"{where}: not a d2a-edge body asset, missing keys {missing}")
    for key, (ndim, kind) in _REQUIRED.items():
        arr = a[key]
        if arr.ndim != ndim or arr.dtype.kind not in (kind, "u" if kind == "i" else kind):
            raise BodyAssetError(f"{where}: key {key!r} has shape {arr.shape} dtype {arr.dtype}, "
                                 f"expected {ndim}-D of kind {kind!r}")
    if int(a["format_version"]) != FORMAT_VERSION:
        raise BodyAssetError(f"{where}: format_version {int(a['format_version'])}, this d2a-edge "
                             f"reads version {FORMAT_VERSION}; rebuild it with `d2a-body build`")
    V, J = a["v_template"].shape[0], a["j_template"].shape[0]
    S = a["shapedirs"].shape[2]
    kp, coarse, cfaces = np.concatenate([a["kp17_src"], a["kp14_src"]]), a["coarse_index"], \
        a["coarse_faces"]
    checks = [  # in order, each evaluated only after the ones before it held
        (lambda: a["v_template"].shape == (V, 3), "v_template must be (V, 3)"),
        (lambda: a["shapedirs"].shape[:2] == (V, 3), "shapedirs must be (V, 3, S)"),
        (lambda: a["j_template"].shape == (J, 3), "j_template must be (J, 3)"),
        (lambda: a["j_shapedirs"].shape == (J, 3, S), "j_shapedirs must be (J, 3, S)"),
        (lambda: a["parents"].shape == (J,), "parents must be (J,)"),
        (lambda: J > 0 and a["parents"][0] == -1, "parents[0] must be -1 (root first)"),
        (lambda: bool(np.all(a["parents"][1:] < np.arange(1, J)))
         and bool(np.all(a["parents"][1:] >= 0)),
         "parents must be topologically sorted (0 <= parent < child)"),
        (lambda: a["skin_indices"].shape == (V, NUM_INFLUENCES) == a["skin_weights"].shape,
         f"skin_indices / skin_weights must be (V, {NUM_INFLUENCES})"),
        (lambda: a["skin_indices"].size == 0 or (a["skin_indices"].min() >= 0
                                                 and a["skin_indices"].max() < J),
         "skin_indices out of range"),
        (lambda: not np.any(a["skin_weights"] < 0), "skin_weights must not be negative"),
        (lambda: np.allclose(a["skin_weights"].sum(1), 1.0, atol=1e-4),
         "skin_weights rows must sum to 1"),
        (lambda: a["faces"].shape[1] == 3 and a["faces"].size > 0 and a["faces"].min() >= 0
         and a["faces"].max() < V, "faces must be (F, 3) indices < V"),
        (lambda: a["joint_names"].shape == (J,), "joint_names must have J entries"),
        (lambda: a["kp17_src"].shape == (17,) and a["kp14_src"].shape == (14,),
         "keypoint sets 17/14"),
        (lambda: kp.min() >= 0 and kp.max() < J + V, "keypoint source out of range"),
        (lambda: coarse.size > 0 and coarse.min() >= 0 and coarse.max() < V,
         "coarse_index out of range"),
        (lambda: cfaces.ndim == 2 and cfaces.shape[1] == 3 and (
            cfaces.size == 0 or (cfaces.min() >= 0 and cfaces.max() < len(coarse))),
         "coarse_faces must be (F, 3) indices into coarse_index"),
        (lambda: "posedirs" not in a or (a["posedirs"].shape == (9 * (J - 1), 3 * V)
                                         and a["posedirs"].dtype.kind == "f"),
         "posedirs must be float (9 (J-1), 3 V)"),
    ]
    for ok, msg in checks:
        if not ok():
            raise BodyAssetError(f"{where}: inconsistent body asset: {msg}")
    for key in ("v_template", "shapedirs", "j_template", "j_shapedirs", "skin_weights",
                "posedirs"):
        if key in a and not np.all(np.isfinite(a[key])):
            raise BodyAssetError(f"{where}: key {key!r} holds NaN or inf")
    try:
        meta = json.loads(str(a["meta_json"]))
    except json.JSONDecodeError as e:
        raise BodyAssetError(f"{where}: meta_json is not JSON ({e})") from e
    if not isinstance(meta, dict):
        raise BodyAssetError(f"{where}: meta_json must be a JSON object")
