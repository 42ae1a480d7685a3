"""D2A-HMR model: shapes of every part, camera conversion, train/eval behaviour, AMP."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import requires_anny, requires_torch

pytestmark = [requires_torch, pytest.mark.usefixtures("torch_one_thread")]
sys.path.insert(0, str(Path(__file__).parent))


def test_rot6d_roundtrip_and_orthonormal():
    from _batches import random_rotmats
    from d2a_edge.training.model import rot6d_to_rotmat, rotmat_to_rot6d
    R = torch.tensor(random_rotmats(np.random.default_rng(0), 10, 1.0), dtype=torch.float32)
    torch.testing.assert_close(rot6d_to_rotmat(rotmat_to_rot6d(R)), R, atol=1e-5, rtol=0)
    Q = rot6d_to_rotmat(torch.randn(7, 6))
    torch.testing.assert_close(Q @ Q.transpose(-1, -2), torch.eye(3).expand(7, 3, 3),
                               atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(Q), torch.ones(7), atol=1e-5)


def test_cliff_camera_puts_root_at_crop_point():
    """A root at translation T projects to crop-normalised (s tx, s ty) (CLIFF convention), also
    with the principal point off the image centre (a calibrated camera). Box coordinates put
    the frame at [0, 0, W, H], K's pixel-centre coordinates half a pixel lower (camera.py)."""
    from d2a_edge.camera import bbox_info
    from d2a_edge.training.model import cam_crop_to_full
    W, H, f = 640.0, 480.0, 500.0
    for px, py in ((W / 2, H / 2), (W / 2 + 37.0, H / 2 - 21.0)):
        K = np.array([[f, 0, px], [0, f, py], [0, 0, 1]], np.float32)
        box = np.array([[300.0, 100.0, 460.0, 260.0]], np.float32)
        bi = torch.tensor(bbox_info(box, K[None]))
        cam = torch.tensor([[0.8, 0.1, -0.2]])
        T = cam_crop_to_full(cam, bi)[0].numpy()
        u, v = f * T[0] / T[2] + px + 0.5, f * T[1] / T[2] + py + 0.5  # in box coordinates
        side, cx, cy = 160.0, 380.0, 180.0
        np.testing.assert_allclose([(u - cx) / (side / 2), (v - cy) / (side / 2)],
                                   [0.8 * 0.1, 0.8 * -0.2], atol=1e-5)
    # farther away when the box is smaller relative to the focal length
    assert T[2] == pytest.approx(2 / (0.8 * side / f), rel=1e-6)


def test_positional_encoding_and_blocks_shapes():
    from d2a_edge.training.model.transformer import (FusionEncoder, HybridPositionalEncoding,
                                                     QueryDecoder, sine_2d)
    assert sine_2d(3, 4, 16).shape == (12, 16)
    pe = HybridPositionalEncoding(16, (3, 4), 2)
    x = torch.zeros(2, 12, 16)
    a, b = pe(x, 0, (3, 4)), pe(x, 1, (3, 4))
    assert a.shape == (2, 12, 16) and not torch.allclose(a, b)  # modality embedding differs
    assert pe(torch.zeros(2, 30, 16), 0, (5, 6)).shape == (2, 30, 16)  # other grid: interpolated
    enc = FusionEncoder(16, 2, 1, 1, 2.0, 0.0, with_depth=True)
    assert enc(torch.randn(2, 12, 16), torch.randn(2, 9, 16)).shape == (2, 12, 16)
    dec = QueryDecoder(16, 2, 2, 2.0, 0.0)
    assert dec(torch.randn(2, 5, 16), torch.randn(2, 12, 16)).shape == (2, 5, 16)


