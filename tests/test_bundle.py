"""Model bundles (``d2a_edge.bundle``): manifests, artifacts, body assets and sigma settings that
are refused with a clear ``BundleError``, and the checkpoint the torch backend takes."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from d2a_edge.bundle import DEFAULT_MODEL, BundleError, load_bundle


def test_a_manifest_that_does_not_match_its_graph_is_refused(tmp_path):
    """The manifest says 224-px crops, the graph takes 192: a BundleError when the model
    loads (it was ONNX Runtime's raw InvalidArgument at the first frame)."""
    import shutil

    from d2a_edge.bundle import DEFAULT_MODEL
    from d2a_edge.recoverer import MeshRecoverer
    root = tmp_path / "b"
    shutil.copytree(DEFAULT_MODEL, root)
    m = json.loads((root / "manifest.json").read_text())
    m["inputs"]["image"]["shape"][2:] = [224, 224]
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="different exports"):
        MeshRecoverer(root, backend="onnxruntime")


def _copy_bundle(dst: Path) -> Path:
    shutil.copytree(DEFAULT_MODEL, dst)
    return dst


def test_an_artifact_damaged_in_place_is_refused(tmp_path):
    """Same size, one byte flipped (bit rot, a bad copy): the sha256 must catch it; the size
    alone cannot."""
    b = _copy_bundle(tmp_path / "b")
    f = b / "model_fp32.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the manifest's size and sha256"):
        load_bundle(b).artifact("fp32", "onnx")
    assert load_bundle(b).artifact("int8", "onnx") is not None  # the others are fine


def test_a_body_asset_from_another_export_is_refused(tmp_path):
    """A valid body.npz that is not the one the manifest names (its template moved 1 cm) would
    skin every mesh wrongly without a word."""
    import dataclasses

    from d2a_edge.body import load_body_asset
    from d2a_edge.body.asset import save_body_asset
    b = _copy_bundle(tmp_path / "b")
    a = load_body_asset(b / "body.npz")
    (b / "body.npz").unlink()
    save_body_asset(dataclasses.replace(a, v_template=a.v_template + 0.01), b / "body.npz")
    with pytest.raises(BundleError, match="does not match the manifest's sha256"):
        load_bundle(b)


def _manifest_and_body(dst):
    """The bundled model's manifest.json and body.npz (all load_bundle reads) copied to dst."""
    import shutil

    from d2a_edge.bundle import DEFAULT_MODEL
    dst.mkdir()
    for name in ("manifest.json", "body.npz"):
        shutil.copy(DEFAULT_MODEL / name, dst / name)
    return dst


def _rewrite(root, change):
    import json
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_load_bundle_takes_the_manifest_file_itself():
    from d2a_edge.bundle import DEFAULT_MODEL
    b = load_bundle(DEFAULT_MODEL / "manifest.json")
    assert b.root == DEFAULT_MODEL and b.name == load_bundle().name


def test_manifests_missing_a_section_or_an_output_are_bundle_errors(tmp_path):
    """Each required section and each required output, when missing, is a BundleError naming
    it (not a KeyError at load, or when the engine's outputs are read at the first frame)."""
    import json


    from d2a_edge.bundle import DEFAULT_MODEL, BundleError
    root = _manifest_and_body(tmp_path / "b")
    original = json.loads((DEFAULT_MODEL / "manifest.json").read_text())
    for where, key, message in [(None, k, f"manifest lacks \\['{k}'\\]")
                                for k in ("inputs", "outputs", "body", "artifacts")] + \
            [("outputs", k, f"model outputs lack \\['{k}'\\]")
             for k in ("pose", "shape", "translation", "joint_sigma")]:
        m = json.loads(json.dumps(original))
        del (m if where is None else m[where])[key]
        (root / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=message):
            load_bundle(root)


