"""``manifest.json``: everything the SDK needs to run an exported bundle without training code."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

MANIFEST_VERSION = 1


def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("d2a-edge", "torch", "onnx", "onnxruntime", "onnxslim", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build_manifest(*, model_name: str, config: dict, image_size: int, batch: int | None,
                   output_shapes: dict[str, list], body_file: str, body_sha256: str,
                   joint_names: list[str], artifacts: dict[str, dict], opset: int) -> dict:
    """The manifest dict. ``artifacts`` maps precision -> {file, format, sha256, bytes, parity}."""
    b = batch if batch else "batch"
    return {
        "manifest_version": MANIFEST_VERSION,
        "model": model_name,
        "config": config,
        "inputs": {
            "image": {"shape": [b, 3, image_size, image_size], "dtype": "float32",
                      "layout": "NCHW", "colour": "RGB", "range": [0.0, 1.0],
                      "normalisation": "ImageNet mean/std applied inside the graph"},
            "bbox_info": {"shape": [b, 3], "dtype": "float32",
                          "meaning": "[(cx - px)/fx, (cy - py)/fy, box/fx] of the square crop, "
                                     "(px, py) the principal point (d2a_edge.camera.bbox_info)"},
        },
        "outputs": {name: {"shape": [b, *shape], "dtype": "float32"}
                    for name, shape in output_shapes.items()},
        "body": {"file": body_file, "sha256": body_sha256, "joint_names": joint_names,
                 "frame": "camera optical frame: x right, y down, z forward, metres"},
        "artifacts": artifacts,
        "opset": opset,
        "versions": _versions(),
    }


def write_manifest(manifest: dict, out_dir: str | os.PathLike) -> Path:
    path = Path(out_dir) / "manifest.json"
    tmp = path.with_name(".manifest.json.partial")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path
