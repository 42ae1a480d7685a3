"""Export: fused ONNX fp32 / fp16 / INT8 Q/DQ with parity vs PyTorch; bad requests fail clearly."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import has_module, requires_torch

ROOT = Path(__file__).resolve().parent.parent
EDGE_S = ROOT / "d2a_edge" / "models" / "edge-s"

pytestmark = [requires_torch,
              pytest.mark.skipif(not has_module("onnxruntime"), reason="needs onnxruntime")]


@pytest.fixture(scope="module")
def bundle(fresh_bundle):
    return fresh_bundle


def test_bundle_files_and_manifest(bundle):
    out, manifest = bundle
    names = sorted(p.name for p in out.iterdir())
    assert names == ["body.npz", "manifest.json", "model_fp16.onnx", "model_fp32.onnx",
                     "model_int8.onnx", "training_extras.safetensors"]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["outputs"]["pose"]["shape"] == [1, 25, 3, 3]
    assert set(on_disk["artifacts"]) == {"fp32", "fp16", "int8"}


def test_fp32_parity(bundle):
    p = bundle[1]["artifacts"]["fp32"]["parity"]
    assert p["max_vertex_error_mm"] <= 0.1, p


def test_fp16_and_int8_are_measured(bundle):
    art = bundle[1]["artifacts"]
    assert art["fp16"]["parity"]["max_vertex_error_mm"] < 50  # untrained net: loose, measured
    assert np.isfinite(art["int8"]["parity"]["pa_mpjpe_delta_mm"])
    assert art["int8"]["bytes"] < art["fp32"]["bytes"] / 2


def test_sigma_calibration_fit_recovers_a_power_law():
    from d2a_edge.export.verify import fit_sigma_calibration
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.005, 0.3, 20000)
    error = 1.7 * sigma ** 1.1 * rng.lognormal(0.0, 0.3, sigma.size)  # noisy, mean factor 1.05
    cal = fit_sigma_calibration(sigma, error)
    assert cal["p"] == pytest.approx(1.1, abs=0.03)
    assert cal["a"] == pytest.approx(1.7 * np.exp(0.3 ** 2 / 2), rel=0.08)
    # too few points for a slope: a plain scale, mean error / mean sigma
    assert fit_sigma_calibration([0.1, 0.2], [0.3, 0.6]) == {"a": pytest.approx(3.0), "p": 1.0}
    # a briefly trained model: sigma barely varies, and the line through its deciles was
    # 4.45e204 * sigma^193.8 (NaN in the bundle, a crashing demo); now a plain scale
    flat = 0.05 + 1e-5 * rng.uniform(size=5000)
    err = 0.2 + 1000 * (flat - 0.05)  # 0.20..0.21 m: a log-log slope of about 250
    assert fit_sigma_calibration(flat, err) == {"a": pytest.approx(err.mean() / flat.mean()),
                                                "p": 1.0}


def test_bundle_has_a_sigma_calibration_that_the_sdk_applies(bundle):
    from d2a_edge.bundle import load_bundle
    out, manifest = bundle
    cal = manifest["sigma_calibration"]
    assert cal["a"] > 0 and cal["p"] > 0 and "16 ID + 16 OOD" in cal["fitted_on"]
    r = cal["mean_error_over_mean_sigma"]
    assert abs(np.log(r["calibrated"])) < abs(np.log(r["raw"])) + 1e-6  # at least as close to 1
    b = load_bundle(out)
    raw = np.array([0.01, 0.1, 0.5], np.float32)
    np.testing.assert_allclose(b.calibrate_sigma(raw), cal["a"] * raw ** cal["p"], rtol=1e-5)


def test_bad_sigma_calibration_is_a_bundle_error(bundle, tmp_path):
    import shutil

    from d2a_edge.bundle import BundleError, load_bundle
    out = tmp_path / "b"
    shutil.copytree(bundle[0], out)
    m = json.loads((out / "manifest.json").read_text())
    m["sigma_calibration"] = {"a": -1.0, "p": 1.0}
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="sigma_calibration must hold positive numbers"):
        load_bundle(out)
    m["sigma_calibration"] = {"a": 1.4, "p": 1.0}
    m["sigma_reference_m"] = float("nan")  # the NaN an unbounded fit once wrote
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="sigma_reference_m must be a positive number"):
        load_bundle(out)
    del m["sigma_reference_m"]
    del m["sigma_calibration"]  # older bundles: the identity
    (out / "manifest.json").write_text(json.dumps(m))
    np.testing.assert_array_equal(load_bundle(out).calibrate_sigma([0.2]), np.float32([0.2]))


def test_bad_requests(tmp_path, fresh_model, anny_asset):
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    with pytest.raises(ValueError, match="--int8 needs calibration data"):
        ExportRequest(out=tmp_path, int8=True).precisions()
    with pytest.raises(ValueError, match="cannot produce"):
        ExportRequest(out=tmp_path, fmt="torch-trt", int8=True, calib="4").precisions()
    with pytest.raises(ValueError, match="compiles a fixed batch"):  # --dynamic was ignored
        ExportRequest(out=tmp_path, fmt="torch-trt", batch=None).precisions()
    with pytest.raises(ValueError, match="opset 9 is not supported"):
        export_bundle(fresh_model, anny_asset, ExportRequest(out=tmp_path, opset=9,
                                                              val_samples=2))
    assert not any(tmp_path.iterdir())  # no partial artifacts left behind
    with pytest.raises(ValueError, match="opset 9 is not supported"):
        export_bundle(fresh_model, anny_asset, ExportRequest(out=tmp_path / "new", opset=9,
                                                              val_samples=2))
    assert not (tmp_path / "new").exists()  # nor an empty --out folder it made itself
    with pytest.raises(ValueError, match="opset 13 is not supported"):  # no attention op in 13
        export_bundle(fresh_model, anny_asset, ExportRequest(out=tmp_path / "new", opset=13,
                                                              val_samples=2))


def test_fixed_batch_graph_runs_any_number_of_crops(tmp_path, fresh_model, anny_asset):
    """--batch 3: INT8 calibration comes in batches of 3 (5 crops, the last batch filled up),
    the parity check takes 4 crops, and the SDK's ONNX Runtime backend runs 1, 2 and 4 crops
    on the fixed-batch graph, padding the last chunk. All three crashed: the calibration fed
    batch 1, and both runners refused a count that is not a multiple of 3."""
    from d2a_edge.backends import OnnxRuntimeBackend
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    from d2a_edge.export.verify import run_torch, validation_set
    from d2a_edge.training.inference import OUTPUT_NAMES, FusedGraph
    manifest = export_bundle(fresh_model, anny_asset, ExportRequest(
        out=tmp_path, int8=True, calib="5", batch=3, val_samples=4))
    assert manifest["inputs"]["image"]["shape"][0] == 3
    size = fresh_model.cfg.image_size
    images, info, _ = validation_set(anny_asset, 4, size)
    ref = dict(zip(OUTPUT_NAMES, run_torch(FusedGraph(fresh_model), images, info)))
    fp32 = OnnxRuntimeBackend(tmp_path / "model_fp32.onnx", OUTPUT_NAMES)
    assert fp32.fixed_batch == 3
    for n in (1, 2, 4):
        got = fp32.run(images[:n], info[:n])
        for name in ("pose", "translation"):
            assert got[name].shape == ref[name][:n].shape
            np.testing.assert_allclose(got[name], ref[name][:n], atol=1e-4)
    int8 = OnnxRuntimeBackend(tmp_path / "model_int8.onnx", OUTPUT_NAMES).run(images[:2],
                                                                              info[:2])
    assert int8["pose"].shape[0] == 2 and np.isfinite(int8["pose"]).all()


def test_calibration_batches_fill_the_last_batch_and_read_folders(tmp_path, anny_asset):
    import cv2
    from d2a_edge.export.pipeline import calibration_batches
    batches = calibration_batches("5", anny_asset, 64, batch=3)
    assert [len(x) for x, _ in batches] == [3, 3]
    np.testing.assert_array_equal(batches[1][0][2], batches[0][0][0])  # filled with crop 0
    (tmp_path / "a.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="no readable image"):
        calibration_batches(str(tmp_path), anny_asset, 64)
    cv2.imwrite(str(tmp_path / "b.png"), np.full((80, 60, 3), 128, np.uint8))
    (x, info), = calibration_batches(str(tmp_path), anny_asset, 64, batch=None)
    assert x.shape == (1, 3, 64, 64) and info.shape == (1, 3)


def _activation_zero_points(path) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    weights = {n.output[0] for n in m.graph.node
               if n.op_type == "QuantizeLinear" and n.input[0] in init}
    return [init[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"
            and n.output[0] not in weights and len(n.input) > 2 and n.input[2] in init]


def test_int8_quantizes_the_backbone_and_large_convs_only(bundle):
    import onnx
    from onnx import numpy_helper
    from d2a_edge.export.onnx_tools import INT8_MIN_WEIGHTS
    m = onnx.load(str(bundle[0] / "model_int8.onnx"))
    made_by = {o: n for n in m.graph.node for o in n.output}
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    init.update({n.output[0]: init[n.input[0]] for n in m.graph.node  # fp16-stored weights
                 if n.op_type == "Cast" and n.input[0] in init})
    quantized, kept = [], []
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        w = made_by.get(n.input[1])
        if w is not None and w.op_type == "DequantizeLinear":
            quantized.append((n.name, init[w.input[0]].size))
        else:
            kept.append((n.name, init[n.input[1]].size))
    assert any(name.startswith("/backbone/") for name, _ in quantized)
    assert not any(name.startswith("/backbone/") for name, _ in kept)
    assert all(size >= INT8_MIN_WEIGHTS for name, size in quantized
               if not name.startswith("/backbone/"))
    assert any(size < INT8_MIN_WEIGHTS for _, size in kept)  # small depth-net convs stay fp32


def test_int8_graph_stores_its_float_weights_as_fp16(bundle):
    """ONNX Runtime's INT8 graph stores the weights it keeps in float as fp16, cast back to
    fp32 at its start (``store_weights_fp16``); the Q/DQ scales stay fp32 initializers. The
    same storage on the whole fp32 graph moves the outputs only by fp16 weight rounding."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from d2a_edge.export import onnx_tools
    from d2a_edge.export.onnx_tools import FP16_STORAGE_MIN, ort_session
    out, _ = bundle
    m = onnx.load(str(out / "model_int8.onnx"))
    qdq = {i for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           for i in n.input}
    sizes = {t.name: (t.data_type, int(np.prod(t.dims))) for t in m.graph.initializer}
    casts = [n for n in m.graph.node if n.op_type == "Cast" and n.input[0] in sizes]
    assert casts and all(sizes[n.input[0]][0] == TensorProto.FLOAT16 for n in casts)
    assert not [name for name, (dtype, size) in sizes.items() if dtype == TensorProto.FLOAT
                and size >= FP16_STORAGE_MIN and name not in qdq]
    assert any(sizes[name][0] == TensorProto.FLOAT for name in qdq if name in sizes)  # scales

    fp32 = onnx.load(str(out / "model_fp32.onnx"))
    orig = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    stored = onnx_tools.store_weights_fp16(fp32)
    half = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    casts = [n for n in stored.graph.node if n.op_type == "Cast" and n.input[0] in half]
    assert len(casts) >= 50
    for n in casts:  # each weight, rounded to fp16, under the name the graph reads
        assert half[n.input[0]].dtype == np.float16
        np.testing.assert_array_equal(half[n.input[0]], orig[n.output[0]].astype(np.float16))
    onnx.save(stored, str(out / "fp16_storage.onnx"))
    try:
        x = np.random.default_rng(0).random((1, 3, 192, 192), dtype=np.float32)
        feed = {"image": x, "bbox_info": np.float32([[0.05, -0.02, 0.6]])}
        ref = ort_session(out / "model_fp32.onnx").run(None, feed)
        got = ort_session(out / "fp16_storage.onnx").run(None, feed)
    finally:
        (out / "fp16_storage.onnx").unlink()
    for a, b in zip(ref, got):
        np.testing.assert_allclose(b, a, rtol=1e-2, atol=2e-3)


