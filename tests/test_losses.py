"""Loss terms: RealNVP density, RLE, depth SSI, silhouette, reprojection."""
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import requires_anny, requires_torch

pytestmark = [requires_torch, pytest.mark.usefixtures("torch_one_thread")]
sys.path.insert(0, str(Path(__file__).parent))


def _random_flow(seed=0):
    from d2a_edge.training.losses import RealNVP
    torch.manual_seed(seed)
    flow = RealNVP(dim=3).double()
    with torch.no_grad():  # far from the near-identity init, so the test has teeth
        for p in flow.parameters():
            p.normal_(0, 0.3)
    return flow


def test_realnvp_log_prob_matches_numerical_change_of_variables():
    flow = _random_flow()
    x = torch.randn(16, 3, dtype=torch.float64)
    z, _ = flow.to_base(x)
    assert (z - x).abs().max() > 0.1  # the map is not the identity
    eps = 1e-6
    jac = torch.zeros(16, 3, 3, dtype=torch.float64)
    for i in range(3):
        dx = torch.zeros(3, dtype=torch.float64)
        dx[i] = eps
        jac[:, :, i] = (flow.to_base(x + dx)[0] - flow.to_base(x - dx)[0]) / (2 * eps)
    logdet = torch.linalg.slogdet(jac)[1]
    expect = -0.5 * (z ** 2).sum(1) - 1.5 * math.log(2 * math.pi) + logdet
    torch.testing.assert_close(flow.log_prob(x), expect, rtol=1e-7, atol=1e-5)


def _laplace(n, gen, std=1.0):
    u = torch.rand(n, 1, 3, generator=gen, dtype=torch.float64) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs()) * std / math.sqrt(2)  # scale b = std/sqrt2


def _argmin_sigma(loss_fn, residual, sigma0):
    grid = sigma0 * torch.exp(torch.linspace(-0.7, 0.7, 29, dtype=torch.float64))
    with torch.no_grad():
        losses = torch.stack([loss_fn(torch.full_like(residual, float(s))).mean() for s in grid])
    assert losses[0] > losses.min() + 0.02 and losses[-1] > losses.min() + 0.02  # a real minimum
    return float(grid[losses.argmin()])


def test_rle_flow_term_minimised_at_true_sigma_for_gaussian_residuals():
    """The flow starts near the identity (a standard normal G): Gaussian residuals."""
    from d2a_edge.training.losses import RealNVP, flow_nll
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    flow = RealNVP(dim=3).double()
    sigma0 = 0.04
    r = sigma0 * torch.randn(8000, 1, 3, generator=gen, dtype=torch.float64)
    zero = torch.zeros_like(r)
    best = _argmin_sigma(lambda s: flow_nll(r, s, zero, flow), r, sigma0)
    assert best == pytest.approx(sigma0, rel=0.03)


def test_rle_laplace_term_minimised_at_true_sigma_for_laplace_residuals():
    """Upstream's residual term |r| / (sqrt(2) sigma): Laplace residuals of scale sqrt(2) sigma."""
    from d2a_edge.training.losses import laplace_nll
    gen = torch.Generator().manual_seed(1)
    sigma0 = 0.03
    r = _laplace(8000, gen, std=2 * sigma0)  # Laplace scale b = sqrt(2) sigma0
    best = _argmin_sigma(lambda s: laplace_nll(r, s, torch.zeros_like(r)), r, sigma0)
    assert best == pytest.approx(sigma0, rel=0.03)


def test_rle_fitted_flow_term_tracks_laplace_sigma():
    """After fitting the flow to unit-scale Laplace residuals, its term finds the true scale."""
    from d2a_edge.training.losses import RealNVP, flow_nll
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    flow = RealNVP(dim=3).double()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    one = torch.ones(256, 1, 3, dtype=torch.float64)
    for _ in range(120):
        z = _laplace(256, gen)
        loss = flow_nll(z, one, torch.zeros_like(z), flow).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    sigma0 = 0.05
    r = sigma0 * _laplace(8000, gen)
    best = _argmin_sigma(lambda s: flow_nll(r, s, torch.zeros_like(r), flow), r, sigma0)
    assert best == pytest.approx(sigma0, rel=0.1)


