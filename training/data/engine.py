"""The synthetic sample generator: scene sampling, batched skinning, camera + crop, render, labels.

Every sample ``i`` of a dataset draws from its own generator seeded by ``(seed, split, i)``, so a
sample does not depend on batching, sharding or worker count.
"""
from __future__ import annotations

import dataclasses
import time
from collections import defaultdict

import numpy as np

from d2a_edge.body import BodyAsset, BodyModel
from d2a_edge.camera import crop_intrinsics, intrinsics, project, square_box
from d2a_edge.training.data import effects
from d2a_edge.training.data.appearance import Backgrounds, Material, part_labels, sample_material
from d2a_edge.training.data.posing import PoseConfig, PoseDraw, PoseSampler

SPLITS = {"id": 1, "ood": 2}  # split -> seed stream id
IMAGE_SIZES = ((640, 480), (1280, 720), (1920, 1080), (1024, 768), (720, 1280))
# per-sample schema: key -> (shape with s = image size, J, S, dtype)
SCHEMA_KEYS = ("image", "depth", "mask", "rotmats", "betas", "transl", "joints3d", "kp3d",
               "joints2d", "kp2d", "verts_coarse", "K", "crop_box", "img_size")


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Camera, crop and effect ranges for one split. Angles in degrees, sizes in pixels."""

    split: str = "id"
    image_size: int = 192
    hfov: tuple[float, float] = (40.0, 75.0)
    body_frac: tuple[float, float] = (0.35, 0.9)  # person height / image height
    crop_scale: tuple[float, float] = (1.1, 1.35)  # crop side / max(box w, h)
    crop_jitter: float = 0.07  # centre jitter as a fraction of the crop side
    elevation: tuple[float, float] = (-15.0, 25.0)  # camera pitch; + = camera above
    background_dir: str | None = None
    effects: str | None = None  # "id" / "ood" lighting and image effects; None: the split's

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")
        if self.effects is not None and self.effects not in SPLITS:
            raise ValueError(f"effects must be None or one of {sorted(SPLITS)}, "
                             f"got {self.effects!r}")

    @property
    def harsh(self) -> bool:
        """Whether samples get the OOD lighting and image effects (occluders, motion blur)."""
        return (self.effects or self.split) == "ood"

    @classmethod
    def for_split(cls, split: str, image_size: int = 192, background_dir: str | None = None):
        """The default ID or OOD configuration."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if split == "id":
            return cls("id", image_size, background_dir=background_dir)
        return cls("ood", image_size, hfov=(30.0, 100.0), body_frac=(0.3, 0.95),
                   crop_scale=(1.0, 1.45), crop_jitter=0.12, elevation=(35.0, 75.0),
                   background_dir=background_dir)


@dataclasses.dataclass
class SampleParams:
    """What is drawn for one sample before skinning."""

    rng: np.random.Generator
    rotmats: np.ndarray  # (J, 3, 3)
    pose: PoseDraw  # the pose's origin (sampler branch, noise-free centre)
    betas: np.ndarray  # (S,)
    material: Material
    elevation: float


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of the ``(seed, split)`` dataset."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