def test_int8_folds_the_relus_after_backbone_convs(bundle, tmp_path, anny_asset):
    """ONNX Runtime's uint8 graph folds each ReLU that follows a quantized backbone conv into
    that conv's output range (zero point 0, nothing below it); the ReLUs after the residual
    Adds stay. TensorRT's zero-point-0 graph keeps every ReLU."""
    import onnx
    from d2a_edge.export import onnx_tools
    from d2a_edge.export.pipeline import calibration_batches
    out, manifest = bundle
    relus = lambda m: {n.name for n in m.graph.node  # noqa: E731
                       if n.op_type == "Relu" and n.name.startswith("/backbone/")}
    fp32 = onnx.load(str(out / "model_fp32.onnx"))
    int8 = onnx.load(str(out / "model_int8.onnx"))
    kept = relus(int8)
    assert "/backbone/body/act1/Relu" in relus(fp32) and "/backbone/body/act1/Relu" not in kept
    assert kept and kept < relus(fp32) and all(name.endswith("act2/Relu") for name in kept)
    stem = next(n for n in fp32.graph.node if n.name == "/backbone/body/act1/Relu")
    made_by = {o: n for n in int8.graph.node for o in n.output}
    q = next(n for n in int8.graph.node
             if n.op_type == "QuantizeLinear" and n.input[0] == stem.output[0])
    zp = next(t for t in int8.graph.initializer if t.name == q.input[2])
    assert onnx.numpy_helper.to_array(zp) == 0 and made_by[stem.output[0]].op_type == "Conv"
    size = manifest["inputs"]["image"]["shape"][-1]
    sym = onnx_tools.to_int8_qdq(out / "model_fp32.onnx", tmp_path / "sym.onnx",
                                 calibration_batches("2", anny_asset, size), symmetric=True)
    assert relus(onnx.load(str(sym))) == relus(fp32)


