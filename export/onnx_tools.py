"""ONNX steps of the export: trace, simplify, FP16 (mixed precision, fp32 I/O), INT8 (explicit Q/DQ).

Precision lives in the graph (STYLE 8): FP16 is a mixed-precision ONNX with fp32 inputs/outputs,
INT8 is a QDQ graph calibrated by ONNX Runtime's static quantizer on real or synthetic crops.
Every writer writes to a temp file and renames, so a failure never leaves a file that looks valid.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

INPUT_NAMES = ("image", "bbox_info")
MIN_OPSET, MAX_OPSET = 14, 20  # 13 lacks scaled_dot_product_attention; 14, 16, 20 measured


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.partial")


def export_onnx(module, path: str | os.PathLike, image_size: int, output_names: tuple[str, ...],
                batch: int | None = 1, opset: int = 17) -> Path:
    """Trace ``module(image (B,3,s,s), bbox_info (B,3))`` to ONNX; ``batch=None`` = dynamic B."""
    import torch

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 or None (dynamic), got {batch}")
    path = Path(path)
    tmp = _atomic_target(path)
    b = batch or 2
    args = (torch.rand(b, 3, image_size, image_size), torch.zeros(b, 3))
    dynamic = None if batch else {n: {0: "batch"} for n in INPUT_NAMES + output_names}
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy TorchScript exporter is deprecated but needs no onnxscript; shapes are static
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), args, str(tmp), input_names=list(INPUT_NAMES),
                          output_names=list(output_names), opset_version=opset,
                          dynamic_axes=dynamic, dynamo=False, do_constant_folding=True)
    os.replace(tmp, path)
    return path


def simplify(path: str | os.PathLike) -> Path:
    """Simplify in place with onnxslim (constant folding, fusion); checks the result loads."""
    import onnx
    import onnxslim

    path = Path(path)
    model = onnxslim.slim(onnx.load(str(path)))
    onnx.checker.check_model(model)
    tmp = _atomic_target(path)
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike,
            keep_fp32: Iterable[str] = ()) -> Path:
    """Mixed-precision FP16 graph with fp32 I/O (keep_io_types); ops that must stay fp32
    (normalisation statistics, Softmax accumulations handled by the converter) are blocked,
    and so are the nodes named in ``keep_fp32``."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     op_block_list=["Resize", "TopK", "NonMaxSuppression"],
                                     node_block_list=list(keep_fp32))
    dst = Path(dst)
    tmp = _atomic_target(dst)
    onnx.save(model, str(tmp))
    os.replace(tmp, dst)
    return dst


class _Reader:
    """ONNX Runtime calibration reader over (image, bbox_info) batches."""

    def __init__(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]):
        self._it = iter(batches)

    def get_next(self):
        item = next(self._it, None)
        if item is None:
            return None
        image, bbox = item
        return {"image": image.astype(np.float32), "bbox_info": bbox.astype(np.float32)}

    def rewind(self):  # not needed for MinMax calibration
        raise RuntimeError("calibration data can be read once")


INT8_OPS = ("Conv",)  # attention and heads stay fp32
# Which convs: all of the image backbone (ResNet), and elsewhere (the depth net) those with at
# least INT8_MIN_WEIGHTS weights. The depth net's small and depthwise convs stay fp32: measured
# on 128 crops with the edge-s weights, quantizing them too moved the mesh more (mean vertex
# drift 62 against 37 mm) for no speed (ONNX Runtime, 2-core CPU, batch 1: 16.8 against 16.3 ms,
# within noise), and the ResNet alone would take the bundle past its 30 MB (10.9 against 8.7 MB).
INT8_ALWAYS = ("/backbone/",)
INT8_MIN_WEIGHTS = 16384
# With uint8 activations ONNX Runtime folds a ReLU that follows a quantized conv into that conv's
# output quantization: the range becomes [0, max] instead of the conv's signed range, twice the
# resolution (the ResNet stem's output spans -19..21 on calibration crops), and the ReLU node
# goes. Measured with the stage-6 weights against the fp32 graph on 256 ID test crops (engine
# v2, before the mirror fix; median / p90 / max, mm): translation drift 13 / 51 / 168 against
# 19 / 51 / 208, worst root-relative vertex 17 / 39 / 103 against 22 / 46 / 110; batch 1 on the
# 2-core CPU, 16.8 against 17.4 ms (fp32: 22.2). The ReLUs after a residual Add have no
# quantized input and stay.
# Measured and not taken: leaving the stem and the first residual block in fp32 as well (drift
# 7 / 27 / 65 and 10 / 18 / 48 mm, but 18.3 ms, which would lose INT8's margin to MediaPipe);
# clipping the early activations' ranges to the 99.99th percentile (worse: vertex max 321 mm).
# TensorRT's zero-point-0 int8 keeps its ReLUs (ONNX Runtime folds only asymmetric ranges).
INT8_FOLD = ("Relu",)


