"""``MeshRecoverer``: frame -> person boxes -> crops -> engine -> skinning -> ``HumanMesh``.

Intrinsics: pass ``intrinsics`` (3x3, pixels) for metric translations; the documented default is
a pinhole with focal length sqrt(W^2 + H^2) pixels (about 53 degrees diagonal field of view, the
CLIFF convention) and the principal point at the image centre.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np

from d2a_edge.backends import make_backend
from d2a_edge.body import BodyModel
from d2a_edge.bundle import load_bundle
from d2a_edge.camera import (bbox_info, camera_matrix, crop_affine, intrinsics, project,
                             square_box)
from d2a_edge.flip import average_mirrored, mirror_inputs
from d2a_edge.imageio import InputError, as_bgr8, open_source
from d2a_edge.smoothing import BETA, MIN_CUTOFF
from d2a_edge.tracking import (LOST_SCORE, SAME_PERSON_IOU, check_count, distinct_boxes, iou,
                               search_windows)
from d2a_edge.tracking import track as track_people
from d2a_edge.types import HumanMesh

log = logging.getLogger("d2a_edge")
CROP_SCALE = 1.2  # crop side / max(box w, h): the middle of the training range


class OneThreadHelpers:
    """While a call runs, OpenCV works on the calling thread only, and numpy's BLAS too unless
    ``blas=False`` (for GPU engines, whose numpy skinning may use the free cores).

    Cropping one person and skinning one mesh are too small to gain from threads, but their
    thread pools keep spinning after each use and take the cores from the engine's own pool
    (measured with ``d2a-bench`` on the 2-core CPU: fp32 engine 39.8 ms beside OpenCV's pool,
    25.0 ms without either pool). BLAS is limited through ``threadpoolctl`` when it is installed
    (a dependency of the package).

    These settings belong to the process, so instances share them. OpenCV's thread count has
    one count of the calls in progress: the first call to start saves the caller's setting and
    the last to end puts it back, also when several recoverers run in several threads at once.
    BLAS is limited by the first call to start, and only while that call runs: OpenBLAS ignores
    a thread count raised from another thread than the one that lowered it (measured with
    OpenBLAS 0.3.31), so the thread that limits it restores it.
    """

    _lock = threading.Lock()
    _cv2 = {"calls": 0, "before": None}
    _blas = {"limiter": None}

    def __init__(self, blas: bool = True):
        self.limit_blas = blas
        self._controller = None  # threadpoolctl's view of the BLAS libraries, at the first call

    @classmethod
    def _enter(cls, blas):
        """``blas``: the calling instance's ThreadpoolController, or None to leave BLAS alone
        (``blas=False``, or threadpoolctl missing). Returns the BLAS limiter this call must
        restore, or None."""
        import cv2
        with cls._lock:
            if cls._cv2["calls"] == 0:
                cls._cv2["before"] = cv2.getNumThreads()
                cv2.setNumThreads(1)
            cls._cv2["calls"] += 1
            if blas is None or cls._blas["limiter"] is not None:
                return None
            cls._blas["limiter"] = blas.limit(limits=1, user_api="blas")
            return cls._blas["limiter"]

    @classmethod
    def _leave(cls, limiter) -> None:
        import cv2
        with cls._lock:
            if limiter is not None:
                limiter.restore_original_limits()
                cls._blas["limiter"] = None
            cls._cv2["calls"] -= 1
            if cls._cv2["calls"] == 0:
                cv2.setNumThreads(cls._cv2["before"])

    @contextlib.contextmanager
    def __call__(self):
        if self.limit_blas and self._controller is None:
            try:
                from threadpoolctl import ThreadpoolController
                self._controller = ThreadpoolController()  # sees the libraries loaded by now
            except ImportError:
                self._controller = False
        limiter = self._enter(self._controller if self.limit_blas and self._controller is not False
                              else None)
        try:
            yield
        finally:
            self._leave(limiter)


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """The documented default K for an image of ``width`` x ``height`` pixels."""
    return intrinsics(float(np.hypot(width, height)), (width, height))


MIN_BOX_SIDE = 2.0  # px: a smaller box holds no person (and put the person kilometres away)


def _boxes_array(boxes, width: int, height: int) -> np.ndarray:
    """``boxes`` as a float32 (N, 4) array; one box may be given flat, as (4,). Each box must
    overlap the ``width`` x ``height`` frame, be at least ``MIN_BOX_SIDE`` px wide and high, and
    stay within 100 frame sizes of it (a larger one overflows the crop's arithmetic)."""
    try:
        b = np.asarray(boxes, np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"boxes must be numbers [x0, y0, x1, y1] per person: {e}") from None
    if b.size == 0:
        return np.zeros((0, 4), np.float32)
    if b.ndim == 1 and len(b) == 4:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise InputError(f"boxes must be an (N, 4) array of [x0, y0, x1, y1], got shape "
                         f"{b.shape}")
    if not np.all(np.isfinite(b)) or np.any(b[:, 2] <= b[:, 0]) or np.any(b[:, 3] <= b[:, 1]):
        raise InputError(f"boxes must be finite [x0, y0, x1, y1] with x1 > x0, y1 > y0: "
                         f"{b.tolist()}")
    for box in b.astype(np.float64):
        x0, y0, x1, y1 = box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise InputError(f"box {box.tolist()} lies outside the {width}x{height} frame")
        if min(x1 - x0, y1 - y0) < MIN_BOX_SIDE:
            raise InputError(f"box {box.tolist()} is under {MIN_BOX_SIDE:g} px wide or high")
        if np.abs(box).max() > 100 * max(width, height):
            raise InputError(f"box {box.tolist()} reaches over 100 frame sizes from the "
                             f"{width}x{height} frame")
    return b


def box_for_crop(crop_box) -> list[float]:
    """The person box (x0, y0, x1, y1) whose SDK crop (``make_crops``) is the square
    ``crop_box``: same centre, side / ``CROP_SCALE`` (for labelled renders, whose crop is known)."""
    b = np.asarray(crop_box, np.float64)
    c, half = (b[:2] + b[2:]) / 2, (b[2] - b[0]) / CROP_SCALE / 2
    return [c[0] - half, c[1] - half, c[0] + half, c[1] + half]


def make_crops(image: np.ndarray, boxes: np.ndarray, K: np.ndarray, size: int, pool=None):
    """Model inputs for person ``boxes`` (N, 4) in a BGR ``image``: square crops
    (N, 3, s, s) float32 RGB 0..1, the square boxes (N, 4) and bbox_info (N, 3).

    ``pool`` (an executor): the crops are cut in parallel, one task per person (OpenCV and
    numpy release the GIL). The result is the same bit for bit."""
    import cv2

    H, W = image.shape[:2]
    sq = np.stack([square_box(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2),
                              max(b[2] - b[0], b[3] - b[1]) * CROP_SCALE) for b in boxes])
    batch = np.empty((len(sq), 3, size, size), np.float32)  # RGB 0..1

    def cut(n: int) -> None:
        bgr = cv2.warpAffine(image, crop_affine(sq[n], size), (size, size),
                             flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        np.multiply(bgr.transpose(2, 0, 1)[::-1], np.float32(1 / 255), out=batch[n])

    if pool is None or len(sq) < 2:
        for n in range(len(sq)):
            cut(n)
    else:
        list(pool.map(cut, range(len(sq))))
    info = bbox_info(sq, np.broadcast_to(K, (len(sq), 3, 3)))
    return batch, sq, info.astype(np.float32)


SKINNING = ("auto", "numpy", "cuda")
CROP_THREADS = 8  # at most, for cutting crops in parallel beside a GPU engine
SEARCH_EVERY = 5  # stream(): all search windows every 5 frames, a fifth of them a frame


def person_score(sigma: np.ndarray, sigma_ref: float) -> float:
    """0..1 from the mean joint σ relative to the model's typical σ: 2/3 at the typical σ,
    0 at three times it (a crop without a well-framed person) and for a σ that is not finite."""
    score = 1.0 - float(np.mean(sigma)) / (3.0 * sigma_ref)
    return float(np.clip(score, 0.0, 1.0)) if np.isfinite(score) else 0.0


def make_skinner(asset, skinning: str = "auto", backend_device: str = "cpu", mesh="full"):
    """``BodyModel`` (numpy) or ``skinning_cuda.CudaSkinner`` for the ``mesh`` resolution;
    ``auto`` takes CUDA only when the backend runs on a GPU and the kernel is available (the
    choice is logged)."""
    if skinning not in SKINNING:
        raise ValueError(f"skinning must be one of {SKINNING}, got {skinning!r}")
    if skinning == "cuda" or (skinning == "auto" and backend_device.startswith("cuda")):
        from d2a_edge import skinning_cuda
        if skinning == "cuda" or skinning_cuda.is_available():
            try:
                skinner = skinning_cuda.CudaSkinner(asset, mesh=mesh)
                log.info("d2a_edge: skinning on the GPU (CUDA kernel)")
                return skinner
            # ValueError: a body the kernel cannot skin (one with pose correctives, as SMPL's)
            except (ImportError, RuntimeError, ValueError) as e:
                if skinning == "cuda":
                    raise RuntimeError(f"skinning='cuda' is not available here: {e}") from e
                log.info("d2a_edge: CUDA skinning unavailable (%s); using numpy", e)
    return BodyModel(asset, mesh)


MESHES = ("full", "coarse")


class MeshRecoverer:
    """3D human meshes from images. ``rec(frame_bgr, boxes=None) -> list[HumanMesh]``.

    model: a bundle directory (``d2a-export`` output) or None for the bundled ``edge-s``.
    backend: "auto" (TensorRT -> ONNX Runtime -> torch) | "tensorrt" | "onnxruntime" | "torch".
    device: "auto" | "cpu" | "cuda": where the engine runs ("cuda" without a GPU is an error).
    precision: "fp32" | "fp16" | "int8" (an artifact of that precision must be in the bundle).
    intrinsics: (3, 3) camera matrix in pixels, or None for ``default_intrinsics``.
    skinning: "auto" (the CUDA kernel when the backend runs on a GPU and the kernel is built,
    else numpy) | "numpy" | "cuda".
    mesh: the output mesh, "full" (the body model's mesh; Anny: 13,718 vertices) or "coarse"
    (its vertex-token sub-mesh, Anny: 369 vertices with their own faces; only those vertices
    are skinned). Joints, σ, pose and shape do not change.
    flip: also run the model on each crop's mirror image and average the two (``d2a_edge.flip``):
    a little more accurate (shipped edge-s: PA-MPJPE 73.0 -> 70.6 mm in distribution, 192.7 ->
    190.4 mm out of it) for twice the engine time. Needs a left-right symmetric body model.
    threads: CPU threads of the ONNX Runtime engine (None: all cores), e.g. to leave cores to a
    control loop; cropping and skinning already run on the calling thread. TensorRT ignores
    it; the torch backend refuses it.
    Without ``boxes``, the whole frame is taken as one person (camera demos).
    """

    def __init__(self, model: str | os.PathLike | None = None, backend: str = "auto",
                 device: str = "auto", precision: str = "fp32", intrinsics=None,
                 skinning: str = "auto", mesh: str = "full", flip: bool = False,
                 threads: int | None = None):
        self.K = None if intrinsics is None else camera_matrix(intrinsics)  # fail before loading
        if mesh not in MESHES:
            raise ValueError(f"mesh must be one of {MESHES}, got {mesh!r}")
        if not isinstance(flip, bool):
            raise ValueError(f"flip must be True or False, got {flip!r}")
        self.bundle = load_bundle(model)
        self.mirror = self.bundle.asset.mirror_joints() if flip else None
        self.faces = self.bundle.asset.mesh_faces(mesh)
        self.backend = make_backend(self.bundle, backend, device, precision, threads)
        engine_on = str(getattr(self.backend, "device", "cpu"))
        self.skinner = make_skinner(self.bundle.asset, skinning, engine_on, mesh)
        self.size = self.bundle.image_size
        # On the CPU the engine needs every core. With a GPU engine the cores are free: the
        # crops of several people are cut in parallel, one OpenCV thread per task (nested
        # OpenCV pools would only compete), and numpy skinning keeps its BLAS threads.
        if engine_on == "cpu":
            self.one_thread_helpers, self.crop_pool = OneThreadHelpers(), None
        else:
            self.one_thread_helpers = OneThreadHelpers(blas=False)
            self.crop_pool = ThreadPoolExecutor(min(CROP_THREADS, os.cpu_count() or 1),
                                                thread_name_prefix="d2a-crops")
        # TensorRT's and the CUDA skinner's device buffers are per instance: calls from several
        # threads run one at a time, in no fixed order (use one MeshRecoverer per thread to
        # run them side by side)
        self._lock = threading.Lock()

    @property
    def skinning(self) -> str:
        """Where meshes are skinned: "cuda" (the kernel) or "numpy"."""
        return "numpy" if isinstance(self.skinner, BodyModel) else "cuda"

    def camera(self, width: int, height: int) -> np.ndarray:
        return self.K if self.K is not None else default_intrinsics(width, height)

    def __call__(self, image, boxes=None) -> list[HumanMesh]:
        """Meshes for the people in ``boxes`` ((N, 4) x0, y0, x1, y1 px); ``None``: the whole
        frame is one person; ``"auto"``: the built-in single-person locator (``locate``), and
        ``[]`` when it finds nobody."""
        image = as_bgr8(image)
        H, W = image.shape[:2]
        if isinstance(boxes, str):
            if boxes != "auto":
                raise InputError(f'boxes must be an (N, 4) array, None or "auto", got {boxes!r}')
            box = self.locate(image)
            if box is None:
                return []
            boxes = box[None]
        b = _boxes_array(boxes, W, H) if boxes is not None else \
            np.array([[0, 0, W, H]], np.float32)
        if len(b) == 0:
            return []
        K = self.camera(W, H)
        with self._lock, self.one_thread_helpers():
            crops, sq, info = make_crops(image, b, K, self.size, self.crop_pool)
            out = self.infer(crops, info)
            verts, joints = self.skin(out)
            return self.meshes(out, verts, joints, sq, K)

    def locate(self, image) -> np.ndarray | None:
        """The built-in person box, with no detector and no download (x0, y0, x1, y1 px), or
        None when the frame holds no confident person: ``locate_all``'s first box."""
        boxes = self.locate_all(image, 1)
        return boxes[0] if len(boxes) else None

    def locate_all(self, image, max_people: int) -> np.ndarray:
        """Boxes (N, 4) of up to ``max_people`` people (x0, y0, x1, y1 px), the most confident
        first; (0, 4) when there is nobody.

        The model runs on the full frame and on overlapping windows (``search_windows``, one
        batch; 22 crops for a 16:9 frame). Each window's mesh that is a confident person
        (``score`` >= ``LOST_SCORE``) with at least half of it inside the frame gives the box
        of that mesh projected into the frame. Taken by lowest mean σ, a box that overlaps one
        taken before (``SAME_PERSON_IOU``) is the same person. No detector: people standing
        close together or overlapping may be found as one; for crowds pass detector boxes.
        """
        check_count("max_people", max_people)
        image = as_bgr8(image)
        H, W = image.shape[:2]
        people = self(image, boxes=search_windows(W, H))
        return self._people_boxes(people, image.shape, self.camera(W, H), max_people)

    @classmethod
    def _people_boxes(cls, window_people: list[HumanMesh], shape, K: np.ndarray,
                      max_people: int, taken=()) -> np.ndarray:
        """``locate_all``'s boxes (N, 4) from the meshes of search windows: each confident
        mesh mostly inside the frame gives its projected box, taken by lowest mean σ, one per
        person, none overlapping the boxes ``taken`` (people already tracked)."""
        found = [(float(p.joint_sigma.mean()), box) for p in window_people
                 if (box := cls._track_box(p, shape, K)) is not None
                 and all(iou(box, t) < SAME_PERSON_IOU for t in taken)]
        if not found:
            return np.zeros((0, 4), np.float32)
        sigma = np.array([f[0] for f in found])
        return distinct_boxes(np.array([f[1] for f in found]), np.argsort(sigma, kind="stable"),
                              max_people)

    def infer(self, crops: np.ndarray, info: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's outputs for ``crops``; with ``flip``, averaged with its outputs for
        their mirror images."""
        out = self.backend.run(crops, info)
        if self.mirror is None:
            return out
        return average_mirrored(out, self.backend.run(*mirror_inputs(crops, info)), self.mirror)

    def skin(self, out: dict) -> tuple[np.ndarray, np.ndarray]:
        """Vertices (N, V, 3) and joints (N, J, 3) of the engine's outputs."""
        return self.skinner(out["pose"].astype(np.float32), out["shape"].astype(np.float32),
                         out["translation"].astype(np.float32))

    def meshes(self, out: dict, verts, joints, boxes: np.ndarray, K) -> list[HumanMesh]:
        """``HumanMesh`` per person from engine outputs and skinned vertices/joints."""
        pose = out["pose"].astype(np.float32)
        sigma = self.bundle.calibrate_sigma(  # (N, J), metres
            np.linalg.norm(out["joint_sigma"].reshape(len(pose), -1, 3), axis=-1))
        people = []
        for i in range(len(pose)):
            people.append(HumanMesh(
                vertices=verts[i], faces=self.faces, joints3d=joints[i],
                joints2d=project(joints[i], K), joint_sigma=sigma[i], pose=pose[i],
                shape=out["shape"][i], translation=out["translation"][i], box=boxes[i],
                score=person_score(sigma[i], self.bundle.sigma_reference)))
        return people

    def stream(self, source, smoothing: bool = True, min_cutoff: float = MIN_CUTOFF,
               beta: float = BETA, search_every: int = SEARCH_EVERY, max_people: int = 1
               ) -> Iterator[list[HumanMesh]]:
        """Meshes per frame from a camera index, video file or image folder: up to
        ``max_people`` tracked people, sorted by ``track_id`` (``d2a_edge.tracking``).

        Each person's earlier meshes give their next crop (``BoxFilter``). The first frame
        runs the whole person search (``locate_all``: about 22 crops); after it, while fewer
        than ``max_people`` are tracked, each frame runs ``1 / search_every`` of its windows
        beside the tracked people (all of them every ``search_every`` frames), so that no
        frame stalls, and a frame with nobody found gives ``[]``. A person is lost when their
        score falls under ``LOST_SCORE`` or under half of their mesh is inside the frame.
        One-Euro smoothing of each person's vertices, joints and translation unless
        ``smoothing=False``.
        """
        for _, _, people in self.track(open_source(source), smoothing, min_cutoff, beta,
                                       search_every, max_people):
            yield people

    def track(self, frames, smoothing: bool = True, min_cutoff: float = MIN_CUTOFF,
              beta: float = BETA, search_every: int = SEARCH_EVERY, max_people: int = 1):
        """Like ``stream`` over an iterator of ``(t_seconds, bgr)``; yields (t, frame, people).

        Each crop comes from the boxes of the person's earlier unsmoothed meshes, filtered
        with a constant velocity (``BoxFilter``), so that smoothing adds no lag to the crop and
        the crop neither trails a moving person nor wobbles around a still one. Every tracked
        person's crop runs in one batch. A person found again after being lost gets a new
        ``track_id``. Frame times must increase (``ValueError``)."""
        return track_people(self, frames, smoothing, min_cutoff, beta, search_every,
                            max_people)

    @staticmethod
    def _in_frame(box, shape) -> np.ndarray | None:
        """``box`` if ``__call__`` accepts it for a frame of ``shape``, else None."""
        try:
            return _boxes_array(box, shape[1], shape[0])[0]
        except InputError:
            return None

    @staticmethod
    def _track_box(person: HumanMesh, shape, K: np.ndarray,
                   min_score: float = LOST_SCORE) -> np.ndarray | None:
        H, W = shape[:2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = project(person.vertices, K)
        seen = (person.vertices[:, 2] > 0) & np.isfinite(uv).all(1)  # in front of the camera
        inside = seen & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        if person.score < min_score or inside.mean() < 0.5:
            return None
        lo, hi = uv[seen].min(0), uv[seen].max(0)
        box = np.array([lo[0], lo[1], hi[0], hi[1]], np.float32)
        try:  # a mesh collapsed to a point or a line, or reaching far out: no box
            _boxes_array(box, W, H)
        except InputError:
            return None
        return box
