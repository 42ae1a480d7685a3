"""The SDK's TensorRT backend (``d2a_edge.trt_runtime``) driven through a fake ``tensorrt`` module
and fake device memory: buffer sizing for a dynamic-batch plan, I/O by tensor name, the batch
limit, clean-up, and what happens when CUDA is not usable (auto falls back to ONNX Runtime).
Real TensorRT is not installed here; the names used are checked against the real bindings by
``scripts/trt_api_check.py``."""
import json
import shutil
import sys
import types

import numpy as np
import pytest

MAX_BATCH = 4
OUTPUTS = {"pose": (25, 3, 3), "shape": (16,), "translation": (3,), "joint_sigma": (25, 3)}
INPUTS = {"image": (3, 8, 8), "bbox_info": (3,)}


class FakeDevice:
    """cuda_api()'s interface over host arrays; ``fail`` makes the first call fail like a
    machine whose driver is too old."""

    def __init__(self, fail=False):
        self.mem, self.next, self.fail, self.runs = {}, 4096, fail, 0

    def stream(self):
        if self.fail:
            from d2a_edge.trt_runtime import CudaError
            raise CudaError("CUDA error 35: CUDA driver version is insufficient for CUDA "
                            "runtime version")
        return "stream"

    def alloc(self, nbytes):
        ptr, self.next = self.next, self.next + nbytes + 256
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def free(self, ptr):
        del self.mem[ptr]

    def h2d(self, ptr, arr, stream):
        self.mem[ptr][:arr.nbytes] = np.frombuffer(arr.tobytes(), np.uint8)

    def d2h(self, arr, ptr, stream):
        arr[...] = np.frombuffer(self.mem[ptr][:arr.nbytes].tobytes(), arr.dtype).reshape(arr.shape)

    def sync(self, stream):
        pass

    @staticmethod
    def handle(stream):
        return 1