class SampleGenerator:
    """Generates schema samples (see ``SCHEMA_KEYS``) for a body asset and a scene config."""

    def __init__(self, asset: BodyAsset, config: SceneConfig):
        self.asset, self.config = asset, config
        self.skinner = BodyModel(asset)  # numpy LBS, (B, 3, V) layout underneath
        j_rest = asset.j_template - asset.j_template[0]
        self.poser = PoseSampler(asset.joint_names, j_rest, asset.parents,
                                 PoseConfig(split=config.split))
        self.parts = part_labels(asset)
        self.backgrounds = Backgrounds(config.background_dir)
        self.effects = effects.ImageEffects(config.image_size)
        self._renderer = None
        self.timings: dict[str, float] = defaultdict(float)  # stage -> seconds

    @property
    def renderer(self):
        """The per-process renderer, created on first use (needs EGL)."""
        if self._renderer is None:
            from d2a_edge.training.data.render import BodyRenderer
            rest = self.asset.v_template - self.asset.j_template[0]
            self._renderer = BodyRenderer(self.asset.faces, rest, self.parts,
                                          self.config.image_size)
        return self._renderer

    def params(self, seed: int, index: int) -> SampleParams:
        """What sample ``index`` of the ``seed`` dataset draws before skinning."""
        rng = sample_rng(seed, self.config.split, index)
        elev = rng.uniform(*self.config.elevation)
        if self.config.split == "ood":
            elev *= rng.choice([-1.0, 1.0], p=[0.3, 0.7])  # high or low camera
        pose = self.poser.draw(rng)
        R = pose.rotmats.copy()
        R[0] = self.poser.root(rng, elev)
        return SampleParams(rng, R, pose, self.poser.betas(rng, self.asset.num_betas),
                            sample_material(rng, harsh=self.config.harsh), elev)

    def generate(self, seed: int, indices: range | list[int]) -> dict[str, np.ndarray]:
        """Samples ``indices`` of the ``seed`` dataset, stacked: key -> (N, ...) arrays."""
        t0 = time.perf_counter()
        params = [self.params(seed, i) for i in indices]
        t1 = time.perf_counter()
        rot = np.stack([p.rotmats for p in params]).astype(np.float32)
        betas = np.stack([p.betas for p in params]).astype(np.float32)
        verts, joints = self.skinner(np.asarray(rot, np.float32), np.asarray(betas, np.float32),
                                     np.zeros((len(params), 3), np.float32))
        verts_t = verts.transpose(0, 2, 1)  # (B, 3, V), contiguous: no copy
        t2 = time.perf_counter()
        self.timings["pose_sampling"] += t1 - t0
        self.timings["lbs"] += t2 - t1
        scenes = [self._scene(p, verts_t[k], joints[k]) for k, p in enumerate(params)]
        t3 = time.perf_counter()
        rgb, depth, mask = self.renderer.render_batch(
            np.stack([sc["verts"] for sc in scenes]), np.stack([sc["Kc"] for sc in scenes]),
            [p.material for p in params], self.timings)
        t4 = time.perf_counter()
        samples = [self._finish(p, sc, rot[k], betas[k], rgb[k], depth[k], mask[k])
                   for k, (p, sc) in enumerate(zip(params, scenes))]
        self.timings["camera"] += t3 - t2
        self.timings["post_process"] += time.perf_counter() - t4
        return {key: np.stack([s[key] for s in samples]) for key in SCHEMA_KEYS}

    def _place(self, rng: np.random.Generator, vt: np.ndarray):
        """Camera K (3, 3), image size (W, H) and root translation (3,) for root-centred
        vertices vt (3, V): the body fills ``body_frac`` of the image and lies inside it."""
        cfg = self.config
        W, H = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
        f = (W / 2) / np.tan(np.radians(rng.uniform(*cfg.hfov)) / 2)
        K = intrinsics(f, (W, H))
        lo, hi = vt.min(1), vt.max(1)
        centre = 0.5 * (lo + hi)  # the body's box centre goes to depth z on a random pixel's ray
        frac = rng.uniform(*cfg.body_frac)
        z = f * max(hi[0] - lo[0], hi[1] - lo[1], 0.5) / (frac * min(W, H))
        z = max(z, 1.0 + centre[2] - lo[2])  # nearest vertex >= 1 m away
        for _ in range(2):  # on-axis projected size; back off until it fits the image
            d = vt[2] - centre[2] + z
            bw = np.ptp((vt[0] - centre[0]) / d) * f
            bh = np.ptp((vt[1] - centre[1]) / d) * f
            scale = max(bw / (0.98 * W), bh / (0.98 * H), 1.0)
            z *= scale
        u = K[0, 2] + rng.uniform(-0.5, 0.5) * max(W - bw, 0.0)
        v = K[1, 2] + rng.uniform(-0.5, 0.5) * max(H - bh, 0.0)
        ray = np.linalg.solve(K.astype(np.float64), np.array([u, v, 1.0]))
        transl = ray * (z / ray[2]) - centre
        return K, np.array([W, H], np.float32), transl.astype(np.float32)

    def _crop(self, rng: np.random.Generator, verts_t: np.ndarray, K: np.ndarray) -> np.ndarray:
        """(4,) square crop box around the projection of points verts_t (3, N), scaled and
        jittered."""
        cfg = self.config
        u = verts_t[0] / verts_t[2] * K[0, 0] + K[0, 2]  # (N,)
        v = verts_t[1] / verts_t[2] * K[1, 1] + K[1, 2]
        lo, hi = np.array([u.min(), v.min()]), np.array([u.max(), v.max()])
        side = float((hi - lo).max()) * rng.uniform(*cfg.crop_scale)
        centre = (lo + hi) / 2 + rng.uniform(-cfg.crop_jitter, cfg.crop_jitter, 2) * side
        return square_box(centre, max(side, 8.0))

    def _scene(self, p: SampleParams, vt_rel, joints_rel) -> dict[str, np.ndarray]:
        """Camera, placement and crop for root-centred vertices vt_rel (3, V), joints (J, 3)."""
        K, img_size, transl = self._place(p.rng, vt_rel[:, ::4])  # placement is approximate
        vt = vt_rel + transl[:, None]  # (3, V): row reductions are ~100x faster than (V, 3)
        crop_box = self._crop(p.rng, vt, K)
        return dict(verts=np.ascontiguousarray(vt.T), joints3d=joints_rel + transl, K=K,
                    img_size=img_size, transl=transl, crop_box=crop_box,
                    Kc=crop_intrinsics(K, crop_box, self.config.image_size))

    def _finish(self, p: SampleParams, sc: dict, rot, betas, rgb, depth,
                mask) -> dict[str, np.ndarray]:
        """One sample: the rendered crop composed over a background, plus its labels."""
        rng, s, verts, joints3d = p.rng, self.config.image_size, sc["verts"], sc["joints3d"]
        image = self.effects.compose(rng, rgb, mask, self.backgrounds.sample(rng, s),
                                     ood=self.config.harsh)
        kp3d = self.asset.keypoints(joints3d, verts, 17).astype(np.float32)
        return dict(image=image, depth=depth, mask=mask, rotmats=rot, betas=betas,
                    transl=sc["transl"], joints3d=joints3d.astype(np.float32), kp3d=kp3d,
                    joints2d=project(joints3d, sc["Kc"]).astype(np.float32),
                    kp2d=project(kp3d, sc["Kc"]).astype(np.float32),
                    verts_coarse=verts[self.asset.coarse_index].astype(np.float32),
                    K=sc["K"], crop_box=sc["crop_box"], img_size=sc["img_size"])
