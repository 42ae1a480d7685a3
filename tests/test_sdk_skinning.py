"""The SDK's skinning choice: numpy ``BodyModel`` or the CUDA kernel (``skinning_cuda.CudaSkinner``),
and the output mesh resolution (``mesh="full" | "coarse"``)."""
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


def test_auto_falls_back_to_numpy_for_a_body_the_kernel_cannot_skin(monkeypatch):
    """skinning="auto" beside a GPU engine takes numpy for a body with pose correctives (SMPL),
    which the CUDA kernel refuses with a ValueError; "cuda" asked for by name says why."""
    import dataclasses

    from d2a_edge import skinning_cuda
    asset = load_bundle().asset
    J, V = asset.num_joints, asset.num_vertices
    smpl_like = dataclasses.replace(asset, posedirs=np.zeros((9 * (J - 1), 3 * V), np.float32))
    monkeypatch.setattr(skinning_cuda, "is_available", lambda: True)
    assert isinstance(make_skinner(smpl_like, "auto", "cuda"), BodyModel)
    with pytest.raises(RuntimeError, match="posedirs"):
        make_skinner(smpl_like, "cuda", "cuda")


def test_mesh_index_and_faces_of_the_resolutions():
    asset = load_bundle().asset
    assert asset.mesh_index("full") is None and asset.mesh_faces("full") is asset.faces
    assert asset.mesh_index("coarse").tolist() == asset.coarse_index.tolist()
    assert asset.mesh_faces("coarse") is asset.coarse_faces
    assert asset.mesh_index(np.array([7, 7, 0])).tolist() == [7, 7, 0]
    assert asset.mesh_faces(np.array([7, 7, 0])) is None  # no triangulation for a subset


@pytest.mark.parametrize("mesh, message", [
    ("fine", "mesh must be 'full', 'coarse'"), (np.array([[0, 1]]), "1-D, non-empty and integer"),
    (np.array([], int), "1-D, non-empty"), (np.array([0.5]), "integer"),
    (np.array([0, 10 ** 6]), "vertex indices must be in")])
def test_bad_mesh_resolutions_raise(mesh, message):
    with pytest.raises(ValueError, match=message):
        load_bundle().asset.mesh_index(mesh)


def test_coarse_body_model_is_the_full_mesh_at_coarse_index():
    asset = load_bundle().asset
    rng = np.random.default_rng(2)
    rot = np.linalg.qr(rng.normal(size=(3, asset.num_joints, 3, 3)))[0].astype(np.float32)
    rot *= np.sign(np.linalg.det(rot))[..., None, None]  # proper rotations
    betas = rng.normal(size=(3, asset.num_betas)).astype(np.float32)
    transl = rng.normal(size=(3, 3)).astype(np.float32)
    v_full, j_full = BodyModel(asset)(rot, betas, transl)
    v_coarse, j_coarse = BodyModel(asset, "coarse")(rot, betas, transl)
    assert v_coarse.shape == (3, len(asset.coarse_index), 3)
    np.testing.assert_allclose(v_coarse, v_full[:, asset.coarse_index], atol=1e-6)
    np.testing.assert_allclose(j_coarse, j_full, atol=1e-6)


def test_recoverer_coarse_mesh():
    import cv2
    frame = cv2.imread(str(SAMPLES[0]))
    full = MeshRecoverer(backend="onnxruntime")(frame)[0]
    rec = MeshRecoverer(backend="onnxruntime", mesh="coarse")
    coarse = rec(frame)[0]
    index = rec.bundle.asset.coarse_index
    assert coarse.vertices.shape == (len(index), 3) and coarse.faces is rec.bundle.asset.coarse_faces
    assert coarse.faces.max() < len(index)
    np.testing.assert_allclose(coarse.vertices, full.vertices[index], atol=1e-5)
    np.testing.assert_allclose(coarse.joints3d, full.joints3d, atol=1e-6)
    with pytest.raises(ValueError, match="mesh must be one of"):
        MeshRecoverer(backend="onnxruntime", mesh="medium")


@pytest.mark.skipif(cuda_available(), reason="checks the error on a machine without a GPU")
def test_cuda_skinning_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="skinning='cuda' is not available"):
        MeshRecoverer(backend="onnxruntime", skinning="cuda")


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("mesh", ["full", "coarse"])
def test_cuda_skinning_matches_numpy_in_the_sdk(mesh):
    import cv2
    frames = [cv2.imread(str(p)) for p in SAMPLES[:3]]
    cpu = MeshRecoverer(backend="onnxruntime", skinning="numpy", mesh=mesh)
    gpu = MeshRecoverer(backend="onnxruntime", skinning="cuda", mesh=mesh)
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
