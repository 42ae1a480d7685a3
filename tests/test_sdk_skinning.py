"""The SDK's skinning choice: numpy ``BodyModel`` or the CUDA kernel (``skinning_cuda.CudaSkinner``)."""
import numpy as np
import pytest

from conftest import cuda_available, requires_gpu
from d2a_edge import MeshRecoverer, load_bundle
from d2a_edge.body import BodyModel
from d2a_edge.recoverer import make_skinner

SAMPLES = sorted(__import__("pathlib").Path(__file__).resolve().parents[1].glob("samples/*.jpg"))


def test_numpy_is_chosen_on_cpu_and_bad_names_raise():
    asset = load_bundle().asset
    assert isinstance(make_skinner(asset, "auto", "cpu"), BodyModel)
    assert isinstance(make_skinner(asset, "numpy", "cuda"), BodyModel)
    with pytest.raises(ValueError, match="skinning must be one of"):
        make_skinner(asset, "opengl", "cpu")


@pytest.mark.skipif(cuda_available(), reason="checks the error on a machine without a GPU")
def test_cuda_skinning_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="skinning='cuda' is not available"):
        MeshRecoverer(backend="onnxruntime", skinning="cuda")


@pytest.mark.gpu
@requires_gpu
def test_cuda_skinning_matches_numpy_in_the_sdk():
    import cv2
    frames = [cv2.imread(str(p)) for p in SAMPLES[:3]]
    cpu = MeshRecoverer(backend="onnxruntime", skinning="numpy")
    gpu = MeshRecoverer(backend="onnxruntime", skinning="cuda")
    assert gpu.skinning == "cuda" and cpu.skinning == "numpy"
    assert type(gpu.skinner).__name__ == "CudaSkinner"
    rng = np.random.default_rng(0)
    for f in frames:
        H, W = f.shape[:2]
        boxes = np.array([[0, 0, W, H]] * 70, np.float32) + rng.uniform(-8, 8, (70, 4))
        a, b = cpu(f, boxes), gpu(f, boxes)  # 70 people: more than one CUDA chunk of 64
        assert len(a) == len(b) == 70
        for m, n in zip(a, b):
            assert np.abs(m.vertices - n.vertices).max() <= 1e-5
            assert np.abs(m.joints3d - n.joints3d).max() <= 1e-5
