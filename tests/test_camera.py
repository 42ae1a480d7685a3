"""d2a_edge.camera: intrinsics, projection, crops and the CLIFF bbox_info (numpy only)."""
import cv2
import numpy as np
import pytest

from d2a_edge.camera import (bbox_info, camera_matrix, crop_affine, crop_intrinsics, intrinsics,
                             project, square_box)


def test_intrinsics_and_projection():
    K = intrinsics(500.0, (640, 480))
    np.testing.assert_allclose(K, [[500, 0, 319.5], [0, 500, 239.5], [0, 0, 1]])
    uv = project(np.array([[0.0, 0.0, 2.0], [1.0, -0.5, 2.0]]), K)
    np.testing.assert_allclose(uv, [[319.5, 239.5], [569.5, 114.5]])
    with pytest.raises(ValueError, match="positive"):
        intrinsics(0.0, (640, 480))


def test_crop_intrinsics_equal_projecting_then_cropping(rng):
    K = intrinsics(800.0, (1280, 720))
    box = square_box((700.0, 300.0), 250.0)
    pts = rng.uniform([-1, -1, 3], [1, 1, 6], (20, 3))
    A = crop_affine(box, 192)
    full = project(pts, K)
    np.testing.assert_allclose(project(pts, crop_intrinsics(K, box, 192)),
                               full @ A[:, :2].T + A[:, 2], atol=1e-3)
    np.testing.assert_allclose(full[0] @ A[:, :2].T + A[:, 2],
                               (full[0] - box[:2]) * 192 / 250, atol=1e-3)


def test_crop_affine_matches_cv2_warp():
    """cv2.warpAffine with crop_affine puts a full-image pixel where the affine says: the
    bilinear image of one bright pixel is a tent centred on (x - 25) * 2. (Nearest-neighbour
    sampling is not a test of this: at a 2x scale every sample falls on a tie, and OpenCV 5.1
    breaks those ties the other way from 5.0.)"""
    img = np.zeros((100, 100), np.float32)
    img[40, 60] = 1.0
    box = square_box((50.0, 50.0), 50.0)  # [25, 25, 75, 75]
    crop = cv2.warpAffine(img, crop_affine(box, 100), (100, 100), flags=cv2.INTER_LINEAR)
    ys, xs = np.mgrid[:100, :100]
    w = crop / crop.sum()
    assert ((w * xs).sum(), (w * ys).sum()) == pytest.approx(((60 - 25) * 2, (40 - 25) * 2),
                                                            abs=1e-3)
    assert np.count_nonzero(crop) == 9 and crop.max() == pytest.approx(1.0)


def test_bbox_info_cliff_formula_and_batching():
    K = intrinsics(1000.0, (1920, 1080))
    box = np.array([1060.0, 440.0, 1260.0, 640.0], np.float32)  # centre (1160, 540), side 200
    info = bbox_info(box, K)
    np.testing.assert_allclose(info, [(1160 - 960) / 1000, 0.0, 0.2], atol=1e-6)
    # a calibrated camera: the offsets are from its principal point; fy for the vertical one
    K2 = np.array([[1000.0, 0, 1000.5], [0, 800.0, 519.5], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(bbox_info(box, K2), [(1160 - 1001) / 1000, (540 - 520) / 800, 0.2],
                               atol=1e-6)
    batch = bbox_info(np.stack([box, box]), np.stack([K, K]))
    assert batch.shape == (2, 3) and batch.dtype == np.float32


def test_non_square_box_is_rejected():
    with pytest.raises(ValueError, match="square"):
        crop_affine(np.array([0, 0, 10, 20]), 64)


@pytest.mark.parametrize("K, match", [
    (np.eye(2), "3x3 camera matrix"),
    ("K", "3x3 camera matrix"),
    ([[500, 0, 320], [0, 500, 240], [0, 0, np.nan]], "finite"),
    ([[-500, 0, 320], [0, 500, 240], [0, 0, 1]], "fx, fy > 0"),
    ([[500, 0, 320], [0, 0, 240], [0, 0, 1]], "fx, fy > 0"),
    ([[500, 0, 320], [0, 500, 240], [0, 0, 2]], r"last row must be \(0, 0, 1\)"),
])
def test_bad_intrinsics_are_rejected(K, match):
    with pytest.raises(ValueError, match=match):
        camera_matrix(K)


def test_camera_matrix_accepts_lists_and_returns_float32():
    K = camera_matrix([[500, 0, 320], [0, 510, 240], [0, 0, 1]])
    assert K.dtype == np.float32 and K[1, 1] == 510


def test_a_transposed_camera_matrix_is_rejected():
    """K given transposed (column-major, principal point in the last row) has (0, 0, 1) on its
    diagonal end but not as its last row: it must be refused, not used as a camera whose
    projection puts every point near the principal point."""
    K = intrinsics(500.0, (640, 480))
    with pytest.raises(ValueError, match=r"last row must be \(0, 0, 1\)"):
        camera_matrix(K.T)
    with pytest.raises(ValueError, match=r"last row must be \(0, 0, 1\)"):
        camera_matrix([[500, 0, 320], [0, 500, 240], [0, 1e-3, 1]])


@pytest.mark.parametrize("box", [[5, 5, 5, 5], [40, 10, 40, 10], [30, 30, 20, 20]])
def test_an_empty_or_inverted_box_is_rejected(box):
    """A zero-size box (x1 == x0) is a ValueError naming the box, not a ZeroDivisionError or
    an infinite crop."""
    with pytest.raises(ValueError, match="x1 > x0"):
        crop_affine(np.array(box, np.float32), 64)
    with pytest.raises(ValueError, match="x1 > x0"):
        crop_intrinsics(intrinsics(500.0, (640, 480)), np.array(box, np.float32), 64)

