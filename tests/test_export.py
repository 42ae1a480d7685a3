"""Export: fused ONNX fp32 / fp16 / INT8 Q/DQ with parity vs PyTorch; bad requests fail clearly."""
import json

import numpy as np
import pytest
from conftest import has_module, requires_torch

pytestmark = [requires_torch,
              pytest.mark.skipif(not has_module("onnxruntime"), reason="needs onnxruntime")]


@pytest.fixture(scope="module")
def bundle(fresh_bundle):
    return fresh_bundle


def test_bundle_files_and_manifest(bundle):
    out, manifest = bundle
    names = sorted(p.name for p in out.iterdir())
    assert names == ["body.npz", "manifest.json", "model_fp16.onnx", "model_fp32.onnx",
                     "model_int8.onnx"]
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


def test_bad_requests(tmp_path, fresh_model, anny_asset):
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    with pytest.raises(ValueError, match="--int8 needs calibration data"):
        ExportRequest(out=tmp_path, int8=True).precisions()
    with pytest.raises(ValueError, match="cannot produce"):
        ExportRequest(out=tmp_path, fmt="torch-trt", int8=True, calib="4").precisions()
    with pytest.raises(ValueError, match="opset 9 is not supported"):
        export_bundle(fresh_model, anny_asset, ExportRequest(out=tmp_path, opset=9,
                                                              val_samples=2))
    assert not any(tmp_path.iterdir())  # no partial artifacts left behind


def test_trt_missing_is_clear(tmp_path, fresh_model, anny_asset):
    if has_module("tensorrt"):
        pytest.skip("TensorRT is installed here")
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    from d2a_edge.export.tensorrt_build import TensorRTUnavailable
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed"):
        export_bundle(fresh_model, anny_asset, ExportRequest(out=tmp_path, fmt="trt",
                                                              val_samples=2))
    # the verified ONNX bundle remains, without any plan
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body.npz", "manifest.json",
                                                         "model_fp32.onnx"]


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
    bad = tmp_path / "step_00000001"
    bad.mkdir()
    (bad / "meta.json").write_text("{ corrupt")
    assert main([str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "meta.json unreadable" in capsys.readouterr().err
    assert main([str(bad), "--out", str(tmp_path / "o"), "--int8"]) == 2
    assert "--int8 needs calibration data" in capsys.readouterr().err
    if not has_module("torch_tensorrt"):
        assert main([str(bad), "--out", str(tmp_path / "o"), "--format", "torch-trt"]) == 3
        assert "needs torch_tensorrt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