def test_int8_flavours(bundle, tmp_path, fresh_model, anny_asset):
    """ONNX Runtime gets uint8 activations with zero points (U8S8); a TensorRT request also
    writes the zero-point-0 int8 graph (S8S8) that TensorRT needs, verified like the others."""
    out, _ = bundle
    zps = _activation_zero_points(out / "model_int8.onnx")
    assert zps and all(z.dtype == np.uint8 for z in zps)
    assert any(int(z) != 0 for z in zps)  # asymmetric: zero points follow the ranges
    if has_module("tensorrt"):
        pytest.skip("TensorRT is installed here: the plan build is tested on the GPU")
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    from d2a_edge.export.tensorrt_build import TensorRTUnavailable
    with pytest.raises(TensorRTUnavailable):
        export_bundle(fresh_model, anny_asset, ExportRequest(out=tmp_path, fmt="trt", int8=True,
                                                              calib="4", val_samples=2))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["artifacts"]["int8-sym"]["file"] == "model_int8_sym.onnx"
    assert np.isfinite(manifest["artifacts"]["int8-sym"]["parity"]["pa_mpjpe_delta_mm"])
    zps = _activation_zero_points(tmp_path / "model_int8_sym.onnx")
    assert zps and all(z.dtype == np.int8 and int(z) == 0 for z in zps)


def test_trt_missing_is_clear(tmp_path, fresh_model, anny_asset):
    if has_module("tensorrt"):
        pytest.skip("TensorRT is installed here")
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    from d2a_edge.export.tensorrt_build import TensorRTUnavailable
    # an earlier export into the same folder left graphs and a plan this one does not make
    for stale in ("model_int8.onnx", "model_fp16.plan"):
        (tmp_path / stale).write_bytes(b"from an earlier export")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "manifest_version": 1, "outputs": {}, "artifacts": {
            "int8": {"file": "model_int8.onnx"}, "fp16-trt": {"file": "model_fp16.plan"}}}))
    (tmp_path / "notes.txt").write_text("the user's own file")
    (tmp_path / "model_detector.onnx").write_text("the user's own graph, in no manifest")
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        export_bundle(fresh_model, anny_asset, ExportRequest(out=tmp_path, fmt="trt",
                                                              val_samples=2))
    # the verified ONNX bundle remains, without any plan, and without the stale files (an
    # int8 graph beside a manifest without int8 looked like a model that would not load)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body.npz", "manifest.json",
                                                         "model_detector.onnx",
                                                         "model_fp32.onnx", "notes.txt",
                                                         "training_extras.safetensors"]


