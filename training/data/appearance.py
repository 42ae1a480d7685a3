"""Appearance: body-part labels, skin tones, procedural clothing, lights and backgrounds.

Clothing is per-vertex body parts from the skinning weights (shirt on torso/arms, trousers on
legs, skin on head/hands, a hair cap) plus a procedural pattern evaluated in the fragment
shader on rest-pose coordinates, so stripes and checks follow the body.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from d2a_edge.body import BodyAsset

PARTS = ("head", "hair", "hands", "torso", "upper_arm", "forearm", "hips", "thigh", "shin", "feet")
_BONE_PART = {"Hips": "hips", "LHipJoint": "hips", "RHipJoint": "hips", "LowerBack": "torso",
              "Spine": "torso", "Spine1": "torso", "LeftShoulder": "torso",
              "RightShoulder": "torso", "Neck": "head", "Neck1": "head", "Head": "head",
              "LeftArm": "upper_arm", "RightArm": "upper_arm", "LeftForeArm": "forearm",
              "RightForeArm": "forearm", "LeftHand": "hands", "RightHand": "hands",
              "LeftUpLeg": "thigh", "RightUpLeg": "thigh", "LeftLeg": "shin", "RightLeg": "shin",
              "LeftFoot": "feet", "RightFoot": "feet", "LeftToeBase": "feet",
              "RightToeBase": "feet"}
PATTERNS = ("solid", "stripes", "checks", "dots")
# sRGB skin tones, light to dark (roughly the Monk scale)
SKIN_TONES = np.array([[246, 237, 228], [243, 231, 219], [247, 234, 208], [234, 218, 186],
                       [215, 189, 150], [160, 126, 86], [130, 92, 67], [96, 65, 52],
                       [58, 49, 42], [41, 36, 32]], np.float32) / 255
HAIR = np.array([[20, 15, 12], [60, 40, 25], [110, 75, 40], [190, 160, 100], [150, 150, 150],
                 [120, 50, 25]], np.float32) / 255


def part_labels(asset: BodyAsset) -> np.ndarray:
    """(V,) int32 index into ``PARTS`` per vertex: the part with the most skinning weight."""
    V = asset.num_vertices
    bone_part = np.array([PARTS.index(_BONE_PART.get(n, "torso")) for n in asset.joint_names])
    votes = np.zeros((V, len(PARTS)), np.float32)
    np.add.at(votes, (np.arange(V)[:, None], bone_part[asset.skin_indices]), asset.skin_weights)
    labels = votes.argmax(1).astype(np.int32)
    head = labels == PARTS.index("head")
    rel = asset.v_template - asset.j_template[0]
    if head.any():
        top = rel[head, 1].min()
        zmid = np.percentile(rel[head, 2], 60)
        hair = head & ((rel[:, 1] < top + 0.07) | ((rel[:, 2] > zmid) & (rel[:, 1] < top + 0.17)))
        labels[hair] = PARTS.index("hair")
    return labels


@dataclasses.dataclass(frozen=True)
class Material:
    """Per-sample shading inputs (all colours linear-ish RGB in 0..1)."""

    color1: np.ndarray  # (P, 3) main colour per part
    color2: np.ndarray  # (P, 3) pattern colour per part
    pattern: np.ndarray  # (P,) int32 index into PATTERNS
    freq: np.ndarray  # (P,) float32 pattern frequency (cycles per metre)
    light_dir: np.ndarray  # (3,) unit vector from the surface toward the light (camera frame)
    light_color: np.ndarray  # (3,)
    ambient: float
    diffuse: float
    specular: float


def _random_colors(rng: np.random.Generator, n: int, sat=(0.1, 0.9), val=(0.15, 0.95)
                   ) -> np.ndarray:
    """(n, 3) float32 RGB in 0..1 from uniform hue, saturation and value."""
    hsv = np.stack([rng.uniform(0, 180, n), rng.uniform(*sat, n) * 255,
                    rng.uniform(*val, n) * 255], -1).astype(np.uint8)[None]  # (1, n, 3)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0].astype(np.float32) / 255


def sample_material(rng: np.random.Generator, harsh: bool) -> Material:
    """Skin tone, hair, outfit (sleeves/shorts/patterns) and a light; ``harsh`` for OOD."""
    P = len(PARTS)
    skin = np.clip(SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.9, 1.1), 0, 1)
    c1, c2 = np.tile(skin, (P, 1)), np.tile(skin, (P, 1))
    pattern, freq = np.zeros(P, np.int32), np.full(P, 8.0, np.float32)
    hair = skin if rng.random() < 0.12 else HAIR[rng.integers(len(HAIR))]
    c1[PARTS.index("hair")] = c2[PARTS.index("hair")] = hair
    sleeves = rng.choice(3, p=[0.5, 0.35, 0.15])  # long, short, none
    shirt_parts = ["torso", "upper_arm", "forearm"][:3 - sleeves]
    legs = ["hips", "thigh", "shin"] if rng.random() < 0.75 else ["hips", "thigh"]
    garments = ((shirt_parts, [0.45, 0.25, 0.2, 0.1]), (legs, [0.75, 0.1, 0.1, 0.05]),
                (["feet"], [1.0, 0, 0, 0]))
    colors = _random_colors(rng, 2 * len(garments)).reshape(len(garments), 2, 3)
    for (parts, p_pattern), (a, b) in zip(garments, colors):
        kind, f = rng.choice(len(PATTERNS), p=p_pattern), rng.uniform(6, 30)
        for name in parts:
            i = PARTS.index(name)
            c1[i], c2[i], pattern[i], freq[i] = a, b, kind, f
    return Material(c1.astype(np.float32), c2.astype(np.float32), pattern, freq,
                    *_sample_light(rng, harsh))


def _sample_light(rng: np.random.Generator, harsh: bool):
    if harsh:  # hard light from the side, behind or below; little ambient; tinted
        d = rng.normal(size=3)
        tint = np.clip(1.0 + rng.normal(0, 0.25, 3), 0.5, 1.5)
        ambient, diffuse, spec = rng.uniform(0.02, 0.15), rng.uniform(1.0, 1.7), rng.uniform(0.2, 0.6)
    else:  # soft light from the camera side and above
        d = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-1.0, 0.1), -rng.uniform(0.5, 1.2)])
        tint = np.clip(1.0 + rng.normal(0, 0.05, 3), 0.85, 1.15)
        ambient, diffuse, spec = rng.uniform(0.3, 0.55), rng.uniform(0.45, 0.8), rng.uniform(0, 0.12)
    d = d / np.linalg.norm(d)
    return d.astype(np.float32), tint.astype(np.float32), float(ambient), float(diffuse), float(spec)


class Backgrounds:
    """Procedural backgrounds (gradients, value noise, shapes) or crops of user images."""

    def __init__(self, folder: str | Path | None = None):
        self.files: list[Path] = []
        if folder is not None:
            folder = Path(folder)
            exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
            self.files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
            if not self.files:
                raise ValueError(f"background folder {folder} holds no images "
                                 f"(looked for {sorted(exts)})")

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """(size, size, 3) uint8 RGB."""
        if self.files and rng.random() < 0.8:
            return self._from_file(rng, size)
        return (_gradient, _value_noise, _shapes)[rng.integers(3)](rng, size)

    def _from_file(self, rng: np.random.Generator, size: int) -> np.ndarray:
        path = self.files[rng.integers(len(self.files))]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read background image {path}")
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = cv2.resize(img[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def _rgb8(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """(3,) or (n, 3) uint8 random colours."""
    c = (_random_colors(rng, n or 1) * 255).astype(np.uint8)
    return c if n else c[0]


def _gradient(rng: np.random.Generator, s: int) -> np.ndarray:
    """Bilinear blend of four random corner colours."""
    corners = _rgb8(rng, 4).reshape(2, 2, 3)
    return cv2.resize(corners, (s, s), interpolation=cv2.INTER_LINEAR)


def _value_noise(rng: np.random.Generator, s: int) -> np.ndarray:
    """Two octaves of smooth colour noise."""
    c = int(rng.integers(3, 7))
    low = cv2.resize(rng.integers(0, 256, (c, c, 3), dtype=np.uint8), (s, s),
                     interpolation=cv2.INTER_LINEAR)
    c = int(rng.integers(12, 40))
    high = cv2.resize(rng.integers(0, 256, (c, c, 3), dtype=np.uint8), (s, s),
                      interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(low, 0.7, high, 0.3, 0.0)


def _shapes(rng: np.random.Generator, s: int) -> np.ndarray:
    """Random filled rectangles, circles and lines on a flat colour."""
    img = np.empty((s, s, 3), np.uint8)
    img[:] = _rgb8(rng)
    n = int(rng.integers(4, 12))
    for col8 in _rgb8(rng, n):
        col = tuple(int(c) for c in col8)
        p = rng.integers(-s // 4, s + s // 4, 4)
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col, -1)
        elif kind == 1:
            cv2.circle(img, (int(p[0]), int(p[1])), int(rng.integers(4, s // 3)), col, -1)
        else:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), col,
                     int(rng.integers(1, 8)))
    return img
