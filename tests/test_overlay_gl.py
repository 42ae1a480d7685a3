"""The OpenGL mesh overlay (moderngl + EGL) against the OpenCV painter, and the drawer choice."""
import cv2
import numpy as np
import pytest

from d2a_edge import load_bundle
from d2a_edge.body import BodyModel
from d2a_edge import default_intrinsics
from d2a_edge.overlay import draw_joints, draw_mesh
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


def test_painter_draws_the_nearer_of_two_bodies_on_top():
    """Far faces first, near faces last: wherever the near body covers, the picture of both
    bodies is the picture of the near one alone, whichever comes first in the mesh (painted
    near-to-far, the far body showed through the near one)."""
    verts, faces, K = _scene()
    frame = np.full((480, 640, 3), 40, np.uint8)
    near = verts.copy()
    near[:, 2] -= 1.0
    alone = draw_mesh(frame, near, faces, K, alpha=1.0)
    covered = (alone != frame).any(-1)
    inner = cv2.erode(covered.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    for first, second in ((verts, near), (near, verts)):
        out = draw_mesh(frame, np.concatenate([first, second]),
                        np.concatenate([faces, faces + len(first)]), K, alpha=1.0)
        differs = np.abs(out.astype(int) - alone).max(-1)[inner] > 10  # anti-aliased seams
        assert differs.mean() < 0.01, differs.mean()


def test_painter_blends_with_alpha():
    """``alpha`` is the mesh's weight: 0 leaves the frame as it was, 1 paints the mesh opaque,
    and in between the result is alpha * mesh + (1 - alpha) * frame."""
    verts, faces, K = _scene()
    frame = np.zeros((480, 640, 3), np.uint8)
    opaque = draw_mesh(frame, verts, faces, K, alpha=1.0).astype(np.float64)
    assert (opaque > 0).any(-1).sum() > 2000
    np.testing.assert_array_equal(draw_mesh(frame, verts, faces, K, alpha=0.0), frame)
    quarter = draw_mesh(frame, verts, faces, K, alpha=0.25).astype(np.float64)
    assert np.abs(quarter - 0.25 * opaque).max() <= 1.0


def test_joint_colour_runs_from_green_to_red_over_sigma_full():
    """A joint with σ = 0 is pure green, one at ``sigma_full`` (or beyond) pure red, half way
    half of each (BGR); the scale is ``sigma_full``, not metres."""
    frame = np.zeros((64, 64, 3), np.uint8)
    j2d = np.array([[10.0, 10.0], [30.0, 10.0], [50.0, 10.0], [30.0, 40.0]])
    out = draw_joints(frame, j2d, sigma=np.array([0.0, 0.1, 0.2, 0.5]), sigma_full=0.2)
    centre = [out[int(y), int(x)].tolist() for x, y in j2d]
    assert centre[0] == [0, 255, 0]
    assert centre[2] == [0, 0, 255] and centre[3] == [0, 0, 255]
    b, g, r = centre[1]
    assert b == 0 and abs(g - 127) <= 1 and abs(r - 127) <= 1


def test_no_bone_to_a_joint_that_cannot_be_drawn():
    """A drawable joint whose parent is at infinity gets its dot and no bone (int(inf) raised
    OverflowError); a bone needs both ends."""
    frame = np.zeros((64, 64, 3), np.uint8)
    j2d = np.array([[np.inf, 5.0], [32.0, 32.0], [np.nan, 1.0], [10.0, 50.0]])
    out = draw_joints(frame, j2d, parents=[-1, 0, 1, 2], sigma=np.zeros(4))
    assert out[32, 32].any() and out[50, 10].any()
    np.testing.assert_array_equal(out, draw_joints(frame, j2d, sigma=np.zeros(4)))  # dots only


def test_painter_shows_the_lit_front_of_the_body():
    """The faces drawn are those facing the camera, lit from the camera's side: a body seen
    from the front comes out bright (mostly above half its colour). With the culling or the
    light the wrong way round, the back faces were painted, nearly all at the 25 % ambient."""
    verts, faces, K = _scene()
    frame = np.zeros((480, 640, 3), np.uint8)
    color = (120, 170, 210)
    out = draw_mesh(frame, verts, faces, K, color=color, alpha=1.0)
    inner = cv2.erode((out > 0).any(-1).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert inner.sum() > 2000
    level = out[inner].astype(np.float64) / color  # per pixel and channel: 0.25 .. 1
    assert np.median(level) > 0.6 and (level.mean(-1) < 0.3).mean() < 0.2

