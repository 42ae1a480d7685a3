"""TensorRT plan building, written to the TensorRT 10 and 11 Python APIs.

NOT VERIFIED ON HARDWARE HERE: TensorRT is installed on neither the development machine nor the
lent GPU machine (its libraries are gigabytes). The version gate is unit-tested with a fake
module; the calls follow NVIDIA's 10.x -> 11.x migration guide, and every TensorRT name used
here exists in the bindings of TensorRT 10.3, 10.13, 11.0 and 11.4 (``scripts/trt_api_check.py``).

- TRT 11: strongly typed networks only. Precision comes from the graph: the FP16 mixed-precision
  ONNX or the INT8 Q/DQ ONNX. Builder precision flags do not exist any more.
- TRT 10 (JetPack 6): weakly typed network with ``BuilderFlag.FP16`` (fp32 graph) or
  ``BuilderFlag.INT8`` (+ FP16) for the Q/DQ graph (explicit quantization, no calibrator).
"""
from __future__ import annotations

import os
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTUnavailable(RuntimeError):
    """``tensorrt`` does not import on this machine. ``export_bundle`` sets ``manifest`` to
    the verified ONNX bundle it wrote before the TensorRT step."""

    manifest: dict | None = None


class TensorRTBuildError(TensorRTUnavailable):
    """TensorRT imports but could not parse the graph or build the plan."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise TensorRTUnavailable(
            "TensorRT is not installed: `pip install 'd2a-edge[trt]'` on a machine with an NVIDIA "
            "GPU (JetPack ships it on Jetson). The ONNX artifacts were written and work with "
            "ONNX Runtime.") from e
    return trt


def trt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def builder_plan(trt, precision: str) -> dict:
    """How to build for this TensorRT version: network flags and builder flags (by name)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    major = trt_major(trt)
    if major >= 11:
        return {"strongly_typed": True, "flags": []}
    if major == 10:
        flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[precision]
        return {"strongly_typed": False, "flags": flags}
    raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old: d2a-edge needs 10 or 11")


def build_engine(onnx_path: str | os.PathLike, plan_path: str | os.PathLike, precision: str,
                 image_size: int, batch_range: tuple[int, int, int] = (1, 1, 1),
                 workspace_gb: float = 2.0, timing_cache: str | os.PathLike | None = None) -> Path:
    """Build and write a serialized plan (temp file + rename); returns its path.

    ``onnx_path`` must already carry the precision (FP16 graph / Q/DQ graph) for TRT 11.
    ``batch_range`` = (min, opt, max) of the optimisation profile for dynamic-batch graphs.
    """
    trt = import_tensorrt()
    plan = builder_plan(trt, precision)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if plan["strongly_typed"]:
        network = builder.create_network()
    else:
        network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for name in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    lo, opt, hi = batch_range
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        tail = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (lo, *tail), (opt, *tail), (hi, *tail))
    config.add_optimization_profile(profile)
    cache = _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build a {precision} engine from "
                                 f"{onnx_path}")
    plan_path = Path(plan_path)
    tmp = plan_path.with_name(f".{plan_path.name}.partial")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, plan_path)
    if timing_cache is not None and cache is not None:
        Path(timing_cache).write_bytes(bytes(cache.serialize()))
    return plan_path


def _load_timing_cache(config, path):
    if path is None:
        return None
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache
