"""Inference backends behind one small interface: ``run(image, bbox_info) -> dict[str, ndarray]``.

- ``OnnxRuntimeBackend``: CUDA execution provider when present, else CPU.
- ``TensorRTBackend``: a serialized plan; device buffers allocated once, I/O by tensor name,
  cuda-python (or pycuda where it is the only binding). NOT VERIFIED ON HARDWARE HERE (no
  TensorRT on the development or GPU test machines); written to the TensorRT 10/11 APIs.
- ``TorchBackend``: the PyTorch checkpoint through the training code (needs ``[train]``).
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from d2a_edge.bundle import BundleError, ModelBundle
from d2a_edge.tracking import check_count

log = logging.getLogger("d2a_edge")
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (missing package, file or device)."""


def fixed_batch_chunks(image: np.ndarray, bbox_info: np.ndarray, batch: int):
    """``(image, bbox_info, rows)`` chunks of exactly ``batch`` crops for a graph with a fixed
    batch, the last padded with zero crops; ``rows`` is how many of the chunk's are real."""
    for i in range(0, len(image), batch):
        x, b = image[i:i + batch], bbox_info[i:i + batch]
        rows = len(x)
        if rows < batch:
            x = np.concatenate([x, np.zeros((batch - rows, *x.shape[1:]), x.dtype)])
            b = np.concatenate([b, np.zeros((batch - rows, *b.shape[1:]), b.dtype)])
        yield x, b, rows


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, path: Path, outputs: list[str], device: str = "auto",
                 image_size: int | None = None, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from e
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise BackendUnavailable("device='cuda' but ONNX Runtime has no CUDA provider "
                                     f"(available: {available}); pip install onnxruntime-gpu")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:  # the engine's CPU threads (ONNX Runtime's default: all cores)
            opts.intra_op_num_threads = threads
        # ONNX Runtime's default spinning pool stays on: MeshRecoverer keeps OpenCV and BLAS on
        # the calling thread (OneThreadHelpers), so nothing else competes for the cores. Measured
        # on the 2-core CPU, fp32 batch 1 end to end: 25.4 ms spinning, 31.1 ms without.
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types
            raise BundleError(f"{path} is not a loadable ONNX model ({type(e).__name__}: "
                              f"{str(e)[:200]})") from e
        names = {o.name for o in self.session.get_outputs()}
        inputs = {i.name for i in self.session.get_inputs()}
        if not set(outputs) <= names or inputs != {"image", "bbox_info"}:
            raise BundleError(f"{path}: graph I/O {sorted(inputs)} -> {sorted(names)} does not "
                              f"match the manifest ({outputs}): from another model version?")
        shape = self.session.get_inputs()[0].shape  # (batch, 3, s, s)
        if image_size is not None and list(shape[1:]) != [3, image_size, image_size]:
            raise BundleError(f"{path} takes images of shape {shape[1:]}, the manifest says "
                              f"[3, {image_size}, {image_size}]: graph and manifest are from "
                              "different exports")
        self.outputs = outputs
        self.device = "cuda" if providers[0].startswith("CUDA") else "cpu"
        b = shape[0]
        self.fixed_batch = b if isinstance(b, int) else None  # run larger batches in chunks

    def run(self, image: np.ndarray, bbox_info: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for any number of crops; a graph with a fixed batch runs them in chunks of
        that batch, the last padded."""
        if self.fixed_batch is None:
            out = self.session.run(self.outputs, {"image": image, "bbox_info": bbox_info})
            return dict(zip(self.outputs, out))
        parts = [(self.session.run(self.outputs, {"image": x, "bbox_info": b}), rows)
                 for x, b, rows in fixed_batch_chunks(image, bbox_info, self.fixed_batch)]
        return {name: np.concatenate([p[k][:rows] for p, rows in parts])
                for k, name in enumerate(self.outputs)}


TORCH_EXTRA = "the torch backend needs the [train] extra (pip install 'd2a-edge[train]')"


class TorchBackend:
    name = "torch"

    def __init__(self, checkpoint: Path, outputs: list[str], device: str = "auto"):
        try:
            from d2a_edge.training.inference import load_inference_module
        except ImportError as e:
            raise BackendUnavailable(f"{TORCH_EXTRA} ({e})") from e
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("device='cuda' but PyTorch sees no CUDA GPU "
                                     f"(torch {torch.__version__})")
        dev = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        self.module = load_inference_module(checkpoint).to(dev).eval()
        self.torch, self.device, self.outputs = torch, dev, outputs

    def run(self, image: np.ndarray, bbox_info: np.ndarray) -> dict[str, np.ndarray]:
        t = self.torch
        with t.inference_mode():
            out = self.module(t.from_numpy(image).to(self.device),
                              t.from_numpy(bbox_info).to(self.device))
        return {k: v.float().cpu().numpy() for k, v in zip(self.outputs, out)}


def make_backend(bundle: ModelBundle, backend: str = "auto", device: str = "auto",
                 precision: str = "fp32", threads: int | None = None):
    """Pick and build a backend; ``auto`` = TensorRT plan -> ONNX Runtime -> torch (logged).
    ``threads``: the ONNX Runtime engine's CPU threads (None: all cores); TensorRT runs on the
    GPU and ignores it; the torch backend refuses it (its thread count is the process's)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} not in {BACKENDS}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {PRECISIONS}")
    if device not in DEVICES:
        raise ValueError(f"device {device!r} not in {DEVICES}")
    if threads is not None:  # None: all cores
        check_count("threads", threads)
    outputs = list(bundle.manifest["outputs"])
    tried = []
    for name in (("tensorrt", "onnxruntime", "torch") if backend == "auto" else (backend,)):
        try:
            b = _build(name, bundle, outputs, device, precision, threads)
        except BackendUnavailable as e:
            if backend != "auto":
                raise
            tried.append(f"{name}: {e}")
            continue
        log.info("d2a_edge: backend %s (%s, %s) for model %s", b.name, precision,
                 getattr(b, "device", "?"), bundle.name)
        return b
    raise BackendUnavailable("no backend can run this model: " + "; ".join(tried))


def _build(name: str, bundle: ModelBundle, outputs: list[str], device: str, precision: str,
           threads: int | None = None):
    if name == "tensorrt":
        from d2a_edge.trt_runtime import TensorRTBackend
        try:
            plan = bundle.artifact(precision, "trt")
        except BundleError as e:  # a plan deleted or changed since export: try the next backend
            raise BackendUnavailable(str(e)) from e
        if plan is None:
            raise BackendUnavailable(f"no {precision} TensorRT plan in {bundle.root}")
        return TensorRTBackend(plan, outputs)
    if name == "onnxruntime":
        path = bundle.artifact(precision, "onnx")
        if path is None:
            have = sorted(bundle.manifest["artifacts"])
            raise BackendUnavailable(f"no {precision} ONNX model in {bundle.root} (has {have})")
        return OnnxRuntimeBackend(path, outputs, device, bundle.image_size, threads)
    if threads is not None:
        raise BackendUnavailable("threads= sets ONNX Runtime's engine threads; the torch "
                                 "backend uses the process's torch.set_num_threads()")
    if importlib.util.find_spec("torch") is None:  # before the checkpoint: no recipe helps
        raise BackendUnavailable(TORCH_EXTRA)
    ckpt = bundle.checkpoint()
    if ckpt is None:
        raise BackendUnavailable(
            f"no PyTorch checkpoint for {bundle.root} on this machine (a shipped bundle holds "
            f"the ONNX graph only); to run it in PyTorch, recover its weights and export them: "
            f"python -m d2a_edge.training.recover {bundle.root} --out RUN, then d2a-export RUN "
            f"--out BUNDLE and MeshRecoverer(BUNDLE, backend='torch')")
    return TorchBackend(ckpt, outputs, device)