def int8_nodes(model, op_types: tuple[str, ...] = INT8_OPS, fold_relu: bool = False) -> list[str]:
    """Names of the nodes to quantize: ``op_types`` in the image backbone, and elsewhere those
    whose constant weight has at least ``INT8_MIN_WEIGHTS`` elements; with ``fold_relu``, also
    the backbone's ReLUs (see ``INT8_FOLD``)."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    names = [n.name for n in model.graph.node if n.op_type in op_types
             and (n.name.startswith(INT8_ALWAYS) or sizes.get(n.input[1], 0) >= INT8_MIN_WEIGHTS)]
    if fold_relu:
        names += [n.name for n in model.graph.node
                  if n.op_type in INT8_FOLD and n.name.startswith(INT8_ALWAYS)]
    return names


def to_int8_qdq(src: str | os.PathLike, dst: str | os.PathLike,
                calibration: Iterable[tuple[np.ndarray, np.ndarray]],
                per_channel: bool = True, op_types: tuple[str, ...] = INT8_OPS,
                symmetric: bool = False) -> Path:
    """Explicit Q/DQ INT8 graph (weights int8 symmetric per-channel, activations per-tensor,
    MinMax calibration). Percentile calibration was measured worse on the stage-3 weights (128
    ID crops against the fp32 graph: worst vertex 673 against 551 mm, PA-MPJPE delta +0.63
    against +0.29 mm, mean vertex 36.1 against 37.4 mm); ONNX Runtime's Entropy method wrote
    the same bytes as MinMax here.

    ``symmetric=False``: uint8 activations with a zero point (U8S8), ONNX Runtime's fast path on
    x86 CPUs without VNNI (measured on the 2-core CPU: 18.3 ms against 26.9 ms for S8S8 at
    batch 1, all convs quantized), with the backbone's ReLUs folded into the outputs of the
    convs before them (``INT8_FOLD``).
    ``symmetric=True``: int8 activations with zero point 0 (S8S8), which TensorRT requires.

    Only ``op_types`` nodes are quantized, and of those the ones ``int8_nodes`` picks: with
    every MatMul quantized too, the camera head's small bbox_info-conditioned activations lost
    the translation (measured: 837 mm max vertex error).

    ``calibration`` yields (image (b,3,s,s) float32 0..1, bbox_info (b,3)) pairs, b the
    graph's batch (``pipeline.calibration_batches``); raises
    ``ValueError`` if it yields nothing.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = list(calibration)
    if not batches:
        raise ValueError("INT8 needs calibration data: pass --calib N (synthetic crops) or "
                         "--calib DIR (your images)")
    dst = Path(dst)
    pre = _atomic_target(dst).with_suffix(".pre.onnx")
    tmp = _atomic_target(dst)
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        nodes = int8_nodes(onnx.load(str(pre)), op_types, fold_relu=not symmetric)
        if not nodes:
            raise ValueError(f"no {'/'.join(op_types)} node to quantize in {src}: "
                             "not a d2a-hmr graph?")
        quantize_static(str(pre), str(tmp), _Reader(batches), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=per_channel,
                        op_types_to_quantize=list(op_types) + list(() if symmetric else INT8_FOLD),
                        nodes_to_quantize=nodes,
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        if not symmetric:  # ONNX Runtime's graph, the one bundles ship
            onnx.save(store_weights_fp16(onnx.load(str(tmp))), str(tmp))
        os.replace(tmp, dst)
    finally:
        for p in (pre, tmp):
            p.unlink(missing_ok=True)
    return dst


FP16_STORAGE_MIN = 1024  # elements: smaller fp32 weights are not worth a Cast node


def store_weights_fp16(model):
    """``model`` (an INT8 Q/DQ graph) with each fp32 weight of at least ``FP16_STORAGE_MIN``
    elements that no Quantize/DequantizeLinear reads stored as fp16 and cast back to fp32 at
    the start of the graph; returns ``model``, changed in place.

    These are the weights the INT8 graph keeps in float (attention, MLPs, heads, small convs:
    1.18 M of edge-s's 4.8 M parameters). The arithmetic stays fp32: ONNX Runtime folds the
    Casts into fp32 constants when it loads the graph. Only the stored values are rounded, by
    at most 2^-11 relative, which INT8's own error dwarfs. Measured on the shipped edge-s:
    ``model_int8.onnx`` 8.69 -> 6.34 MB, the bundle 30.70 -> 28.36 MB. The
    scales and zero points stay initializers (ONNX Runtime fuses Q/DQ pairs only around
    constant ones), and so do the int8 weights and int32 biases."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    qdq = {i for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           for i in n.input}
    casts = []
    for t in list(g.initializer):
        if (t.data_type != onnx.TensorProto.FLOAT or t.name in qdq
                or int(np.prod(t.dims)) < FP16_STORAGE_MIN):
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16),
                                       f"{t.name}_fp16")
        g.initializer.remove(t)
        g.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [t.name], name=f"{t.name}_fp16_cast",
                                      to=onnx.TensorProto.FLOAT))
    nodes = casts + list(g.node)  # first, so that the nodes stay topologically sorted
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def ort_session(path: str | os.PathLike, providers: list[str] | None = None):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
