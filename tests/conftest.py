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


requires_torch = pytest.mark.skipif(not has_module("torch"), reason="needs torch ([train] extra)")
requires_anny = pytest.mark.skipif(not has_module("anny"), reason="needs anny ([train] extra)")
requires_gpu = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (none here)")
requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")


@pytest.fixture(scope="session")
def anny_asset():
    """The default Anny body asset (full mesh, 25 joints, 16 betas)."""
    if not has_module("anny"):
        pytest.skip("needs anny ([train] extra)")
    from d2a_edge.body import load_body
    return load_body("anny")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