def test_conv_parts_shapes():
    from d2a_edge.training.model.backbones import DepthBackbone, ImageBackbone, PseudoDepth
    x = torch.rand(2, 3, 64, 64)
    assert PseudoDepth("mobilenetv3_small_100", 8)(x).shape == (2, 1, 16, 16)
    assert ImageBackbone("resnet10t", 16, 32)(x).shape == (2, 32, 4, 4)
    assert DepthBackbone((8, 8), 16, 32)(torch.rand(2, 1, 16, 16)).shape == (2, 32, 4, 4)
    with pytest.raises(ValueError, match="token_reduction"):
        ImageBackbone("resnet10t", 64, 32)
    with pytest.raises(ValueError, match="channels"):
        DepthBackbone((8,), 16, 32)


@pytest.fixture(scope="module")
def tiny_model(anny_asset):
    from _batches import tiny_config
    from d2a_edge.training.model import build_model
    torch.manual_seed(0)
    return build_model(tiny_config().model, anny_asset)


@requires_anny
def test_model_output_shapes_train_and_eval(tiny_model, anny_asset):
    m = tiny_model
    x, bi = torch.rand(2, 3, 64, 64), torch.tensor([[0.1, 0.0, 0.5], [0.0, 0.1, 0.4]])
    J, V, Vc = 25, anny_asset.num_vertices, len(anny_asset.coarse_index)
    expect = {"rotmats": (2, J, 3, 3), "betas": (2, 16), "cam": (2, 3), "translation": (2, 3),
              "joint_mu": (2, J, 3), "joint_sigma": (2, J, 3), "verts_coarse": (2, Vc, 3),
              "depth": (2, 1, 16, 16), "vertices": (2, V, 3), "joints3d": (2, J, 3)}
    m.train()
    out = m(x, bi)
    assert {k: tuple(v.shape) for k, v in out.items()} == {**expect,
                                                           "silhouette_logits": (2, 1, 16, 16)}
    m.eval()
    with torch.no_grad():
        out = m(x, bi)
    assert {k: tuple(v.shape) for k, v in out.items()} == expect  # no silhouette in eval
    assert (out["joint_sigma"] > 0).all()
    # split forward: features then head gives the same parameters
    with torch.no_grad():
        feats = m.forward_features(x)
        head = m.forward_head(feats, bi)
    assert feats["tokens"].shape == (2, 16, 64)
    torch.testing.assert_close(head["rotmats"], out["rotmats"])


@requires_anny
def test_masked_modeling_only_in_training(tiny_model):
    m = tiny_model
    x = torch.rand(2, 3, 64, 64)
    m.eval()
    with torch.no_grad():
        f1, f2 = m.forward_features(x), m.forward_features(x)
    assert f1["token_mask"] is None
    torch.testing.assert_close(f1["tokens"], f2["tokens"])
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        f = m.forward_features(x)
    mask = f["token_mask"]
    assert mask is not None and mask.any() and not mask.all()
    masked = f["tokens"][mask]
    torch.testing.assert_close(masked, m.mask_token.expand_as(masked[None])[0])
    m.eval()


@requires_anny
def test_no_nan_under_bf16_autocast(tiny_model, anny_asset):
    from _batches import make_batch
    from d2a_edge.training.config import LossConfig
    from d2a_edge.training.losses import D2ALoss
    b = make_batch(anny_asset, 2, 64)
    m = tiny_model.train()
    crit = D2ALoss(LossConfig(), m.body)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(b["image"], b["bbox_info"])
        L = crit(out, b)
    assert out["rotmats"].dtype == torch.float32 and out["vertices"].dtype == torch.float32
    for k, v in L.items():
        assert torch.isfinite(v), k
    L["total"].backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    m.zero_grad(set_to_none=True)
    m.eval()


@requires_anny
def test_ablation_configs_build_the_right_parts(anny_asset):
    from _batches import tiny_config
    from d2a_edge.training.model import build_model
    no_depth = build_model(tiny_config("edge-s-depth").model, anny_asset)
    assert no_depth.depth_net is None and len(no_depth.encoder.cross_layers) == 0
    plain = build_model(tiny_config("edge-s-sil-mask").model, anny_asset)
    assert plain.silhouette is None and plain.cfg.mask_ratio == 0
    assert tiny_config("edge-s-rle").loss.rle is False