def test_a_stop_while_the_files_move_leaves_no_manifest_naming_them(tmp_path, fresh_model,
                                                                     anny_asset, monkeypatch):
    """Re-exporting into an earlier bundle, stopped after the first file moved in: the old
    manifest.json stayed and named a new graph under the old hashes (or a graph already
    removed). The old manifest now goes first, so the folder is no bundle until the new
    manifest arrives, and the SDK says so."""
    from d2a_edge.bundle import BundleError, load_bundle
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    out = tmp_path / "b"
    export_bundle(fresh_model, anny_asset, ExportRequest(out=out, val_samples=2))
    real, moves = Path.replace, []

    def stop_after_one(self, target):
        if moves:
            raise KeyboardInterrupt
        moves.append(target)
        return real(self, target)

    monkeypatch.setattr(Path, "replace", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(fresh_model, anny_asset, ExportRequest(out=out, val_samples=2))
    monkeypatch.setattr(Path, "replace", real)
    assert len(moves) == 1 and not (out / "manifest.json").exists()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(out)


@pytest.mark.parametrize("case", ["foreign manifest", "run folder", "checkpoint",
                                  "checkpoints folder"])
def test_out_that_is_not_a_bundle_is_refused_untouched(tmp_path, case):
    """An --out holding another program's manifest.json, a training run or a checkpoint is
    refused before anything is written (the export overwrote the manifest, and a run folder
    then read as a bundle)."""
    from d2a_edge.export.pipeline import previous_export
    made = {"foreign manifest": "manifest.json", "run folder": "checkpoints/latest.json",
            "checkpoint": "meta.json", "checkpoints folder": "step_00000002/meta.json"}[case]
    (tmp_path / made).parent.mkdir(exist_ok=True)
    (tmp_path / made).write_text('{"name": "someone else\'s"}')
    with pytest.raises(ValueError, match="another folder"):
        previous_export(tmp_path)
    assert (tmp_path / made).read_text() == '{"name": "someone else\'s"}'


def test_previous_export_lists_only_the_earlier_bundles_files(tmp_path):
    from d2a_edge.export.pipeline import previous_export
    assert previous_export(tmp_path) == set()
    (tmp_path / "manifest.json").write_text(json.dumps({
        "manifest_version": 1, "outputs": {}, "artifacts": {
            "fp32": {"file": "model_fp32.onnx"}, "odd": {"file": "../outside.onnx"}}}))
    assert previous_export(tmp_path) == {"model_fp32.onnx"}


def test_cli_prints_the_onnx_report_when_tensorrt_is_missing(bundle, tmp_path, monkeypatch,
                                                              capsys):
    """--format trt without TensorRT: a warning up front, then the verified ONNX bundle's
    report (it printed only the error), exit 3; a failed TensorRT build exits 1."""
    import d2a_edge.body
    import d2a_edge.export.pipeline as pipeline
    import d2a_edge.training.checkpoint as checkpoint
    import d2a_edge.training.recover as recover
    from d2a_edge.export import tensorrt_build
    from d2a_edge.export.cli import main

    class Cfg:
        name, model = "fake", type("M", (), {"body": "anny"})

    monkeypatch.setattr(checkpoint, "load_model_config", lambda path: (None, Cfg, {}))
    monkeypatch.setattr(d2a_edge.body, "load_body", lambda name: None)
    monkeypatch.setattr(recover, "loss_state", lambda path: None)
    for error, code in ((tensorrt_build.TensorRTUnavailable("TensorRT is not installed"), 3),
                        (tensorrt_build.TensorRTBuildError("TensorRT failed to build"), 1)):
        def fake_export(*args, error=error, **kwargs):
            error.manifest = bundle[1]
            raise error
        monkeypatch.setattr(pipeline, "export_bundle", fake_export)
        assert main(["run", "--out", str(tmp_path / "o"), "--format", "trt"]) == code
        out, err = capsys.readouterr()
        assert "| fp32 |" in out and "MeshRecoverer(" in out and str(error) in err
        if not has_module("tensorrt"):
            assert "TensorRT is not installed here" in err


def test_trt_version_gate():
    from d2a_edge.export.tensorrt_build import builder_plan

    class Fake:
        def __init__(self, v):
            self.__version__ = v
    assert builder_plan(Fake("11.1.0"), "fp16") == {"strongly_typed": True, "flags": []}
    assert builder_plan(Fake("10.3.0"), "int8") == {"strongly_typed": False,
                                                    "flags": ["INT8", "FP16"]}
    with pytest.raises(ValueError, match="precision 'int4'"):
        builder_plan(Fake("10.3.0"), "int4")


def test_cli_errors(tmp_path, capsys):
    from d2a_edge.export.cli import main
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "a_file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err  # was: a FileExistsError trace
    bad = tmp_path / "step_00000001"
    bad.mkdir()
    (bad / "meta.json").write_text("{ corrupt")
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "meta.json unreadable" in capsys.readouterr().err
    assert main([str(bad), "--out", str(tmp_path / "o"), "--int8"]) == 2
    assert "--int8 needs calibration data" in capsys.readouterr().err
    for args, msg in ((["--val-samples", "0"], "--val-samples must be >= 1"),
                      (["--batch", "0"], "--batch must be >= 1"),
                      (["--int8", "--calib", "0"], "at least 1 calibration crop"),
                      (["--int8", "--calib", str(tmp_path / "no_images")], "neither a number")):
        # checked before anything is loaded or written (was: a numpy error after the export)
        assert main([str(bad), "--out", str(tmp_path / "o"), *args]) == 2
        assert msg in capsys.readouterr().err
    if not has_module("torch_tensorrt"):
        assert main([str(bad), "--out", str(tmp_path / "o"), "--format", "torch-trt"]) == 3
        assert "needs torch_tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_trt_api_check_finds_the_names_and_flags_a_missing_one(tmp_path, capsys):
    """scripts/trt_api_check.py (run by hand against real bindings wheels): it collects the
    TensorRT names the builder and the runtime use, and reports one that a wheel lacks."""
    import zipfile
    sys.path.insert(0, str(ROOT / "scripts"))
    import trt_api_check as chk
    names = chk.used_names()
    assert {"Builder", "create_network", "build_serialized_network", "set_timing_cache",
            "ignore_mismatch", "set_tensor_address", "execute_async_v3", "INPUT"} <= set(names)
    assert chk.builder_flags(10) == {"FP16", "INT8"} and chk.builder_flags(11) == set()
    everything = b"\0".join(n.encode() for n in names if n not in ("execute_async_v3", "INPUT"))
    for version, extra in (("10.3.0", b"\0UINT8\0FP16\0DataType.INPUT\0"), ("11.4.0.106", b"\0")):
        wheel = tmp_path / f"tensorrt_cu12_bindings-{version}-cp311-none-manylinux_2_28_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr("tensorrt_bindings/tensorrt.so", b"\x7fELF\0" + everything + extra)
    assert chk.main([str(p) for p in sorted(tmp_path.glob("*.whl"))]) == 1
    out, n = capsys.readouterr().out, len(names)
    assert f"TensorRT 10.3.0: {n + 1} of {n + 2} present (2 only as a string's tail: INPUT, " \
           "INT8); MISSING: execute_async_v3" in out
    assert f"TensorRT 11.4.0.106: {n - 2} of {n} present; MISSING: INPUT, execute_async_v3" in out


def test_torch_trt_fp16_is_asked_for_the_way_each_version_takes_it():
    """torch_tensorrt's dynamo compile signatures of 2.9, 2.12 and 2.14 (parameter names as in
    the PyPI wheels' sources): enabled_precisions before 2.12, enable_autocast from 2.12 on
    (2.12 rejects fp16 in enabled_precisions; 2.13+ drops it silently)."""
    import types

    import torch
    from d2a_edge.export.torch_trt import precision_kwargs

    def fake(version, compile_fn):
        return types.SimpleNamespace(__version__=version,
                                     dynamo=types.SimpleNamespace(compile=compile_fn))

    def v2_9(exported_program, inputs=None, *, enabled_precisions=None,
             use_explicit_typing=False, **kwargs): ...

    def v2_12(exported_program, inputs=None, *, enabled_precisions=None,
              use_explicit_typing=True, enable_autocast=False, **kwargs): ...

    def v2_14(exported_program, arg_inputs=None, *, use_explicit_typing=True,
              enable_autocast=False, autocast_low_precision_type=None, **kwargs): ...

    def unknown(exported_program, **kwargs): ...

    autocast = {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    assert precision_kwargs(fake("2.9.0", v2_9), True) == {
        "enabled_precisions": {torch.float16, torch.float32}}
    assert precision_kwargs(fake("2.12.0", v2_12), True) == autocast
    assert precision_kwargs(fake("2.14.0", v2_14), True) == autocast
    assert precision_kwargs(fake("2.14.0", v2_14), False) == {}
    with pytest.raises(RuntimeError, match="torch_tensorrt 9.0.*FP16"):
        precision_kwargs(fake("9.0", unknown), True)


def _recording_tensorrt(version, calls, parse_ok=True, build_ok=True):
    """A fake ``tensorrt`` module that records what build_engine asks of it."""
    import types
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        inputs = [Tensor("image", (-1, 3, 192, 192)), Tensor("bbox_info", (-1, 3))]
        num_inputs = 2

        def get_input(self, i):
            return self.inputs[i]

    class Parser:
        num_errors = 0 if parse_ok else 2

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, i):
            return f"node {i}: unsupported"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile", name, lo, opt, hi))

    class Cache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return self.data + b"+new timings"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool, size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            pass

        def create_timing_cache(self, data):
            calls.append(("cache in", data))
            return Cache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, *flags):
            calls.append(("network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN" if build_ok else None

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
    return trt


@pytest.mark.parametrize("version,network,flags", [("11.4.0", (), []),
                                                   ("10.3.0", (0,), ["INT8", "FP16"])])
def test_trt_build_asks_each_version_the_right_way(tmp_path, monkeypatch, version, network,
                                                   flags):
    """build_engine against a recording fake tensorrt: TRT 11 gets a plain (strongly typed)
    network and no precision flags, TRT 10 the INT8 + FP16 flags; the profile spans the batch
    range on every input; the timing cache is read and written back; the plan is renamed into
    place. A parse or build failure leaves no plan and no partial file."""
    from d2a_edge.export.tensorrt_build import build_engine
    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", _recording_tensorrt(version, calls))
    onnx_path, plan, cache = tmp_path / "m.onnx", tmp_path / "m.plan", tmp_path / "timing.cache"
    onnx_path.write_bytes(b"onnx bytes")
    cache.write_bytes(b"old")
    assert build_engine(onnx_path, plan, "int8", 192, batch_range=(1, 4, 8),
                        workspace_gb=1.0, timing_cache=cache) == plan
    assert plan.read_bytes() == b"PLAN" and cache.read_bytes() == b"old+new timings"
    assert ("network", network) in calls and ("parse", 10) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == flags
    assert ("pool", "WORKSPACE", 1 << 30) in calls and ("cache in", b"old") in calls
    assert ("profile", "image", (1, 3, 192, 192), (4, 3, 192, 192), (8, 3, 192, 192)) in calls
    assert ("profile", "bbox_info", (1, 3), (4, 3), (8, 3)) in calls
    for kw, match in (({"parse_ok": False}, "could not parse .*node 0: unsupported; node 1"),
                      ({"build_ok": False}, "failed to build a int8 engine")):
        monkeypatch.setitem(sys.modules, "tensorrt", _recording_tensorrt(version, [], **kw))
        out = tmp_path / f"bad_{next(iter(kw))}.plan"
        with pytest.raises(RuntimeError, match=match):
            build_engine(onnx_path, out, "int8", 192)
        assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_printed_report_has_the_parity_the_issue_asks_for():
    """d2a-export's report: per artifact the max abs error of each output and the MPJPE and
    PA-MPJPE deltas; the usage hint names only the precisions the bundle holds."""
    from pathlib import Path

    from d2a_edge.export.cli import _report
    manifest = json.loads((Path(__file__).parents[1] / "d2a_edge" / "models" / "edge-s" /
                           "manifest.json").read_text())
    text = _report(manifest, Path("b"))
    int8 = next(line for line in text.splitlines() if line.startswith("| int8 |"))
    p = manifest["artifacts"]["int8"]["parity"]
    assert f"pose {p['max_abs_error']['pose']:.2g}" in int8
    assert f"{p['mpjpe_delta_mm']:+.2f} |" in int8 and f"{p['pa_mpjpe_delta_mm']:+.2f} |" in int8
    assert "# or 'int8'" in text and "'fp16'" not in text
    del manifest["artifacts"]["int8"]
    assert "# or" not in _report(manifest, Path("b"))


def _outs(asset, n, transl):
    J, S = asset.num_joints, asset.num_betas
    pose = np.broadcast_to(np.eye(3, dtype=np.float32), (n, J, 3, 3)).copy()
    return [pose, np.zeros((n, S), np.float32), np.asarray(transl, np.float32),
            np.full((n, J, 3), 0.01, np.float32)]


def test_parity_report_max_and_deltas_against_known_differences(anny_asset):
    """``verify.compare``: the graph under test moves one of four meshes by 10 mm and bends one
    joint of another. The worst vertex error is 10 mm (the mean far less); the accuracy deltas
    are got - ref, positive when the exported graph is worse."""
    from d2a_edge.body.rotations import rodrigues
    from d2a_edge.export import verify
    ref = _outs(anny_asset, 4, [[0.0, 0.0, 3.0]] * 4)
    v, j = verify.mesh_from_outputs(anny_asset, ref)
    labels = {"kp3d": anny_asset.keypoints(j, v, 17)}  # the reference is perfect
    got = [a.copy() for a in ref]
    got[2][0, 0] += 0.01  # 10 mm sideways: no vertex moves more, and only in sample 0
    knee = list(anny_asset.joint_names).index("LeftLeg")
    got[0][1, knee] = rodrigues(np.array([1.2, 0.0, 0.0]))
    r = verify.compare(anny_asset, ["pose", "shape", "translation", "joint_sigma"], ref, got,
                       labels)
    assert r["max_abs_error"]["translation"] == pytest.approx(0.01, abs=1e-6)
    assert r["max_abs_error"]["shape"] == 0.0
    assert r["max_vertex_error_mm"] > 10.0  # the bent knee moves the foot by far more
    assert r["mean_vertex_error_mm"] < r["max_vertex_error_mm"] / 2
    assert r["mpjpe_delta_mm"] > 1.0 and r["pa_mpjpe_delta_mm"] > 1.0  # worse is positive
    assert r["mpjpe_delta_mm"] == pytest.approx(r["mpjpe_mm"], abs=1e-6)  # the ref is exact
    same = verify.compare(anny_asset, ["pose", "shape", "translation", "joint_sigma"], ref,
                          _outs(anny_asset, 4, [[0.0, 0.0, 3.0]] * 3 + [[0.0, 0.0, 3.02]]),
                          labels)
    assert same["max_vertex_error_mm"] == pytest.approx(20.0, abs=1e-3)
    assert same["mean_vertex_error_mm"] == pytest.approx(5.0, abs=1e-3)
    assert abs(same["mpjpe_delta_mm"]) < 1e-6  # root-aligned: a translation is no error


def _fake_export_cli(monkeypatch, model="MODEL", asset="ASSET"):
    """d2a-export's main with the checkpoint, body and export faked: returns the calls that
    reached ``export_bundle`` as (model, asset, request, keyword arguments)."""
    import d2a_edge.body
    import d2a_edge.export.pipeline as pipeline
    import d2a_edge.training.checkpoint as checkpoint
    import d2a_edge.training.recover as recover

    class Cfg:
        name, model = "fake", type("M", (), {"body": "anny"})

    meta = {"recovered_from": {"fresh_parameters": ["silhouette.w"]}}
    monkeypatch.setattr(checkpoint, "load_model_config", lambda path: (model, Cfg, meta))
    monkeypatch.setattr(d2a_edge.body, "load_body", lambda name: asset)
    monkeypatch.setattr(recover, "loss_state", lambda path: {"flow": str(path)})
    calls = []
    manifest = json.loads((EDGE_S / "manifest.json").read_text())

    def fake_export(model, asset, req, **kwargs):
        calls.append((model, asset, req, kwargs))
        return manifest
    monkeypatch.setattr(pipeline, "export_bundle", fake_export)
    return calls


def test_cli_passes_every_flag_to_the_export(tmp_path, monkeypatch, capsys):
    """Each d2a-export flag reaches the export request (--dynamic, --opset and --fp16 were not
    checked anywhere), the defaults are the documented ones, and the checkpoint's loss state
    and never-trained parts go into the bundle's training extras."""
    from d2a_edge.export.cli import main
    calls = _fake_export_cli(monkeypatch)
    out = tmp_path / "o"
    assert main(["run", "--out", str(out), "--fp16", "--int8", "--calib", "8", "--dynamic",
                 "--opset", "18", "--val-samples", "5"]) == 0
    assert main(["run", "--out", str(out), "--batch", "4"]) == 0
    assert main(["run", "--out", str(out)]) == 0
    (m1, a1, req, kw), (_, _, batch4, _), (_, _, default, _) = calls
    assert (m1, a1) == ("MODEL", "ASSET")
    assert (req.out, req.fmt, req.fp16, req.int8, req.calib, req.batch, req.opset,
            req.val_samples) == (out, "onnx", True, True, "8", None, 18, 5)
    assert batch4.batch == 4
    assert (default.fp16, default.int8, default.calib, default.batch, default.opset,
            default.val_samples) == (False, False, None, 1, 17, 256)
    assert kw["name"] == "fake" and kw["checkpoint"] == Path("run")
    assert kw["loss_state"] == {"flow": "run"} and list(kw["untrained"]) == ["silhouette.w"]
    assert "| fp32 |" in capsys.readouterr().out


def test_cli_warns_that_calib_without_int8_is_ignored(tmp_path, monkeypatch, capsys):
    from d2a_edge.export.cli import main
    _fake_export_cli(monkeypatch)
    assert main(["run", "--out", str(tmp_path / "o"), "--calib", "8"]) == 0
    assert "--calib is used only with --int8; ignored" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "o"), "--int8", "--calib", "8"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_cli_reports_an_out_folder_it_cannot_make(tmp_path, monkeypatch, capsys,
                                                   fresh_model, anny_asset):
    """--out below a file: a one-line error and exit 2 (the OSError from making the folder),
    not a traceback; nothing is written."""
    import d2a_edge.export.pipeline as pipeline
    from d2a_edge.export.cli import main
    real_export = pipeline.export_bundle
    calls = _fake_export_cli(monkeypatch, fresh_model, anny_asset)
    monkeypatch.setattr(pipeline, "export_bundle", real_export)
    (tmp_path / "a_file").write_text("")
    assert main(["run", "--out", str(tmp_path / "a_file" / "bundle"), "--val-samples", "2"]) == 2
    assert f"d2a-export: error: cannot write --out {tmp_path / 'a_file' / 'bundle'}: " \
        in capsys.readouterr().err  # it was the bare OSError, naming no option
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and not calls
    assert (tmp_path / "a_file").read_text() == ""


def test_cli_ctrl_c_is_a_message_and_torch_trt_checks_out(tmp_path, monkeypatch, capsys):
    """Ctrl-C during an export printed a 26-line KeyboardInterrupt traceback; now one line and
    exit 130. --format torch-trt wrote into a run folder (it skipped the --out checks). A bad
    checkpoint with --format trt warned first that the bundle 'is written and verified'."""
    import d2a_edge.export.cli as cli
    import d2a_edge.export.pipeline as pipeline
    import d2a_edge.training.checkpoint as checkpoint
    _fake_export_cli(monkeypatch)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "export_bundle", interrupted)
    assert cli.main(["run", "--out", str(tmp_path / "o")]) == 130
    assert "d2a-export: interrupted" in capsys.readouterr().err
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(cli, "_torch_trt_unavailable", lambda: False)
    assert cli.main(["run", "--out", str(run), "--format", "torch-trt"]) == 2
    assert "holds a training run" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]

    def missing(path):
        raise checkpoint.CheckpointError(f"no checkpoint at {path}")

    monkeypatch.setattr(checkpoint, "load_model_config", missing)
    assert cli.main(["nope", "--out", str(tmp_path / "t"), "--format", "trt"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at nope" in err and "is written and verified" not in err


def test_report_sizes_in_mb_and_the_calibration_ratios():
    """The report's MB column is the artifact's bytes / 1e6, and the σ calibration line gives
    the raw and the calibrated error / σ ratio, each under its own name."""
    from d2a_edge.export.cli import _report
    manifest = json.loads((EDGE_S / "manifest.json").read_text())
    text = _report(manifest, Path("b"))
    for name, art in manifest["artifacts"].items():
        assert f"| {name} | {art['bytes'] / 1e6:.1f} |" in text
    r = manifest["sigma_calibration"]["mean_error_over_mean_sigma"]
    assert r["raw"] != pytest.approx(r["calibrated"], abs=0.01)
    assert f"{r['raw']:.2f} raw, {r['calibrated']:.2f} calibrated" in text


def test_build_manifest_records_batch_opset_and_io():
    """A dynamic batch (batch=None) is the symbolic 'batch' on every input and output, a fixed
    one its number; the opset, joint names and the engine's RGB 0..1 input are recorded."""
    from d2a_edge.export.manifest import build_manifest
    kw = dict(model_name="m", config={}, image_size=192,
              output_shapes={"pose": [25, 3, 3], "shape": [16]}, body_file="body.npz",
              body_sha256="0" * 64, joint_names=["root", "spine"], artifacts={}, opset=18)
    for batch, b in ((None, "batch"), (3, 3)):
        m = build_manifest(batch=batch, **kw)
        assert m["inputs"]["image"]["shape"] == [b, 3, 192, 192]
        assert m["inputs"]["bbox_info"]["shape"] == [b, 3]
        assert m["outputs"] == {"pose": {"shape": [b, 25, 3, 3], "dtype": "float32"},
                                "shape": {"shape": [b, 16], "dtype": "float32"}}
    assert m["opset"] == 18 and m["body"]["joint_names"] == ["root", "spine"]
    assert m["inputs"]["image"]["colour"] == "RGB" and m["inputs"]["image"]["range"] == [0.0, 1.0]


def test_write_manifest_replaces_the_file_and_leaves_no_partial(tmp_path):
    from d2a_edge.export.manifest import write_manifest
    (tmp_path / "manifest.json").write_text('{"old": true}')
    assert write_manifest({"manifest_version": 1}, tmp_path) == tmp_path / "manifest.json"
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"manifest_version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_joint_sigma_and_error_are_pelvis_relative_norms(anny_asset):
    """The σ calibration's data: per joint except the pelvis, the norm of the per-axis σ (as
    ``HumanMesh.joint_sigma``) and the pelvis-relative joint error. A prediction off by a
    whole-body translation has no error; one joint moved 2 cm has 2 cm on that joint only."""
    from d2a_edge.export import verify
    J = anny_asset.num_joints
    outs = _outs(anny_asset, 2, [[0.0, 0.0, 3.0], [0.1, 0.0, 4.0]])
    _, joints = verify.mesh_from_outputs(anny_asset, outs)
    gt = joints + np.array([0.3, -0.2, 0.5])  # the same pose elsewhere
    gt[1, 5, 0] += 0.02
    sigma, err = verify.joint_sigma_and_error(anny_asset, outs, {"joints3d": gt})
    assert sigma.shape == err.shape == (2, J - 1)
    np.testing.assert_allclose(sigma, 0.01 * np.sqrt(3), rtol=1e-6)
    expected = np.zeros((2, J - 1))
    expected[1, 4] = 0.02
    np.testing.assert_allclose(err, expected, atol=1e-6)


def test_sigma_calibration_needs_three_deciles_for_a_power_law():
    """Two usable deciles give a plain scale, not a 'power law' through two points."""
    from d2a_edge.export.verify import fit_sigma_calibration
    assert fit_sigma_calibration([0.1, 0.2], [0.1, 0.4]) == {"a": pytest.approx(0.5 / 0.3),
                                                             "p": 1.0}


class _Net:
    """A small module with run_torch's calling convention: (image, bbox_info) -> outputs."""

    @staticmethod
    def make():
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 2)

            def forward(self, x, b):
                b = b.to(x.dtype)  # as the fused graph takes bbox_info
                return (self.lin(b) + x.mean(), b * 2)

        torch.manual_seed(0)
        return Net()


def _inputs():
    rng = np.random.default_rng(0)
    return rng.random((5, 1, 2, 2)).astype(np.float32), rng.random((5, 3)).astype(np.float32)


def test_run_torch_in_half_gives_the_module_back_in_float():
    """The fp16 parity fallback runs the module in half: afterwards it is a float32 module
    again, and its outputs are float32 numpy arrays."""
    import torch

    from d2a_edge.export.verify import run_torch
    net, (x, b) = _Net.make(), _inputs()
    half = run_torch(net, x, b, half=True)
    assert all(a.dtype == np.float32 for a in half)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    again = run_torch(net, x, b)
    assert all(a.dtype == np.float32 for a in again)
    np.testing.assert_allclose(half[0], again[0], atol=1e-2)


def test_run_torch_in_half_leaves_the_weights_as_they_were():
    """export_bundle's fp16 fallback (ONNX Runtime without fp16 kernels) then computes the σ
    calibration and the training extras from fp16-rounded weights, and the caller's model is
    changed."""
    from d2a_edge.export.verify import run_torch
    net, (x, b) = _Net.make(), _inputs()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ref = run_torch(net, x, b)
    run_torch(net, x, b, half=True)
    for k, v in net.state_dict().items():
        assert v.equal(before[k]), k
    np.testing.assert_array_equal(run_torch(net, x, b)[0], ref[0])


def test_validation_set_renders_the_split_asked_for(anny_asset):
    """``split="ood"`` gives the OOD scenes (the σ calibration's second half), not the ID
    ones again; images are (n, 3, s, s) float32 in 0..1 and bbox_info comes from the labels."""
    from d2a_edge.camera import bbox_info
    from d2a_edge.export import verify
    from d2a_edge.training.data.engine import SampleGenerator, SceneConfig
    images, info, labels = verify.validation_set(anny_asset, 2, 64, seed=5, split="ood")
    s = SampleGenerator(anny_asset, SceneConfig.for_split("ood", 64)).generate(5, range(2))
    assert images.shape == (2, 3, 64, 64) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.5
    np.testing.assert_allclose(images, s["image"].transpose(0, 3, 1, 2) / 255.0, atol=1e-6)
    np.testing.assert_allclose(info, bbox_info(s["crop_box"], s["K"]), atol=1e-6)
    id_images, _, _ = verify.validation_set(anny_asset, 2, 64, seed=5, split="id")
    assert np.abs(id_images - images).max() > 0.1