def test_a_bundle_without_its_body_asset_is_a_bundle_error(tmp_path):

    from d2a_edge.bundle import BundleError
    root = _manifest_and_body(tmp_path / "b")
    (root / "body.npz").unlink()
    with pytest.raises(BundleError, match="body asset body.npz is missing"):
        load_bundle(root)


def test_a_zero_or_negative_sigma_reference_is_a_bundle_error(tmp_path):
    """``HumanMesh.score`` divides by it: 0 gave every person score 0 (or NaN)."""

    from d2a_edge.bundle import BundleError
    root = _manifest_and_body(tmp_path / "b")
    for bad in (0.0, -0.05):
        _rewrite(root, lambda m: m.update(sigma_reference_m=bad))
        with pytest.raises(BundleError, match="sigma_reference_m must be a positive number"):
            load_bundle(root)


def test_sigma_defaults_and_calibration_of_older_bundles():
    """A manifest from before the σ calibration: σ unchanged, reference 0.05 m (documented);
    a negative raw σ (a numerically noisy engine) is calibrated as 0, never NaN."""
    from d2a_edge.bundle import ModelBundle, calibrated_sigma
    old = ModelBundle(root=None, manifest={}, asset=None)
    assert old.sigma_reference == 0.05
    np.testing.assert_array_equal(old.calibrate_sigma([0.2, 0.0]), np.float32([0.2, 0.0]))
    got = calibrated_sigma({"a": 1.44, "p": 1.0064}, [-1e-4, 0.0, 0.1])
    assert np.all(np.isfinite(got)) and got[0] == 0.0 and got.dtype == np.float32
    np.testing.assert_allclose(got[2], 1.44 * 0.1 ** 1.0064, rtol=1e-6)


def test_checkpoint_is_only_a_file_that_exists(tmp_path):
    """``ModelBundle.checkpoint()`` (the torch backend's weights): None when the manifest names
    none or names one that is gone, so that the backend says 'no PyTorch checkpoint' instead of
    failing deep in the loader."""
    from d2a_edge.bundle import ModelBundle
    assert ModelBundle(root=tmp_path, manifest={}, asset=None).checkpoint() is None
    gone = ModelBundle(root=tmp_path, manifest={"checkpoint": "run/step_1"}, asset=None)
    assert gone.checkpoint() is None
    (tmp_path / "run" / "step_1").mkdir(parents=True)
    assert gone.checkpoint() == tmp_path / "run" / "step_1"
    # d2a-export records the run it exported as source_checkpoint (absolute): used when it
    # exists here (backend="torch" said "no PyTorch checkpoint" for every exported bundle)
    src = ModelBundle(root=tmp_path / "b", manifest={"source_checkpoint": str(tmp_path / "run")},
                      asset=None)
    assert src.checkpoint() == tmp_path / "run"
    assert ModelBundle(root=tmp_path, manifest={"source_checkpoint": "/nonexistent/run"},
                       asset=None).checkpoint() is None


def test_a_bad_sigma_reference_is_refused_without_a_calibration_too(tmp_path):
    """A manifest without sigma_calibration (as exported before it) and sigma_reference_m 0,
    NaN or negative: every call raised ZeroDivisionError, or every person scored 0 (lost), or
    scored 1 whatever its σ."""
    from d2a_edge.bundle import BundleError
    root = _manifest_and_body(tmp_path / "b")
    for bad in (0.0, float("nan"), -0.1):
        def change(m, bad=bad):
            m.pop("sigma_calibration", None)
            m["sigma_reference_m"] = bad
        _rewrite(root, change)
        with pytest.raises(BundleError, match="sigma_reference_m"):
            load_bundle(root)


def test_a_manifest_that_is_not_an_object_is_a_bundle_error(tmp_path):
    """manifest.json holding a JSON list: a BundleError naming the manifest version, not an
    AttributeError traceback ('list' object has no attribute 'get')."""
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(BundleError, match="manifest_version None"):
        load_bundle(tmp_path)
