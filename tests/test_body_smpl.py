"""SMPL path: a synthetic SMPL-format pickle (random arrays, real key names and shapes) converts,
our torch LBS matches smplx's own output, numpy LBS matches torch LBS; bad inputs fail clearly."""
import pickle
import sys
import types

import numpy as np
import pytest
from conftest import has_module, requires_torch

from d2a_edge.body import BodyAssetError, BodyModel, load_body
from d2a_edge.body.smpl_convert import SMPL_TO_CAM, convert_smpl, safe_load_pickle

SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]


def _fake_chumpy_module():
    """A stand-in 'chumpy.ch' so the pickle holds chumpy references, as the official files do."""
    mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x

        def __getstate__(self):
            return {"x": self.x, "_dirty_vars": set()}

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    mod.Ch = Ch
    return mod


@pytest.fixture(scope="module")
def smpl_pkl(tmp_path_factory):
    import scipy.sparse

    rng = np.random.default_rng(1)
    V, J = 6890, 24
    vt = rng.normal(0, 0.3, (V, 3))
    jr = scipy.sparse.random(J, V, density=0.002, random_state=1, format="csc")
    jr = scipy.sparse.csc_matrix(jr.multiply(1.0 / (jr.sum(1) + 1e-9)))
    w = np.zeros((V, J))
    for v in range(V):
        js = rng.choice(J, 4, replace=False)
        w[v, js] = rng.dirichlet(np.ones(4))
    chumpy = _fake_chumpy_module()
    sys.modules["chumpy"] = types.ModuleType("chumpy")
    sys.modules["chumpy.ch"] = chumpy
    data = {
        "v_template": vt, "shapedirs": chumpy.Ch(rng.normal(0, 0.01, (V, 3, 10))),
        "posedirs": rng.normal(0, 0.01, (V, 3, 207)), "J_regressor": jr, "weights": w,
        "kintree_table": np.array([[4294967295] + SMPL_PARENTS[1:], list(range(J))], np.int64),
        "f": rng.integers(0, V, (13776, 3)).astype(np.uint32), "J": rng.normal(size=(J, 3)),
    }
    path = tmp_path_factory.mktemp("smpl") / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    # smplx reads the file with plain pickle: give it the arrays without chumpy
    plain = dict(data, shapedirs=data["shapedirs"].x)
    plain_path = path.with_name("SMPL_PLAIN.pkl")
    with open(plain_path, "wb") as f:
        pickle.dump(plain, f, protocol=2)
    del sys.modules["chumpy.ch"], sys.modules["chumpy"]
    return path, plain_path


def _axis_angle_to_rotmat(aa):
    import torch
    return __import__("smplx").lbs.batch_rodrigues(torch.as_tensor(aa).reshape(-1, 3))


@requires_torch
@pytest.mark.skipif(not has_module("smplx"), reason="needs smplx ([smpl] extra)")
def test_smpl_lbs_matches_smplx(smpl_pkl):
    import smplx
    import torch

    from d2a_edge.body.lbs_torch import BodyLayer

    chumpy_path, plain_path = smpl_pkl
    asset = convert_smpl(chumpy_path)
    assert asset.num_joints == 24 and asset.num_vertices == 6890 and asset.posedirs is not None
    ref = smplx.SMPL(model_path=str(plain_path), num_betas=10).double()
    rng = np.random.default_rng(2)
    B = 4
    aa = torch.from_numpy(rng.normal(0, 0.5, (B, 24, 3)))
    betas = torch.from_numpy(rng.normal(0, 1, (B, 10)))
    transl = torch.from_numpy(rng.normal(0, 1, (B, 3)))
    out = ref(global_orient=aa[:, :1].reshape(B, 3), body_pose=aa[:, 1:].reshape(B, 69),
              betas=betas, transl=transl)
    M = torch.from_numpy(SMPL_TO_CAM)
    R = _axis_angle_to_rotmat(aa).reshape(B, 24, 3, 3).double()
    rot_cam = M @ R @ M.T
    root = out.joints[:, 0] @ M.T  # smplx puts the root at J0(beta) + transl
    layer = BodyLayer(asset, dtype=torch.float64)
    verts, joints = layer(rot_cam, betas, root)
    assert (verts - out.vertices @ M.T).abs().max().item() <= 1e-5
    assert (joints - out.joints[:, :24] @ M.T).abs().max().item() <= 1e-5

    v_np, j_np = BodyModel(asset)(rot_cam.numpy(), betas.numpy(), root.numpy())
    assert np.abs(v_np - verts.numpy()).max() <= 1e-5
    assert np.abs(j_np - joints.numpy()).max() <= 1e-5
    index = np.array([6889, 0, 3000, 3000, 17])  # a vertex subset, posedirs included
    v_sub, j_sub = BodyModel(asset, index)(rot_cam.numpy(), betas.numpy(), root.numpy())
    assert np.abs(v_sub - v_np[:, index]).max() <= 1e-9
    assert np.abs(j_sub - j_np).max() <= 1e-9


def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(BodyAssetError, match="refusing to load global builtins.eval"):
        safe_load_pickle(path)


def test_missing_smpl_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="SMPL model file not found"):
        load_body("smpl", path=tmp_path / "SMPL_NEUTRAL.pkl")
    with pytest.raises(ValueError, match="needs path="):
        load_body("smpl")


def test_a_damaged_smpl_file_is_a_body_asset_error(smpl_pkl, tmp_path):
    """The conversion validates what it builds like a loaded asset: parents out of order (every
    joint came out at the origin), faces past the mesh, NaN weights and wrongly shaped arrays
    were accepted or gave raw numpy errors; a truncated .npz gave a BadZipFile."""
    import pickle as pk
    with open(smpl_pkl[1], "rb") as f:
        good = pk.load(f)
    V = len(good["v_template"])
    cases = {"kintree_table": (np.array([[4294967295] + [23] * 23, list(range(24))]),
                               "topologically sorted"),
             "f": (np.full((10, 3), V + 5, np.uint32), "faces must be"),
             "weights": (np.zeros_like(good["weights"]), "NaN|sum to 1"),  # a NaN mesh
             "J_regressor": (np.zeros((24, 5)), "not a consistent smpl model file")}
    for key, (value, match) in cases.items():
        path = tmp_path / f"bad_{key}.pkl"
        with open(path, "wb") as f:
            pk.dump(dict(good, **{key: value}), f, protocol=2)
        with pytest.raises(BodyAssetError, match=match):
            convert_smpl(path)
    trunc = tmp_path / "SMPL.npz"
    np.savez(trunc, **{k: np.asarray(v) for k, v in good.items() if k != "J_regressor"})
    trunc.write_bytes(trunc.read_bytes()[:200])
    with pytest.raises(BodyAssetError, match="not a readable .npz"):
        convert_smpl(trunc)


def test_foreign_pickle_is_clear(tmp_path):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"weights": np.zeros(3)}))
    with pytest.raises(BodyAssetError, match="missing keys"):
        convert_smpl(path)
