"""``--format torch-trt``: the fused module compiled with Torch-TensorRT, for PyTorch users.

NOT VERIFIED ON HARDWARE HERE (torch_tensorrt needs a CUDA machine with TensorRT). Saves an
``ExportedProgram`` (``model_torchtrt.ep``) that ``torch.export.load`` reads without the training
code. FP16 uses ``enabled_precisions``; INT8 is refused (use the Q/DQ ONNX + TensorRT path).
"""
from __future__ import annotations

import os
from pathlib import Path

from d2a_edge.training.inference import FusedGraph


def export_torch_trt(model, out: Path, req) -> Path:
    import torch
    import torch_tensorrt

    if req.int8:
        raise ValueError("--format torch-trt does not produce INT8; use --format trt --int8")
    size, b = model.cfg.image_size, req.batch or 1
    graph = FusedGraph(model).cuda().eval()
    inputs = [torch.rand(b, 3, size, size, device="cuda"), torch.zeros(b, 3, device="cuda")]
    precisions = {torch.float16, torch.float32} if req.fp16 else {torch.float32}
    trt_module = torch_tensorrt.compile(graph, ir="dynamo", inputs=inputs,
                                        enabled_precisions=precisions)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model_torchtrt.ep"
    tmp = out / ".model_torchtrt.ep.partial"
    torch_tensorrt.save(trt_module, str(tmp), inputs=inputs)
    os.replace(tmp, path)
    return path
