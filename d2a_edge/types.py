"""Typed results of the SDK. Field names equal the exported ONNX output names where they overlap."""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class HumanMesh:
    """One person in one frame. Camera optical frame (x right, y down, z forward), metres.

    vertices (V, 3); faces (F, 3) int32; joints3d (J, 3); joints2d (J, 2) image pixels;
    joint_sigma (J,) metres, the predicted per-joint uncertainty: the model's σ, calibrated by
    d2a-export so that on synthetic validation renders it about equals the mean error of the
    joint's position relative to the pelvis (``translation``'s own error is not included; the
    pelvis entry carries no meaning); pose (J, 3, 3)
    joint rotations (local-ref, see ``d2a_edge.body``); shape (S,) body-shape coefficients;
    translation (3,) root joint (pelvis) position; box (4,) [x0, y0, x1, y1] pixels, the square
    crop the model saw (the given box's centre, its longer side times ``CROP_SCALE``, 1.2), so
    larger than the box passed in; all arrays are float32 but faces. score in
    [0, 1] from the mean σ relative to the model's typical σ (2/3 typical, 0 at three times it);
    track_id: the person's id while ``MeshRecoverer.stream`` / ``track`` follows them (a person
    found again after being lost gets a new one; -1 for single frames).
    """

    vertices: np.ndarray
    faces: np.ndarray
    joints3d: np.ndarray
    joints2d: np.ndarray
    joint_sigma: np.ndarray
    pose: np.ndarray
    shape: np.ndarray
    translation: np.ndarray
    box: np.ndarray
    score: float
    track_id: int = -1
