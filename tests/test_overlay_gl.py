"""The OpenGL mesh overlay (moderngl + EGL) against the OpenCV painter, and the drawer choice."""
import numpy as np
import pytest

from d2a_edge import load_bundle
from d2a_edge.body import BodyModel
from d2a_edge import default_intrinsics
from d2a_edge.overlay import draw_mesh
from d2a_edge.overlay_gl import make_mesh_drawer


@pytest.fixture(scope="module")
def gl_drawer():
    try:
        drawer = make_mesh_drawer("gl")
    except RuntimeError as e:
        pytest.skip(f"no OpenGL here: {e}")
    yield drawer
    drawer.close()


def _scene():
    asset = load_bundle().asset
    J = asset.num_joints
    rot = np.tile(np.eye(3, dtype=np.float32), (1, J, 1, 1))
    verts, _ = BodyModel(asset)(rot, None, np.array([[0.1, 0.05, 3.0]], np.float32))
    return verts[0], asset.faces, default_intrinsics(640, 480)


def test_gl_overlay_covers_the_same_pixels_as_the_painter(gl_drawer):
    verts, faces, K = _scene()
    frame = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    gl = gl_drawer(frame, verts, faces, K, alpha=0.7)
    cv = draw_mesh(frame, verts, faces, K, alpha=0.7)
    assert gl.shape == frame.shape and gl.dtype == np.uint8
    a, b = (gl != frame).any(-1), (cv != frame).any(-1)
    iou = (a & b).sum() / (a | b).sum()
    assert a.sum() > 2000 and iou > 0.9, (a.sum(), b.sum(), iou)
    assert not a[:, :150].any()  # nothing drawn far left of the body (x = 0.1 m, z = 3 m)


def test_gl_overlay_depth_test_and_empty_meshes(gl_drawer):
    verts, faces, K = _scene()
    frame = np.full((480, 640, 3), 40, np.uint8)
    # a body behind the camera draws nothing
    assert np.array_equal(gl_drawer(frame, verts * [1, 1, -1], faces, K), frame)
    # the nearer of two overlapping bodies wins wherever it covers (drawn first or second)
    near = verts.copy()
    near[:, 2] -= 1.0
    out_near = gl_drawer(frame, near, faces, K, alpha=1.0)
    covered = (out_near != frame).any(-1)
    for first, second in ((verts, near), (near, verts)):  # far first, then near first
        stacked = np.concatenate([first, second])
        out = gl_drawer(frame, stacked, np.concatenate([faces, faces + len(first)]), K, alpha=1.0)
        assert np.abs(out.astype(int) - out_near)[covered].max() <= 1
        assert (out != frame).any(-1).sum() > covered.sum()  # the far body shows around it


def test_drawer_choice():
    assert make_mesh_drawer("cv") is draw_mesh
    with pytest.raises(ValueError, match="auto, gl or cv"):
        make_mesh_drawer("vulkan")


def test_painter_and_joints_survive_points_at_or_behind_the_camera():
    """A mesh that reaches the camera plane (z = 0 projects to infinity) or crosses behind it,
    and joints at infinity or NaN: the OpenCV overlays draw what is drawable and do not raise
    (int(inf) raised OverflowError in the demo before). The part in front is still drawn."""
    from d2a_edge.overlay import draw_joints
    verts, faces, K = _scene()
    frame = np.zeros((480, 640, 3), np.uint8)
    whole = (draw_mesh(frame, verts, faces, K) != 0).any(-1).sum()
    cut = verts.copy()
    cut[verts[:, 1] < np.median(verts[:, 1]), 2] = 0.0  # the upper half on the camera plane
    cut[: len(verts) // 10, 2] = -1.0  # some behind it
    drawn = (draw_mesh(frame, cut, faces, K) != 0).any(-1).sum()
    assert 0 < drawn < whole
    j2d = np.array([[100, 100], [np.inf, 5], [np.nan, 1], [3e12, 7], [200, 220]], np.float64)
    out = draw_joints(frame, j2d, parents=[-1, 0, 1, 2, 0], sigma=np.full(5, 0.02))
    assert out[100, 100].any() and out[220, 200].any() and out[160, 150].any()  # dots + bone 0-4
    # a NaN sigma (a bundle with a broken calibration) is drawn red; it raised ValueError
    red = draw_joints(frame, j2d, parents=[-1, 0, 1, 2, 0], sigma=np.full(5, np.nan))
    assert red[100, 100, 2] > 0 and red[100, 100, 1] == 0
