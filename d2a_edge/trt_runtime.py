"""TensorRT plan execution with device buffers allocated once and I/O addressed by tensor name.

NOT VERIFIED ON HARDWARE HERE: neither the development machine nor the lent GPU machine has
TensorRT. Written to the TensorRT 10/11 name-based API (``set_tensor_address`` +
``execute_async_v3``); CUDA calls go through cuda-python (``cuda.bindings.runtime``, or the older
``cuda.cudart``), or pycuda where it is the only binding installed (many Jetson images).
Every TensorRT name used here exists in the bindings of TensorRT 10.3, 10.13, 11.0 and 11.4
(``scripts/trt_api_check.py``).
Every CUDA call passes through ``cuda_call`` (one checker).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from d2a_edge.backends import BackendUnavailable, fixed_batch_chunks
from d2a_edge.bundle import BundleError


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart



class PlanNotLoadable(BundleError, BackendUnavailable):
    """TensorRT could not deserialize the plan: corrupt, or built for another GPU or TensorRT
    version (plans are not portable). ``backend="auto"`` goes on to ONNX Runtime."""

class CudaError(RuntimeError):
    """A CUDA runtime call failed (no usable GPU or driver, out of memory, ...)."""


class CudaRT:
    """The few CUDA runtime calls the backend needs, through cuda-python."""

    def __init__(self, cudart):
        self.rt = cudart

    def cuda_call(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, msg = self.rt.cudaGetErrorString(err)
            if isinstance(msg, bytes):
                msg = msg.decode(errors="replace")
            raise CudaError(f"CUDA error {int(err)}: {msg}")
        return rest[0] if len(rest) == 1 else rest

    def stream(self):
        return self.cuda_call(self.rt.cudaStreamCreate())

    def alloc(self, nbytes: int) -> int:
        return int(self.cuda_call(self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self.cuda_call(self.rt.cudaFree(ptr))

    def h2d(self, ptr: int, arr: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.cuda_call(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, stream))

    def d2h(self, arr: np.ndarray, ptr: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.cuda_call(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, stream))

    def sync(self, stream) -> None:
        self.cuda_call(self.rt.cudaStreamSynchronize(stream))

    @staticmethod
    def handle(stream) -> int:
        return int(stream)


class PyCudaRT:
    """The same calls through pycuda (errors raise pycuda's own exceptions)."""

    def __init__(self):
        import pycuda.driver as cuda
        try:
            import pycuda.autoinit  # noqa: F401  (creates the context)
        except ImportError:
            raise
        except Exception as e:  # pycuda's own errors: no device, no driver
            raise CudaError(f"pycuda could not create a CUDA context: {e}") from e
        self.cuda, self._allocs = cuda, {}

    def stream(self):
        return self.cuda.Stream()

    def alloc(self, nbytes: int) -> int:
        a = self.cuda.mem_alloc(nbytes)
        self._allocs[int(a)] = a
        return int(a)

    def free(self, ptr: int) -> None:
        self._allocs.pop(ptr).free()

    def h2d(self, ptr, arr, stream):
        self.cuda.memcpy_htod_async(ptr, arr, stream)

    def d2h(self, arr, ptr, stream):
        self.cuda.memcpy_dtoh_async(arr, ptr, stream)

    def sync(self, stream):
        stream.synchronize()

    @staticmethod
    def handle(stream) -> int:
        return int(stream.handle)


def cuda_api():
    cudart = _import_cudart()
    if cudart is not None:
        return CudaRT(cudart)
    try:
        return PyCudaRT()
    except ImportError as e:
        raise BackendUnavailable("TensorRT needs cuda-python (pip install cuda-python) or "
                                 "pycuda") from e


class TensorRTBackend:
    """A TensorRT engine with buffers for its largest profile batch; use as a context manager."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, plan: Path, outputs: list[str]):
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendUnavailable("tensorrt is not installed (pip install 'd2a-edge[trt]')") from e
        self.trt, self.outputs = trt, outputs
        self.buffers: dict[str, tuple[int, np.ndarray]] = {}
        try:  # CUDA first: without a usable GPU, deserializing would fail as if the plan were bad
            self.api = cuda_api()
            self.stream = self.api.stream()
        except CudaError as e:
            raise BackendUnavailable(f"TensorRT is installed but CUDA is not usable here: {e}") \
                from e
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # kept: a runtime must outlive its engines
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise PlanNotLoadable(f"{plan} is not a TensorRT plan for this TensorRT version and "
                                  "GPU (corrupt, or built elsewhere): rebuild it with d2a-export "
                                  "--format trt")
        self.context = self.engine.create_execution_context()
        try:
            self._allocate(plan)
        except BaseException:
            self.close()
            raise

    def _allocate(self, plan: Path) -> None:
        """Device + host buffers for every I/O tensor, bound to the context by name."""
        trt, outputs = self.trt, self.outputs
        image_shape = tuple(self.engine.get_tensor_shape("image"))
        self.static_batch = None if image_shape[0] == -1 else int(image_shape[0])
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.engine.get_tensor_shape(name))
            if -1 in shape:  # dynamic batch: size buffers for the profile's max
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[2]) \
                    if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT \
                    else (self._max_batch(),) + shape[1:]
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            host = np.empty(shape, dtype)
            self.buffers[name] = (self.api.alloc(host.nbytes), host)
            self.context.set_tensor_address(name, self.buffers[name][0])
        missing = [o for o in outputs if o not in self.buffers]
        if missing:
            raise BundleError(f"{plan}: engine lacks outputs {missing} (another model version?)")

    def _max_batch(self) -> int:
        return int(self.engine.get_tensor_profile_shape("image", 0)[2][0])

    def run(self, image: np.ndarray, bbox_info: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for a batch of any size: one that exceeds the engine's largest batch (a plan
        built for batch 1, the default of ``d2a-export --format trt``) runs in chunks, and a
        static-batch engine gets its last chunk padded."""
        step = self.buffers["image"][1].shape[0]
        if self.static_batch:
            chunks = fixed_batch_chunks(image, bbox_info, step)
        else:
            chunks = ((image[i:i + step], bbox_info[i:i + step], min(step, len(image) - i))
                      for i in range(0, len(image), step))
        parts = [(self._run(x, b), rows) for x, b, rows in chunks]
        return {name: np.concatenate([p[name][:rows] for p, rows in parts])
                for name in self.outputs}

    def _run(self, image: np.ndarray, bbox_info: np.ndarray) -> dict[str, np.ndarray]:
        rows = image.shape[0]
        for name, arr in (("image", image), ("bbox_info", bbox_info)):
            ptr, host = self.buffers[name]
            self.context.set_input_shape(name, arr.shape)
            self.api.h2d(ptr, np.ascontiguousarray(arr, host.dtype), self.stream)
        if not self.context.execute_async_v3(self.api.handle(self.stream)):
            raise RuntimeError("TensorRT execution failed")
        out = {}
        for name in self.outputs:
            ptr, host = self.buffers[name]
            view = host[:rows]
            self.api.d2h(view, ptr, self.stream)
            out[name] = view
        self.api.sync(self.stream)
        return {k: v.astype(np.float32, copy=True) for k, v in out.items()}

    def close(self) -> None:
        for ptr, _ in self.buffers.values():
            self.api.free(ptr)
        self.buffers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