def test_silhouette_logits_are_local_to_their_token(tiny_model):
    """The bottom-right mask pixel depends on the bottom-right tokens, not the top-left one
    (the decoder's receptive field is a few cells); a (B, N, D) -> (B, D, h, w) reshape without
    the transpose spreads every token over the whole mask."""
    m = tiny_model.train()
    m.silhouette.eval()  # running BatchNorm statistics: no coupling through batch statistics
    h, w = 4, 4
    tokens = torch.randn(1, h * w, m.cfg.encoder.dim, requires_grad=True)
    feats = {"tokens": tokens, "depth": None, "token_mask": None, "grid_hw": (h, w)}
    logits = m.forward_head(feats, torch.tensor([[0.0, 0.0, 0.3]]))["silhouette_logits"]
    (grad,) = torch.autograd.grad(logits[0, 0, -1, -1], tokens)
    per_token = grad[0].abs().sum(-1)  # (h*w,), row-major
    assert per_token[0] == 0 and per_token[-1] > 0
    m.eval()


def test_masked_token_fraction_is_mask_ratio(tiny_model):
    m = tiny_model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        frac = torch.stack([m.forward_features(torch.rand(4, 3, 64, 64))["token_mask"].float()
                            .mean() for _ in range(5)]).mean()
    assert abs(float(frac) - m.cfg.mask_ratio) < 0.08, float(frac)
    m.eval()


def test_camera_head_uses_every_bbox_info_number():
    from d2a_edge.training.model.heads import CameraHead
    torch.manual_seed(0)
    head = CameraHead(16)
    torch.nn.init.normal_(head.mlp[2].weight)  # past the zero init
    token = torch.randn(1, 16)
    jac = torch.autograd.functional.jacobian(lambda bi: head(token, bi),
                                             torch.tensor([[0.1, -0.2, 0.3]]))[0, :, 0]  # (3, 3)
    assert (jac.abs().sum(0) > 1e-4).all(), jac


def test_sine_encoding_tells_every_position_apart():
    """M6: half the channels encode y, half x; positions differing only in x (or only in y)
    get different codes, and the x half of (y, x) is the y half of the transposed grid."""
    from d2a_edge.training.model.transformer import sine_2d
    h, w, dim = 3, 5, 16
    pe = sine_2d(h, w, dim).view(h, w, dim)
    assert not torch.allclose(pe[0, 0], pe[0, 1])  # same row, next column
    assert not torch.allclose(pe[0, 0], pe[1, 0])  # same column, next row
    flat = pe.reshape(h * w, dim)
    assert (torch.cdist(flat, flat) + torch.eye(h * w) > 1e-3).all()  # all codes distinct
    pt = sine_2d(w, h, dim).view(w, h, dim)
    half = dim // 2
    torch.testing.assert_close(pe[..., half:], pt.transpose(0, 1)[..., :half])
    torch.testing.assert_close(pe[..., :half], pt.transpose(0, 1)[..., half:])


@pytest.mark.parametrize("sigma_init", [0.02, 0.05, 0.2])
def test_joint_head_starts_at_identity_rest_joints_and_sigma_init(sigma_init):
    """M5: at initialisation sigma equals the configured sigma_init (the bias is
    sigmoid^-1(sigma_init)), rotations are the identity and mu the rest joints."""
    from d2a_edge.training.model.heads import IDENTITY_6D, JointHead
    rest = torch.randn(5, 3)
    rot6d, mu, sigma = JointHead(16, rest, sigma_init)(torch.randn(2, 5, 16))
    torch.testing.assert_close(rot6d, torch.tensor(IDENTITY_6D).expand(2, 5, 6))
    torch.testing.assert_close(mu, rest.expand(2, 5, 3))
    torch.testing.assert_close(sigma, torch.full((2, 5, 3), sigma_init), atol=2e-4, rtol=0)


