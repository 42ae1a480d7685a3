"""Flip test-time augmentation: the model on each crop and on its mirror image, combined.

A crop mirrored left-right shows the mirror image of the person, whose pose is the mirrored pose
(each joint takes its counterpart's rotation, reflected: ``M R M`` with ``M = diag(-1, 1, 1)``)
and whose root sits at ``x -> -x``. The CLIFF camera input of the mirrored crop is the same with
its first entry negated. ``average_mirrored`` maps the second prediction back and averages the
two: rotations by their chordal mean, translation, shape and σ arithmetically. It needs a body
whose rest skeleton is left-right symmetric (``BodyAsset.mirror_joints`` checks).

Measured on the shipped edge-s (`d2a-eval d2a_edge/models/edge-s --flip`, MODEL_CARD.md): PA-MPJPE
73.0 -> 70.6 mm in distribution and 192.7 -> 190.4 mm out of it, for twice the engine time.
"""
from __future__ import annotations

import numpy as np

from d2a_edge.body.rotations import nearest_rotation

MIRROR_X = np.array([-1.0, 1.0, 1.0], np.float32)
MIRROR = np.diag(MIRROR_X.astype(np.float64))  # the left-right reflection x -> -x


def mirror_pose(R: np.ndarray, perm) -> np.ndarray:
    """The left-right mirrored pose of ``R`` (..., J, 3, 3): each joint takes the reflected
    rotation (``MIRROR R MIRROR``) of its counterpart ``perm[j]`` (``BodyAsset.mirror_joints``;
    spine and head joints their own). The pose sampler mirrors its draws with it too."""
    return (MIRROR @ R @ MIRROR)[..., perm, :, :]


def mirror_inputs(crops: np.ndarray, info: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mirror images of ``crops`` (N, 3, s, s) and their camera inputs ``info`` (N, 3)."""
    return np.ascontiguousarray(crops[..., ::-1]), (info * MIRROR_X).astype(info.dtype)


def average_mirrored(out: dict, mirrored: dict, perm: np.ndarray) -> dict:
    """Engine outputs of crops (``out``) and of their mirror images (``mirrored``), combined;
    ``perm`` is ``BodyAsset.mirror_joints()``. Keys: pose (N, J, 3, 3), shape (N, S),
    translation (N, 3), joint_sigma (N, J, 3), and joint_mu (N, J, 3) when present; any other
    key is ``out``'s."""
    res = dict(out)
    pose = mirror_pose(mirrored["pose"], perm)
    res["pose"] = nearest_rotation((out["pose"] + pose) / 2).astype(out["pose"].dtype)
    res["translation"] = (out["translation"] + mirrored["translation"] * MIRROR_X) / 2
    res["shape"] = (out["shape"] + mirrored["shape"]) / 2
    res["joint_sigma"] = (out["joint_sigma"] + mirrored["joint_sigma"][:, perm]) / 2
    if "joint_mu" in out:
        res["joint_mu"] = (out["joint_mu"] + (mirrored["joint_mu"] * MIRROR_X)[:, perm]) / 2
    return res
