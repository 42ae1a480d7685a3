"""A model bundle: ``manifest.json`` + ONNX / TensorRT artifacts + the body asset, no training code.

Written by ``d2a-export``; the default bundle ships inside the package (``d2a_edge/models``).
Loading checks the manifest version, the required inputs/outputs and the body asset's hash, so a
file from another model version fails with a clear message instead of producing garbage.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from d2a_edge.body import BodyAsset, file_sha256, load_body_asset

MANIFEST_VERSION = 1
REQUIRED_OUTPUTS = ("pose", "shape", "translation", "joint_sigma")
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "edge-s"


def calibrated_sigma(cal: dict | None, sigma) -> np.ndarray:
    """``a · σ^p`` (float32) for a manifest's ``sigma_calibration`` ``{"a", "p"}``; ``None``
    is the identity. σ in metres, any shape."""
    cal = cal or {"a": 1.0, "p": 1.0}
    sigma = np.maximum(np.asarray(sigma, np.float32), 0.0)
    return (np.float32(cal["a"]) * sigma ** np.float32(cal["p"])).astype(np.float32)


class BundleError(ValueError):
    """A model bundle is missing, corrupt, or from another d2a-edge / model version."""


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    root: Path
    manifest: dict
    asset: BodyAsset

    @property
    def image_size(self) -> int:
        return int(self.manifest["inputs"]["image"]["shape"][-1])

    @property
    def sigma_reference(self) -> float:
        """The model's median mean joint σ (m, calibrated) on in-distribution validation crops,
        measured by d2a-export; ``HumanMesh.score`` is relative to it (0.05 m for older
        bundles)."""
        return float(self.manifest.get("sigma_reference_m", 0.05))

    def calibrate_sigma(self, sigma):
        """The model's raw joint σ (metres, any shape) mapped to ``a · σ^p``, fitted by
        d2a-export so that on its validation renders the mean pelvis-relative joint error at a
        given σ is about σ (``manifest["sigma_calibration"]``; the identity for older
        bundles)."""
        return calibrated_sigma(self.manifest.get("sigma_calibration"), sigma)

    @property
    def name(self) -> str:
        return str(self.manifest.get("model", "unnamed"))

    def artifact(self, precision: str, fmt: str) -> Path | None:
        """Path of the artifact of this precision and format ('onnx' | 'trt'); None when the
        manifest lists none. A listed file that is missing, or whose size or sha256 differs
        from the manifest's (another export's file, a truncated copy), is a ``BundleError``."""
        art = self.manifest["artifacts"].get(precision if fmt == "onnx" else f"{precision}-trt")
        if art is None or art.get("format") != fmt:
            return None
        path = self.root / art["file"]
        if not path.is_file():
            raise BundleError(f"{self.root / 'manifest.json'} lists the {precision} {fmt} model "
                              f"{art['file']}, but the file is missing from the bundle")
        if "bytes" in art and path.stat().st_size != art["bytes"] or \
                "sha256" in art and file_sha256(path) != art["sha256"]:
            raise BundleError(f"{path} does not match the manifest's size and sha256 (a file "
                              "from another export, or a truncated copy): re-export the bundle")
        return path

    def checkpoint(self) -> Path | None:
        """The PyTorch checkpoint of ``backend="torch"``, when it exists here: the manifest's
        ``checkpoint`` (relative to the bundle), else ``source_checkpoint``, the run or
        checkpoint d2a-export exported (an absolute path; found on the machine it ran on)."""
        for key in ("checkpoint", "source_checkpoint"):
            ckpt = self.manifest.get(key)
            if isinstance(ckpt, str) and ckpt and (self.root / ckpt).exists():
                return self.root / ckpt
        return None


def load_bundle(path: str | os.PathLike | None = None) -> ModelBundle:
    """Load the bundle in directory ``path`` (default: the bundled ``edge-s`` model)."""
    root = Path(path) if path is not None else DEFAULT_MODEL
    if root.is_file() and root.name == "manifest.json":
        root = root.parent
    mpath = root / "manifest.json"
    if not mpath.is_file():
        hint = (" (the default model is not built into this checkout yet: run d2a-export)"
                if path is None else "")
        raise BundleError(f"no manifest.json in {root}: not a d2a-edge model bundle{hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{mpath} is corrupt ({e})") from e
    _check_manifest(manifest, mpath)
    body = root / manifest["body"]["file"]
    if not body.is_file():
        raise BundleError(f"{mpath}: body asset {body.name} is missing from the bundle")
    if file_sha256(body) != manifest["body"]["sha256"]:
        raise BundleError(f"{body} does not match the manifest's sha256: the bundle mixes files "
                          "from different exports; re-export it")
    return ModelBundle(root=root, manifest=manifest, asset=load_body_asset(body))


def _check_manifest(m: dict, where: Path) -> None:
    if isinstance(m, dict) and m.get("format") == "d2a-edge-synthetic":
        raise BundleError(f"{where.parent} is a synthetic dataset (d2a-data), not a model "
                          "bundle (d2a-export) or a training run")
    if not isinstance(m, dict) or m.get("manifest_version") != MANIFEST_VERSION:
        got = m.get("manifest_version") if isinstance(m, dict) else None
        raise BundleError(f"{where}: manifest_version {got!r}, this d2a-edge reads "
                          f"{MANIFEST_VERSION}; re-export the model with this version")
    missing = [k for k in ("inputs", "outputs", "body", "artifacts") if k not in m]
    if missing:
        raise BundleError(f"{where}: manifest lacks {missing}")
    try:
        shape = m["inputs"]["image"]["shape"]
        ok = len(shape) == 4 and int(shape[-1]) > 0
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise BundleError(f"{where}: inputs.image.shape must be [N, 3, size, size]")
    if not (isinstance(m["body"], dict) and all(isinstance(m["body"].get(k), str)
                                                for k in ("file", "sha256"))):
        raise BundleError(f"{where}: body must name its file and sha256")
    arts = m["artifacts"]
    if not (isinstance(arts, dict) and arts and all(
            isinstance(a, dict) and isinstance(a.get("file"), str) for a in arts.values())):
        raise BundleError(f"{where}: artifacts must map each precision to its file")
    outs = [o for o in REQUIRED_OUTPUTS if o not in m["outputs"]]
    if outs:
        raise BundleError(f"{where}: model outputs lack {outs} (another model version?)")
    ref = m.get("sigma_reference_m", 0.05)
    if isinstance(ref, bool) or not isinstance(ref, (int, float)) or not math.isfinite(ref) \
            or ref <= 0:
        raise BundleError(f"{where}: sigma_reference_m must be a positive number (re-export "
                          f"the model), got {ref!r}")
    cal = m.get("sigma_calibration")
    if cal is not None:
        try:
            ok = all(math.isfinite(float(cal[k])) and float(cal[k]) > 0 for k in ("a", "p"))
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise BundleError(f"{where}: sigma_calibration must hold positive numbers a and p "
                              f"(re-export the model), got {cal!r}")