def test_rle_total_matches_upstream_formula():
    from d2a_edge.training.losses import RealNVP, rle_nll
    flow = _random_flow(3)
    mu, y = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    sigma = torch.rand(2, 4, 3, dtype=torch.float64) + 0.1
    z = (mu - y) / sigma
    expect = (sigma.log().sum(-1) - flow.log_prob(z.reshape(-1, 3)).reshape(2, 4)
              + (torch.log(sigma * math.sqrt(2 * math.pi))
                 + (mu - y).abs() / (math.sqrt(2) * sigma + 1e-9)).sum(-1))
    torch.testing.assert_close(rle_nll(mu, sigma, y, flow), expect)


def test_depth_ssi_is_scale_and_shift_invariant():
    from d2a_edge.training.losses.terms import depth_ssi
    torch.manual_seed(0)
    depth = 2 + torch.rand(2, 32, 32)
    depth[:, :8] = 0  # background rows are ignored
    pred = (3.0 * depth - 1.5).unsqueeze(1)
    pred[:, :, :8] = 100.0
    assert float(depth_ssi(pred, depth)) < 1e-4
    noisy = pred + 0.5 * torch.randn_like(pred)
    assert float(depth_ssi(noisy, depth)) > 0.05
    assert float(depth_ssi(pred, torch.zeros_like(depth))) == 0.0  # no valid pixel: no loss


def test_silhouette_loss_low_for_right_mask_high_for_wrong():
    from d2a_edge.training.losses.terms import silhouette
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:12, 4:12] = 1
    good = (mask * 40 - 20).unsqueeze(1)
    assert float(silhouette(good, mask)) < 0.01
    assert float(silhouette(-good, mask)) > 2.0


def test_silhouette_and_depth_losses_do_not_grow_with_the_batch():
    """Per-sample means: the same samples twice give the same loss (a Dice summed over the
    batch, or a depth error averaged over every pixel or over empty crops, would not)."""
    from d2a_edge.training.losses.terms import depth_ssi, silhouette
    torch.manual_seed(0)
    mask = torch.zeros(2, 16, 16)
    mask[0, 4:12, 4:12], mask[1, 2:6, 3:9] = 1, 1
    logits = torch.randn(2, 1, 8, 8)
    twice = silhouette(torch.cat([logits, logits]), torch.cat([mask, mask]))
    torch.testing.assert_close(twice, silhouette(logits, mask))
    depth = (2 + torch.rand(2, 16, 16)) * mask  # 0 = background
    pred = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(depth_ssi(torch.cat([pred, pred]), torch.cat([depth, depth])),
                               depth_ssi(pred, depth))
    empty = torch.zeros(1, 16, 16)  # a crop without the person adds nothing, not a zero
    torch.testing.assert_close(depth_ssi(torch.cat([pred, pred[:1]]), torch.cat([depth, empty])),
                               depth_ssi(pred, depth))
    # the error is the mean over the person's pixels, not over the whole crop
    single = depth_ssi(pred[:1], depth[:1])
    p = torch.nn.functional.interpolate(pred[:1], size=(16, 16), mode="bilinear",
                                        align_corners=False)[0, 0][mask[0] > 0]
    d = depth[0][mask[0] > 0]
    A = torch.stack([p, torch.ones_like(p)], 1)
    ab = torch.linalg.lstsq(A, d[:, None]).solution[:, 0]
    torch.testing.assert_close(single, (A @ ab - d).abs().mean(), rtol=1e-4, atol=1e-5)


@requires_anny
def test_reprojection_of_ground_truth_is_zero(anny_asset):
    from _batches import make_batch
    from d2a_edge.training.losses.terms import project_to_crop, reprojection
    b = make_batch(anny_asset, 3, 64)
    uv = project_to_crop(b["joints3d"], b["K"], b["crop_box"], 64)
    torch.testing.assert_close(uv, b["joints2d"], atol=1e-3, rtol=0)
    assert float(reprojection(b["joints3d"], b["joints2d"], b["K"], b["crop_box"], 64)) < 1e-4
    shifted = b["joints3d"] + torch.tensor([0.05, 0.0, 0.0])
    assert float(reprojection(shifted, b["joints2d"], b["K"], b["crop_box"], 64)) > 1e-3


