"""Anny parity: our LBS with the converted asset reproduces anny's own posed vertices."""
import numpy as np
import pytest
from conftest import requires_anny
from test_body_core import random_rotmats

from d2a_edge.body import BodyModel

pytestmark = requires_anny


def anny_posed_vs_ours(asset, n_pheno=20, n_pose=20, seed=123):
    """Per-vertex errors (mm) over n_pheno x n_pose (phenotype, pose) pairs, and rest errors."""
    import torch

    from d2a_edge.body.anny_convert import (ANNY_TO_CAM, PHENOTYPES, anny_rest, make_anny,
                                            project_betas, sample_phenotypes)
    rng = np.random.default_rng(seed)
    model = make_anny(asset.meta["topology"])
    ph = sample_phenotypes(n_pheno, rng, asset.meta["all_ages"])
    rest_v, rest_j = anny_rest(model, ph)
    betas = project_betas(asset, rest_v, rest_j)
    J, M = asset.num_joints, ANNY_TO_CAM
    ours, posed_err, rest_err = BodyModel(asset), [], []
    for i in range(n_pheno):
        rot_cam = random_rotmats(rng, n_pose, J)  # <= 60 degrees per joint
        transl_cam = rng.normal(0, 0.5, (n_pose, 3))
        D = torch.eye(4, dtype=torch.float64).repeat(n_pose, J, 1, 1)
        D[..., :3, :3] = torch.from_numpy(M.T @ rot_cam @ M)  # back to Anny's frame
        D[:, 0, :3, 3] = torch.from_numpy(transl_cam @ M)
        kw = {name: torch.full((n_pose,), ph[i, k]) for k, name in enumerate(PHENOTYPES)}
        with torch.no_grad():
            ref = model(D, phenotype_kwargs=kw)["vertices"].numpy() @ M.T
        v, _ = ours(rot_cam, np.repeat(betas[i:i + 1], n_pose, 0), transl_cam)
        posed_err.append(np.linalg.norm(v - ref, axis=-1) * 1000)
        rest = asset.v_template + asset.shapedirs @ betas[i]
        rest_err.append(np.linalg.norm(rest - rest_v[i], axis=-1) * 1000)
    return np.stack(posed_err), np.stack(rest_err)


def test_anny_posed_parity(anny_asset):
    posed, rest = anny_posed_vs_ours(anny_asset)
    print(f"posed vs anny: mean {posed.mean():.3f} mm, max {posed.max():.3f} mm; "
          f"rest PCA: mean {rest.mean():.3f} mm, max {rest.max():.3f} mm")
    assert posed.mean() <= 2.0
    assert posed.max() <= 10.0


def test_shape_space_exact_at_mean(anny_asset):
    """Zero pose, zero betas reproduce the template exactly (root moved to transl)."""
    v, j = BodyModel(anny_asset)(np.tile(np.eye(3), (1, anny_asset.num_joints, 1, 1)))
    np.testing.assert_allclose(v[0], anny_asset.v_template - anny_asset.j_template[0], atol=1e-6)


def test_bad_anny_options():
    from d2a_edge.body.anny_convert import build_anny_asset, make_anny
    with pytest.raises(ValueError, match="unknown Anny topology 'tiny'"):
        make_anny("tiny")
    with pytest.raises(ValueError, match="num_betas must be in 1..16"):
        build_anny_asset(num_betas=40)


def test_cache_problems_are_clear_before_a_build(tmp_path, monkeypatch):
    """An unwritable cache fails before the build of several minutes (it failed after it, with
    a raw NotADirectoryError, and rebuilt on every call); a corrupt cached asset says to delete
    it; a cached asset with other options than asked for is not returned."""
    import shutil
    from pathlib import Path

    from d2a_edge.body import BodyAssetError
    from d2a_edge.body import anny_convert as A
    monkeypatch.setattr(A, "build_anny_asset", lambda *a, **k: pytest.fail("built"))
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("D2A_EDGE_CACHE", str(tmp_path / "a_file"))
    with pytest.raises(BodyAssetError, match="cannot write the body asset cache"):
        A.cached_anny_asset()
    monkeypatch.setenv("D2A_EDGE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cache" / "body" / A.asset_filename("full", "369", 10, False)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(BodyAssetError, match="delete the cached file"):
        A.cached_anny_asset(num_betas=10)
    shutil.copy(Path(__file__).parents[1] / "d2a_edge/models/edge-s/body.npz", path)  # S = 16
    with pytest.raises(BodyAssetError, match="has 16 betas, not the 10 asked for"):
        A.cached_anny_asset(num_betas=10)
