"""Image validation and frame sources with clear errors (camera, video file, image folder)."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("d2a_edge")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_SIDE = 16
FLOAT_UNIT_MAX = 2.0  # as_bgr8: a float image up to this is 0..1 (a 0..255 one would be black)


CAMERA_GRACE_S = 2.0  # a camera may deliver no frame this long (it is reopened once) ...
VIDEO_MAX_SKIPS = 25  # ... and a video file may have this many unreadable frames in a row
FOLDER_FPS = 30.0  # an image folder is a sequence at this rate (its timestamps: i / FOLDER_FPS)


class InputError(ValueError):
    """An image or source the SDK cannot use; the message says what was wrong."""


class SourceLost(InputError):
    """A camera delivered no frame for ``CAMERA_GRACE_S`` seconds, even after reopening it
    (unplugged, or its driver stopped)."""


def as_bgr8(image) -> np.ndarray:
    """Validate and convert an image to (H, W, 3) uint8 BGR.

    Accepts (H, W) gray, (H, W, 1|3|4) uint8/uint16/float. Floats whose maximum is at most
    ``FLOAT_UNIT_MAX`` are read as 0..1 (so the overshoot of a resize or a colour conversion
    above 1.0 is clipped, not taken for a 0..255 image), others as 0..255. Raises
    ``InputError`` for None, non-arrays, empty or tiny images, NaN, other shapes or dtypes.
    """
    import cv2

    if image is None:
        raise InputError("image is None (a failed cv2.imread or an empty camera frame?)")
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.size == 0:
        raise InputError(f"image is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise InputError(f"image must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if min(image.shape[:2]) < MIN_SIDE:
        raise InputError(f"image {image.shape[1]}x{image.shape[0]} is smaller than "
                         f"{MIN_SIDE}x{MIN_SIDE} pixels")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype.kind == "f":
        if not np.all(np.isfinite(image)):
            raise InputError("float image holds NaN or inf")
        scale = 255.0 if image.max() <= FLOAT_UNIT_MAX else 1.0
        image = np.clip(image * scale, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise InputError(f"image dtype {image.dtype} not supported (uint8, uint16 or float)")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR; ``InputError`` if missing, corrupt or cut
    short (a JPEG still being written decodes with a grey lower part and no error from OpenCV)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    data = path.read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    short = jpeg_cut_short(data)
    if image is None:
        raise InputError(f"{path} is not a readable image (corrupt or unsupported format"
                         + ("; a JPEG cut short: copied in part, or still being written?)"
                            if short else ")"))
    if short:
        raise InputError(f"{path} is a JPEG cut short (no end-of-image marker): copied in part, "
                         "or still being written")
    return as_bgr8(image)


def jpeg_cut_short(data: bytes) -> bool:
    """True for a JPEG stream that ends before its end-of-image marker; False for a whole one
    (bytes after the marker, e.g. a phone's motion-photo video, are allowed) or not a JPEG.
    Walks the marker segments by their lengths (an EXIF thumbnail's own end marker is inside
    one) and the entropy-coded data by its markers (0xFF00 stuffing, restarts skipped)."""
    if not data.startswith(b"\xff\xd8"):
        return False
    i, n = 2, len(data)
    while True:
        j = data.find(b"\xff", i)
        if j < 0 or j + 1 >= n:
            return True
        m = data[j + 1]
        if m == 0xD9:  # end of image
            return False
        if m in (0x00, 0x01, 0xFF) or 0xD0 <= m <= 0xD7:  # stuffing, TEM, fill, restart
            i = j + (1 if m == 0xFF else 2)
            continue
        if j + 3 >= n:
            return True
        i = j + 2 + (data[j + 2] << 8 | data[j + 3])  # a segment: skip its length
        if i > n:
            return True


def open_source(source) -> Iterator[tuple[float, np.ndarray]]:
    """Frames ``(timestamp_s, bgr)`` from a camera index, a video file or an image folder.

    A camera that cannot be opened raises ``InputError``. A camera is read on a thread of its
    own, and each frame taken is the newest it delivered: frames that arrive while the loop is
    busy are dropped (counted in the log), so that the loop never works through a queue of old
    frames; its timestamps are the frames' arrival times. A camera's failed reads are
    retried, and it is reopened once, for up to ``CAMERA_GRACE_S`` seconds; after that the
    iteration raises ``SourceLost``. A video file's unreadable frames are skipped (logged;
    ``VIDEO_MAX_SKIPS`` in a row end it) and its end ends the iteration (logged). An image
    folder is a sequence at ``FOLDER_FPS`` (sorted by name; unreadable images skipped, their
    time kept). Nothing hangs.
    """
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise InputError(f"source must be a camera index, a video file or a folder, got "
                         f"{source!r}")
    if isinstance(source, int) and source < 0:  # OpenCV may crash on a negative index
        raise InputError(f"camera index must be 0 or more, got {source}")
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return _camera(int(source))
    path = Path(source)
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return _video(str(path))
    raise InputError(f"source {source!r} is neither a camera index, a video file nor a folder")


def _open_capture(target, is_camera: bool):
    import cv2

    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        raise InputError(f"camera {target} could not be opened (not connected, busy, or "
                         "unsupported)" if is_camera else f"video {target} could not be opened "
                         "(corrupt, truncated, or a format this OpenCV cannot decode)")
    return cap


MAX_VIDEO_FPS = 10_000.0  # a video header claiming more holds no real rate


def _video(path: str):
    """Every frame of a video file, timed by its frame rate; unreadable ones skipped."""
    import cv2

    cap = _open_capture(path, is_camera=False)

    def frames():
        fps = cap.get(cv2.CAP_PROP_FPS)
        if not 0 < fps <= MAX_VIDEO_FPS:  # a header without a rate (NaN and inf fail too)
            log.warning("video %s: frame rate %r unusable; timing frames at 30 fps", path, fps)
            fps = 30.0
        index, skipped = 0, 0
        try:
            while True:
                ok, frame = cap.read()
                if ok and frame is not None:
                    skipped = 0
                    index += 1
                    yield (index - 1) / fps, frame
                    continue
                skipped += 1  # a damaged frame before the end: skip it, keep its time
                if cap.get(cv2.CAP_PROP_POS_FRAMES) < cap.get(cv2.CAP_PROP_FRAME_COUNT) \
                        and skipped <= VIDEO_MAX_SKIPS:
                    log.warning("video %s: frame %d unreadable, skipped", path, index)
                    index += 1
                    continue
                log.info("source %s: end of video after %d frames", path, index)
                return
        finally:
            cap.release()
    return frames()


class _Newest:
    """The newest camera frame, handed from the reading thread to the consumer: a frame not
    taken before the next arrives is dropped. ``fail`` passes the reader's error on."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = self._error = None
        self.stopped, self.dropped = False, 0

    def put(self, item) -> None:
        with self._cond:
            self.dropped += self._item is not None
            self._item = item
            self._cond.notify()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify()

    def take(self):
        """The newest ``(t, frame)`` not yet taken, waiting for one; raises the reader's error
        once every frame before it was taken."""
        with self._cond:
            while self._item is None and self._error is None:
                self._cond.wait()
            if self._item is None:
                raise self._error
            item, self._item = self._item, None
            return item