@requires_anny
def test_d2a_loss_terms_zero_at_ground_truth(anny_asset):
    from _batches import make_batch
    from d2a_edge.body.lbs_torch import BodyLayer
    from d2a_edge.training.config import LossConfig
    from d2a_edge.training.losses import D2ALoss
    b = make_batch(anny_asset, 2, 64)
    body = BodyLayer(anny_asset)
    verts, joints = body(b["rotmats"], b["betas"], b["transl"])
    out = {"rotmats": b["rotmats"], "betas": b["betas"], "translation": b["transl"],
           "vertices": verts, "joints3d": joints, "verts_coarse": b["verts_coarse"],
           "joint_mu": b["joints3d"] - b["transl"][:, None],
           "joint_sigma": torch.full((2, 25, 3), 0.01)}
    L = D2ALoss(LossConfig(), body)(out, b)
    for k in ("vertex", "joint3d", "joint2d", "rotation", "shape", "translation",
              "coarse_vertex"):
        assert float(L[k]) < 1e-4, k
    assert set(L) >= {"joint_mu", "total"}
    l1 = D2ALoss(LossConfig(rle=False), body)(out, b)
    assert float(l1["joint_mu"]) < 1e-6


def _gt_out(b, body):
    verts, joints = body(b["rotmats"], b["betas"], b["transl"])
    return {"rotmats": b["rotmats"].clone(), "betas": b["betas"].clone(),
            "translation": b["transl"].clone(), "vertices": verts, "joints3d": joints,
            "verts_coarse": b["verts_coarse"].clone(),
            "joint_mu": b["joints3d"] - b["transl"][:, None],
            "joint_sigma": torch.full((len(b["transl"]), 25, 3), 0.01)}


def test_root_relative_terms_ignore_a_common_shift_and_translation_does_not(anny_asset):
    from _batches import make_batch
    from d2a_edge.body.lbs_torch import BodyLayer
    from d2a_edge.training.config import LossConfig
    from d2a_edge.training.losses import D2ALoss
    b = make_batch(anny_asset, 2, 64)
    body = BodyLayer(anny_asset)
    for rle in (True, False):
        crit = D2ALoss(LossConfig(rle=rle), body)
        out = _gt_out(b, body)
        with torch.no_grad():
            base = crit(out, b)
        shift = torch.tensor([0.3, -0.2, 0.5])
        moved = dict(out, translation=out["translation"] + shift,
                     vertices=out["vertices"] + shift, joints3d=out["joints3d"] + shift,
                     verts_coarse=out["verts_coarse"] + shift)
        with torch.no_grad():
            L = crit(moved, b)
        for k in ("vertex", "joint3d", "coarse_vertex", "joint_mu"):
            assert float(L[k]) == pytest.approx(float(base[k]), abs=1e-5), k
        assert float(L["translation"]) > 0.3 and float(L["joint2d"]) > 1e-3


def test_every_term_has_a_gradient_into_its_prediction(anny_asset):
    from _batches import make_batch
    from d2a_edge.body.lbs_torch import BodyLayer
    from d2a_edge.training.config import LossConfig
    from d2a_edge.training.losses import D2ALoss
    b = make_batch(anny_asset, 2, 64)
    body = BodyLayer(anny_asset)
    out = _gt_out(b, body)
    g = torch.Generator().manual_seed(0)
    for k in ("vertices", "joints3d", "verts_coarse", "translation", "joint_mu"):  # off the GT
        out[k] = (out[k] + 0.02 * torch.randn(out[k].shape, generator=g)).requires_grad_(True)
    L = D2ALoss(LossConfig(), body)(out, b)
    for term, key in (("vertex", "vertices"), ("joint3d", "joints3d"), ("joint2d", "joints3d"),
                      ("coarse_vertex", "verts_coarse"), ("translation", "translation"),
                      ("joint_mu", "joint_mu")):
        (grad,) = torch.autograd.grad(L[term], out[key], retain_graph=True)
        assert grad.abs().sum() > 0, (term, key)
