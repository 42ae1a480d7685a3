"""``--format torch-trt``: the fused module compiled with Torch-TensorRT, for PyTorch users.

NOT VERIFIED ON HARDWARE HERE (torch_tensorrt needs a CUDA machine with TensorRT). Saves an
``ExportedProgram`` (``model_torchtrt.pt2``: torch 2.14 warns on a name not ending in .pt2) that
``torch.export.load`` reads without the training code. INT8 is refused (use the Q/DQ ONNX +
TensorRT path). How FP16 is asked for depends on the torch_tensorrt version
(``precision_kwargs``).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

from d2a_edge.training.inference import FusedGraph


def precision_kwargs(torch_tensorrt, fp16: bool) -> dict:
    """The keyword arguments of ``torch_tensorrt.compile(ir="dynamo")`` that ask for FP16.

    Read from the signature of ``torch_tensorrt.dynamo.compile`` (the wheels' sources):

    - 2.12 and later have ``enable_autocast`` (+ ``autocast_low_precision_type``). 2.12 types
      explicitly by default and rejects ``enabled_precisions`` with fp16 (AssertionError);
      2.13 and later no longer pass ``enabled_precisions`` on to the dynamo path at all, so it
      would silently build fp32.
    - Before that (e.g. 2.9): weak typing, ``enabled_precisions={fp16, fp32}``.
    """
    import torch
    if not fp16:
        return {}
    params = inspect.signature(torch_tensorrt.dynamo.compile).parameters
    if "enable_autocast" in params:
        return {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    if "enabled_precisions" in params:
        return {"enabled_precisions": {torch.float16, torch.float32}}
    raise RuntimeError(f"torch_tensorrt {getattr(torch_tensorrt, '__version__', '?')}: its "
                       "dynamo compile takes neither enable_autocast nor enabled_precisions; "
                       "cannot ask it for FP16")


def export_torch_trt(model, out: Path, req) -> Path:
    import torch
    import torch_tensorrt

    if req.int8:
        raise ValueError("--format torch-trt does not produce INT8; use --format trt --int8")
    size, b = model.cfg.image_size, req.batch or 1
    graph = FusedGraph(model).cuda().eval()
    inputs = [torch.rand(b, 3, size, size, device="cuda"), torch.zeros(b, 3, device="cuda")]
    trt_module = torch_tensorrt.compile(graph, ir="dynamo", inputs=inputs,
                                        **precision_kwargs(torch_tensorrt, req.fp16))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model_torchtrt.pt2"
    tmp = out / ".model_torchtrt.partial.pt2"
    torch_tensorrt.save(trt_module, str(tmp), inputs=inputs)
    os.replace(tmp, path)
    return path