def _camera(index: int):
    """A camera read on its own thread (``_read_camera``): each frame the consumer asks for is
    the newest one, so that a loop slower than the camera works on the present instead of a
    queue of old frames (a V4L2 driver queues 4: at 30 fps, 130 ms behind)."""
    cap = _open_capture(index, is_camera=True)
    slot = _Newest()

    def frames():
        reader = threading.Thread(target=_read_camera, args=(cap, index, slot), daemon=True,
                                  name=f"d2a-camera-{index}")
        reader.start()
        taken = 0
        try:
            while True:
                yield slot.take()
                taken += 1
        finally:
            slot.stopped = True
            reader.join(timeout=1.0)  # it releases the camera
            if slot.dropped:
                log.info("camera %s: %d of %d frames dropped (the loop was slower than the "
                         "camera; each frame taken was the newest)", index, slot.dropped,
                         slot.dropped + taken)
    return frames()


def _read_camera(cap, target: int, slot: _Newest) -> None:
    """The reading thread: frames into ``slot``, timed on arrival. Failed reads are retried
    and a silent camera is reopened once; ``SourceLost`` after ``CAMERA_GRACE_S``."""
    import cv2

    t0, lost_since, reopened, count = time.monotonic(), None, False, 0
    try:
        while not slot.stopped:
            ok, frame = cap.read()
            if ok and frame is not None:
                lost_since, reopened = None, False
                count += 1
                slot.put((time.monotonic() - t0, frame))
                continue
            now = time.monotonic()
            lost_since = now if lost_since is None else lost_since
            if now - lost_since > CAMERA_GRACE_S / 2 and not reopened:
                log.warning("camera %s: no frame for %.1f s, reopening it", target,
                            now - lost_since)
                cap.release()
                cap, reopened = cv2.VideoCapture(target), True
            elif now - lost_since > CAMERA_GRACE_S:
                raise SourceLost(f"camera {target} delivered no frame for {CAMERA_GRACE_S:g} "
                                 f"s, even after reopening it (disconnected?), after {count} "
                                 "frames")
            time.sleep(0.005)
    except BaseException as e:  # noqa: BLE001 - every error reaches the consumer
        slot.fail(e)
    finally:
        cap.release()


def _folder(path: Path):
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def frames():
        for i, f in enumerate(files):
            try:
                yield i / FOLDER_FPS, read_image(f)
            except InputError as e:
                log.warning("skipping %s: %s", f.name, e)
    return frames()
