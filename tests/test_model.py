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
