"""Evaluation keypoints and sub-mesh picks shared by the body converters (numpy only)."""
from __future__ import annotations

import numpy as np


def vertex_keypoints(sources: tuple[str, ...], joint_names: list[str],
                     v_mean: np.ndarray) -> np.ndarray:
    """Keypoint sources as indices into concat(joints, vertices).

    A source is a joint name, or ``@head_top`` (the highest vertex, min y) / ``@nose`` (the most
    forward vertex, min z, within 25 cm of the top) picked on the mean mesh ``v_mean`` (V, 3).
    """
    J = len(joint_names)
    head = v_mean[:, 1] < v_mean[:, 1].min() + 0.25
    rules = {"@head_top": int(np.argmin(v_mean[:, 1])),
             "@nose": int(np.flatnonzero(head)[np.argmin(v_mean[head, 2])])}
    out = []
    for name in sources:
        if name.startswith("@"):
            out.append(J + rules[name])
        elif name in joint_names:
            out.append(joint_names.index(name))
        else:
            raise ValueError(f"keypoint source {name!r} is not a joint of this body")
    return np.array(out)


def farthest_points(v: np.ndarray, n: int) -> np.ndarray:
    """``n`` vertex indices spread over ``v`` (V, 3) by farthest-point sampling (from vertex 0)."""
    n = min(n, len(v))
    idx = np.zeros(n, np.int64)
    dist = np.full(len(v), np.inf)
    for i in range(1, n):
        dist = np.minimum(dist, ((v - v[idx[i - 1]]) ** 2).sum(1))
        idx[i] = int(dist.argmax())
    return idx
