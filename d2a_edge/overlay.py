"""Mesh and joint overlays drawn with OpenCV only (the lean fallback renderer).

Painter's algorithm with flat Lambert shading: good enough to see that a mesh sits on a body.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from d2a_edge.camera import project

NEAR = 0.05  # m: faces with a corner nearer than this (or behind the camera) are not drawn
FAR_PX = 1e6  # px: coordinates beyond this are clipped (mesh) or not drawn (joints)


def draw_mesh(image: np.ndarray, verts: np.ndarray, faces: np.ndarray, K: np.ndarray,
              color=(120, 170, 210), alpha: float = 0.7) -> np.ndarray:
    """``image`` (H, W, 3) uint8 BGR with the mesh ``verts`` (V, 3, camera frame) blended in."""
    import cv2

    tri = verts[faces]  # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    centre = tri.mean(1)
    facing = (n * centre).sum(1) < 0  # front faces point back toward the camera
    light = np.clip(-(n @ np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])), 0, 1)
    order = np.argsort(-centre[:, 2])  # far to near
    in_front = (tri[:, :, 2] > NEAR).all(1)  # every corner: a corner at z <= 0 projects wildly
    order = order[facing[order] & in_front[order]]
    with np.errstate(divide="ignore", invalid="ignore"):
        px = np.clip(project(verts, K), -FAR_PX, FAR_PX)  # fixed-point shift=4 fits in int32
    layer = image.copy()
    base = np.array(color, np.float64)
    pts = np.round(px[faces[order]] * 16).astype(np.int32)  # 4 fractional bits
    shade = (0.25 + 0.75 * light[order])[:, None] * base
    for p, c in zip(pts, shade):
        cv2.fillConvexPoly(layer, p, c.tolist(), lineType=cv2.LINE_AA, shift=4)
    return cv2.addWeighted(layer, alpha, image, 1 - alpha, 0)


def draw_joints(image: np.ndarray, joints2d: np.ndarray, parents=None,
                sigma: np.ndarray | None = None, radius: int = 3,
                sigma_full: float = 0.1) -> np.ndarray:
    """Joints (J, 2) px as dots, green (certain) to red (``sigma`` (J,) >= ``sigma_full``, m)."""
    import cv2

    out = image.copy()
    if sigma is None:
        sigma = np.zeros(len(joints2d))
    t = np.nan_to_num(np.clip(np.asarray(sigma) / sigma_full, 0, 1), nan=1.0)  # NaN σ: red
    joints2d = np.asarray(joints2d, np.float64)
    ok = np.isfinite(joints2d).all(1) & (np.abs(joints2d) < FAR_PX).all(1)  # drawable
    if parents is not None:
        for j, p in enumerate(parents):
            if p >= 0 and ok[p] and ok[j]:
                cv2.line(out, tuple(int(v) for v in joints2d[p]), tuple(int(v) for v in joints2d[j]),
                         (255, 255, 255), 1, cv2.LINE_AA)
    for (x, y), tj, good in zip(joints2d, t, ok):
        if good:
            cv2.circle(out, (int(x), int(y)), radius, (0, int(255 * (1 - tj)), int(255 * tj)),
                       -1, cv2.LINE_AA)
    return out


def write_obj(path, verts: np.ndarray, faces: np.ndarray) -> None:
    """Write a mesh as Wavefront OBJ (camera frame, metres), atomically: a full disk leaves no
    partial file, and the OSError names the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "w") as f:
            f.write("# d2a-edge mesh, camera frame (x right, y down, z forward), metres\n")
            np.savetxt(f, verts, fmt="v %.5f %.5f %.5f")
            np.savetxt(f, faces + 1, fmt="f %d %d %d")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"could not write {path}: {e.strerror or e}") from e
    except BaseException:  # Ctrl-C mid-write: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
