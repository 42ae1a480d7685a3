"""CUDA linear blend skinning: thin wrapper over the compiled ``d2a_edge._lbs_cuda`` (csrc/).

Same semantics as the oracle ``d2a_edge.body.lbs_torch.lbs`` (fp32, no ``posedirs``). Imports
neither torch nor the extension at import time: ``load_extension()`` imports the extension on
first use, ``lbs_torch_cuda`` imports torch inside the call.

Raw-pointer use (TensorRT buffers, cuda-python)::

    with body_buffers(asset, max_batch=8) as buf:   # uploads the body once
        buf.lbs(rotmats_ptr, betas_ptr, transl_ptr, verts_ptr, joints_ptr, batch, stream)
        buf.lbs(..., stream, skin="tc")   # shape blend on TF32 tensor cores (sm_80+, S <= 32)

Pointers are ints to fp32 C-contiguous device memory on ``buf.device``: rotmats (B, J, 3, 3),
betas (B, S), transl (B, 3) in; verts (B, V, 3), joints (B, J, 3) out; ``stream`` is a
``cudaStream_t`` as int (0 = default stream). The call only enqueues work on that stream.
The binding checks each pointer (not null, aligned, device memory on ``buf.device``) but cannot
see how large the allocation behind it is: buffers smaller than those shapes for ``batch``
(verts sized for the coarse mesh on a full-mesh ``buf``, say) are read or written out of
bounds. ``lbs_torch_cuda`` checks the shapes of torch tensors for you.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

EXTENSION = "d2a_edge._lbs_cuda"
_BUILD_HINT = ("it is built by CMake (csrc/) when the package is installed on a machine with a "
               "CUDA compiler: `pip install -e .` with nvcc on PATH (see csrc/README.md)")


def load_extension() -> ModuleType:
    """The compiled module ``d2a_edge._lbs_cuda``; ImportError saying how to build it."""
    try:
        return importlib.import_module(EXTENSION)
    except ImportError as err:
        raise ImportError(f"the CUDA skinning extension {EXTENSION} is not available ({err}); "
                          f"{_BUILD_HINT}") from err


def is_available() -> bool:
    """True if the extension imports and sees at least one CUDA device; False also when the
    CUDA runtime fails to count them (a driver that does not match, devices busy), so that
    ``skinning="auto"`` falls back to numpy."""
    try:
        return load_extension().device_count() > 0
    except (ImportError, RuntimeError):
        return False


def refuse_pose_correctives(asset) -> None:
    """ValueError for a body with ``posedirs`` (SMPL's pose correctives): the kernel has none."""
    if asset.posedirs is not None:
        raise ValueError(f"body {asset.name!r} has posedirs (pose correctives), which the CUDA "
                         "kernel does not support; use d2a_edge.body.lbs_torch.lbs or "
                         "d2a_edge.body.lbs_numpy.lbs")


def body_buffers(asset, max_batch: int = 256, device: int = -1, mesh="full"):
    """Upload ``asset`` (a ``BodyAsset``) to GPU ``device`` (-1: current) for up to ``max_batch``.

    ``mesh``: the output resolution (``BodyAsset.mesh_index``): "full", "coarse" or a vertex
    index array; the kernel then skins only those vertices (``verts`` is (B, N, 3)).
    Returns ``_lbs_cuda.BodyBuffers`` (``close()`` / context manager). ValueError for
    ``posedirs`` (not supported here; use ``lbs_torch`` / ``lbs_numpy``) or bad arrays;
    RuntimeError when CUDA fails (e.g. no GPU or driver).
    """
    refuse_pose_correctives(asset)
    arrays = asset.lbs_arrays()
    return load_extension().BodyBuffers(**arrays, vertex_index=asset.mesh_index(mesh),
                                        max_batch=max_batch, device=device)


def _check_tensor(torch, name: str, t, device_index: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cuda" or t.device.index != device_index:
        raise ValueError(f"{name} must be on cuda:{device_index} (where the BodyBuffers live), "
                         f"got {t.device}")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous; call .contiguous() first")


def lbs_torch_cuda(rotmats, betas, transl, buffers, skin: str = "auto"):
    """Posed ``verts (B, V, 3)`` and ``joints (B, J, 3)`` float32 CUDA tensors.

    rotmats: (B, J, 3, 3); betas: (B, S); transl: (B, 3) root joint position; all float32,
    contiguous, on ``cuda:buffers.device``. Runs on torch's current stream of that device.
    ``skin``: "simt" (CUDA cores), "tc" (the shape blend on TF32 tensor cores in 3xTF32, compute
    capability 8.0+ and at most 32 betas) or "auto" (currently "simt").
    """
    import torch  # only here: the SDK stays torch-free at import

    if buffers.closed:
        raise RuntimeError("these BodyBuffers are closed; create new ones with body_buffers()")
    J, S, V, dev = buffers.num_joints, buffers.num_betas, buffers.num_vertices, buffers.device
    for name, t in (("rotmats", rotmats), ("betas", betas), ("transl", transl)):
        _check_tensor(torch, name, t, dev)
    B = rotmats.shape[0] if rotmats.ndim == 4 else -1
    if (tuple(rotmats.shape) != (B, J, 3, 3) or tuple(betas.shape) != (B, S)
            or tuple(transl.shape) != (B, 3)):
        raise ValueError(f"expected rotmats (B, {J}, 3, 3), betas (B, {S}), transl (B, 3); got "
                         f"{tuple(rotmats.shape)}, {tuple(betas.shape)}, {tuple(transl.shape)}")
    if not 1 <= B <= buffers.max_batch:
        raise ValueError(f"batch must be in [1, {buffers.max_batch}] (max_batch of these "
                         f"BodyBuffers), got {B}")
    verts = torch.empty((B, V, 3), dtype=torch.float32, device=rotmats.device)
    joints = torch.empty((B, J, 3), dtype=torch.float32, device=rotmats.device)
    stream = torch.cuda.current_stream(rotmats.device).cuda_stream
    buffers.lbs(rotmats.data_ptr(), betas.data_ptr(), transl.data_ptr(), verts.data_ptr(),
                joints.data_ptr(), B, stream, skin=skin)
    return verts, joints


class CudaSkinner:
    """Numpy in, numpy out LBS through the kernel, for the SDK's GPU backends.

    ``skinner(rotmats, betas, transl) -> (verts, joints)`` like ``BodyModel``; the body is
    uploaded once, inputs go up and outputs come back through torch, in chunks of ``max_batch``.
    """

    def __init__(self, asset, max_batch: int = 64, device: int = 0, mesh="full"):
        refuse_pose_correctives(asset)  # before the GPU: it is the body, wherever this runs
        try:
            import torch
        except ImportError as e:
            raise ImportError("CUDA skinning moves arrays with torch, which is not installed; "
                              "use skinning='numpy'") from e
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA skinning needs a CUDA GPU that torch can see; "
                               "use skinning='numpy'")
        self.torch, self.device = torch, torch.device("cuda", device)
        self.buffers = body_buffers(asset, max_batch=max_batch, device=device, mesh=mesh)

    def __call__(self, rotmats, betas, transl) -> tuple[np.ndarray, np.ndarray]:
        t, n, step = self.torch, len(rotmats), self.buffers.max_batch
        if n == 0:  # nobody: empty arrays, as BodyModel gives
            return (np.zeros((0, self.buffers.num_vertices, 3), np.float32),
                    np.zeros((0, self.buffers.num_joints, 3), np.float32))
        up = [t.from_numpy(np.ascontiguousarray(a, np.float32)).to(self.device)
              for a in (rotmats, betas, transl)]
        verts, joints = [], []
        for i in range(0, n, step):
            v, j = lbs_torch_cuda(*(a[i:i + step] for a in up), self.buffers)
            verts.append(v)
            joints.append(j)
        return t.cat(verts).cpu().numpy(), t.cat(joints).cpu().numpy()