@requires_anny
def test_model_sigma_at_init_is_the_configured_sigma_init(tiny_model):
    """M5 through the model: the initial joint_sigma is cfg.sigma_init."""
    m = tiny_model.eval()
    with torch.no_grad():
        out = m.forward_head(m.forward_features(torch.rand(1, 3, 64, 64)),
                             torch.tensor([[0.0, 0.0, 0.3]]))
    s0 = m.cfg.sigma_init
    torch.testing.assert_close(out["joint_sigma"], torch.full_like(out["joint_sigma"], s0),
                               atol=2e-4, rtol=0)


def test_depth_backbone_standardises_each_sample_on_its_own():
    """M7: relative depth is standardised per sample, so (in eval mode) a sample's depth
    tokens ignore the other samples of the batch and each sample's scale and shift."""
    from d2a_edge.training.model.backbones import DepthBackbone
    torch.manual_seed(0)
    db = DepthBackbone((8, 8), 16, 32).eval()
    d = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        ref = db(d)
        other = d.clone()
        other[1:] = other[1:] * 7.0 + 3.0  # only samples 1, 2 change (by scale and shift)
        out = db(other)
        torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)  # affine-invariant
        torch.testing.assert_close(db(d[:1]), ref[:1], atol=1e-5, rtol=1e-5)  # batch of one


@requires_anny
def test_a_sample_output_ignores_the_rest_of_the_batch_in_eval(tiny_model):
    """M7 end to end: in eval mode no sample leaks into another's features or outputs."""
    m = tiny_model.eval()
    torch.manual_seed(1)
    x = torch.rand(3, 3, 64, 64)
    x2 = x.clone()
    x2[1:] = torch.rand(2, 3, 64, 64) * 0.5  # other samples change (different contrast)
    with torch.no_grad():
        a, b = m.forward_features(x), m.forward_features(x2)
        one = m.forward_features(x[:1])
    for f in (b, one):
        torch.testing.assert_close(f["tokens"][0], a["tokens"][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(f["depth"][0], a["depth"][0], atol=1e-4, rtol=1e-4)


@requires_anny
def test_depth_tokens_carry_their_own_modality_embedding(tiny_model):
    """M8: image tokens get modality embedding 0 and depth tokens embedding 1 (the fusion can
    tell them apart): the features depend on both rows of the modality table."""
    import copy
    m = copy.deepcopy(tiny_model).eval()
    assert m.depth_net is not None
    torch.manual_seed(2)
    x = torch.rand(2, 3, 64, 64)
    calls = []
    hook = m.pos.register_forward_pre_hook(lambda mod, args: calls.append(args[1]))
    with torch.no_grad():
        ref = m.forward_features(x)["tokens"]
        hook.remove()
        assert calls == [0, 1]  # image first, then depth
        for row in (0, 1):
            saved = m.pos.modality[row].clone()
            m.pos.modality[row] += torch.randn_like(saved)  # (a constant shift: LayerNorm drops)
            moved = m.forward_features(x)["tokens"]
            m.pos.modality[row] = saved
            assert (moved - ref).abs().max() > 1e-3, f"modality row {row} is unused"


@requires_anny
def test_each_query_feeds_exactly_its_own_head(tiny_model):
    """M3: decoder query 0 -> camera, 1 -> shape, 2..2+J -> joints, the rest -> coarse
    vertices: together the heads read every decoder output once, in that order."""
    m = tiny_model.eval()
    seen = {}
    hooks = [getattr(m, name).register_forward_pre_hook(
        lambda mod, args, name=name: seen.__setitem__(name, args[0]))
        for name in ("camera_head", "shape_head", "joint_head", "vertex_head")]
    hooks.append(m.decoder.register_forward_hook(
        lambda mod, args, out: seen.__setitem__("decoder", out)))
    try:
        with torch.no_grad():
            m(torch.rand(2, 3, 64, 64), torch.tensor([[0.1, 0.0, 0.3], [0.0, 0.1, 0.25]]))
    finally:
        for h in hooks:
            h.remove()
    J = m.num_joints
    assert seen["joint_head"].shape[1] == J
    read = torch.cat([seen["camera_head"][:, None], seen["shape_head"][:, None],
                      seen["joint_head"], seen["vertex_head"]], dim=1)
    assert torch.equal(read, seen["decoder"])