def fake_tensorrt(device, static_batch=None):
    """A ``tensorrt`` module whose plan is a dynamic-batch engine (or one of ``static_batch``)
    with the SDK's I/O; it "runs" by writing, for sample n, output[n] = mean(image[n]) +
    sum(bbox_info[n]), and counts its executions in ``device.runs``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.4.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.nptype = lambda dtype: np.float32

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def __init__(self):
            self.address, self.shapes = {}, {}

        def set_tensor_address(self, name, ptr):
            self.address[name] = ptr

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def execute_async_v3(self, stream):
            B = self.shapes["image"][0]
            assert static_batch in (None, B), "a static engine takes exactly its batch"
            device.runs += 1
            assert self.shapes["bbox_info"] == (B, 3)
            read = {}
            for name, tail in INPUTS.items():
                arr = np.empty((B, *tail), np.float32)
                device.d2h(arr, self.address[name], stream)
                read[name] = arr
            value = read["image"].reshape(B, -1).mean(1) + read["bbox_info"].sum(1)
            for name, tail in OUTPUTS.items():
                out = np.broadcast_to(value.reshape(B, *[1] * len(tail)), (B, *tail))
                device.h2d(self.address[name], np.ascontiguousarray(out, np.float32), stream)
            return True

    class Engine:
        names = list(INPUTS) + list(OUTPUTS)
        num_io_tensors = len(names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_shape(self, name):
            return (static_batch or -1, *{**INPUTS, **OUTPUTS}[name])

        def get_tensor_mode(self, name):
            return "INPUT" if name in INPUTS else "OUTPUT"

        def get_tensor_profile_shape(self, name, profile):
            assert name in INPUTS and profile == 0
            return [(b, *INPUTS[name]) for b in (1, 2, MAX_BATCH)]

        def get_tensor_dtype(self, name):
            return "FLOAT"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"fake plan" else None

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """(device, plan factory) with the fake tensorrt importable and cuda_api() faked."""
    from d2a_edge import trt_runtime
    device = FakeDevice()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(device))
    monkeypatch.setattr(trt_runtime, "cuda_api", lambda: device)
    return device


def test_dynamic_batch_plan_runs_by_tensor_name_and_frees_its_buffers(fake_trt, tmp_path):
    from d2a_edge.trt_runtime import TensorRTBackend
    plan = tmp_path / "model_fp32.plan"
    plan.write_bytes(b"fake plan")
    be = TensorRTBackend(plan, list(OUTPUTS))
    assert {k: h.shape for k, (_, h) in be.buffers.items()} == {
        k: (MAX_BATCH, *t) for k, t in {**INPUTS, **OUTPUTS}.items()}
    rng = np.random.default_rng(0)
    # batches beyond the profile's maximum (the locator's windows, many people) run in chunks
    for B, runs in ((3, 1), (1, 1), (MAX_BATCH, 1), (MAX_BATCH + 1, 2), (2 * MAX_BATCH + 3, 3)):
        fake_trt.runs = 0
        check_outputs(be, rng, B)
        assert fake_trt.runs == runs
    be.close()
    assert fake_trt.mem == {}


def check_outputs(be, rng, B):
    image = rng.random((B, *INPUTS["image"]), np.float32)
    bbox = rng.random((B, 3), np.float32)
    out = be.run(image, bbox)
    want = image.reshape(B, -1).mean(1) + bbox.sum(1)
    for name, tail in OUTPUTS.items():
        assert out[name].shape == (B, *tail) and out[name].dtype == np.float32
        np.testing.assert_allclose(out[name].reshape(B, -1), np.repeat(want[:, None],
                                   int(np.prod(tail)), 1), rtol=1e-6)


def test_static_batch_plan_pads_its_last_chunk(monkeypatch, tmp_path):
    from d2a_edge import trt_runtime
    device = FakeDevice()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(device, static_batch=2))
    monkeypatch.setattr(trt_runtime, "cuda_api", lambda: device)
    plan = tmp_path / "model_fp32.plan"
    plan.write_bytes(b"fake plan")
    be = trt_runtime.TensorRTBackend(plan, list(OUTPUTS))
    rng = np.random.default_rng(1)
    for B, runs in ((1, 1), (2, 1), (5, 3)):
        device.runs = 0
        check_outputs(be, rng, B)
        assert device.runs == runs
    be.close()
    assert device.mem == {}


def test_corrupt_plan_and_missing_outputs_are_bundle_errors_and_leak_nothing(fake_trt, tmp_path):
    from d2a_edge.bundle import BundleError
    from d2a_edge.trt_runtime import TensorRTBackend
    bad = tmp_path / "bad.plan"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(BundleError, match="not a TensorRT plan"):
        TensorRTBackend(bad, list(OUTPUTS))
    plan = tmp_path / "model_fp32.plan"
    plan.write_bytes(b"fake plan")
    with pytest.raises(BundleError, match=r"lacks outputs \['vertices'\]"):
        TensorRTBackend(plan, [*OUTPUTS, "vertices"])
    assert fake_trt.mem == {}  # the buffers allocated before the check were freed


def test_unusable_cuda_makes_tensorrt_unavailable_and_auto_falls_back(fake_trt, tmp_path,
                                                                       caplog):
    """TensorRT installed, a plan in the bundle, but no usable GPU (e.g. a container started
    without GPUs): BackendUnavailable naming the CUDA error; backend="auto" then uses ONNX
    Runtime instead of failing."""
    from d2a_edge.backends import BackendUnavailable, make_backend
    from d2a_edge.bundle import DEFAULT_MODEL, load_bundle
    from d2a_edge.trt_runtime import TensorRTBackend
    fake_trt.fail = True
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_MODEL, root)
    (root / "model_fp32.plan").write_bytes(b"fake plan")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"]["fp32-trt"] = {"file": "model_fp32.plan", "format": "trt"}
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable, match="CUDA is not usable here: CUDA error 35"):
        TensorRTBackend(root / "model_fp32.plan", list(OUTPUTS))
    bundle = load_bundle(root)
    with pytest.raises(BackendUnavailable, match="driver version is insufficient"):
        make_backend(bundle, "tensorrt")
    assert make_backend(bundle, "auto").name == "onnxruntime"


def test_a_plan_from_another_gpu_falls_back_to_onnx_runtime(fake_trt, tmp_path):
    """A plan that TensorRT cannot deserialize (copied from another GPU or TensorRT version,
    with the manifest's sha256 intact): backend="tensorrt" names it, backend="auto" uses ONNX
    Runtime (it raised BundleError)."""
    from d2a_edge.backends import make_backend
    from d2a_edge.body import file_sha256
    from d2a_edge.bundle import DEFAULT_MODEL, BundleError, load_bundle
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_MODEL, root)
    plan = root / "model_fp32.plan"
    plan.write_bytes(b"\x00garbage")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["artifacts"]["fp32-trt"] = {"file": plan.name, "format": "trt",
                                         "bytes": plan.stat().st_size,
                                         "sha256": file_sha256(plan)}
    (root / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(root)
    with pytest.raises(BundleError, match="not a TensorRT plan"):
        make_backend(bundle, "tensorrt")
    assert make_backend(bundle, "auto").name == "onnxruntime"
    assert fake_trt.mem == {}


def test_cuda_python_errors_are_decoded():
    """CudaRT over a cudart whose calls return an error code (cuda-python returns tuples)."""
    from d2a_edge.trt_runtime import CudaError, CudaRT
    rt = types.SimpleNamespace(
        cudaStreamCreate=lambda: (35, None),
        cudaMalloc=lambda n: (0, 1234),
        cudaGetErrorString=lambda err: (0, b"CUDA driver version is insufficient"))
    api = CudaRT(rt)
    assert api.alloc(16) == 1234
    with pytest.raises(CudaError, match="^CUDA error 35: CUDA driver version is insufficient$"):
        api.stream()
