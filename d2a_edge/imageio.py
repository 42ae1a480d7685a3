"""Image validation and frame sources with clear errors (camera, video file, image folder)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

log = logging.getLogger("d2a_edge")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MIN_SIDE = 16
FLOAT_UNIT_MAX = 2.0  # as_bgr8: a float image up to this is 0..1 (a 0..255 one would be black)


class InputError(ValueError):
    """An image or source the SDK cannot use; the message says what was wrong."""


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
    """Read an image file as (H, W, 3) uint8 BGR; ``InputError`` if missing or corrupt."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{path} is not a readable image (corrupt or unsupported format)")
    return as_bgr8(image)


def open_source(source) -> Iterator[tuple[float, np.ndarray]]:
    """Frames ``(timestamp_s, bgr)`` from a camera index, a video file or an image folder.

    A camera that cannot be opened raises ``InputError``; a video that ends or a camera that
    disconnects ends the iteration (logged), never hangs.
    """
    if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
        raise InputError(f"source must be a camera index, a video file or a folder, got "
                         f"{source!r}")
    if isinstance(source, int) and source < 0:  # OpenCV may crash on a negative index
        raise InputError(f"camera index must be 0 or more, got {source}")
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return _capture(int(source), is_camera=True)
    path = Path(source)
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return _capture(str(path), is_camera=False)
    raise InputError(f"source {source!r} is neither a camera index, a video file nor a folder")


def _capture(target, is_camera: bool, max_failures: int = 5):
    import cv2

    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        cap.release()
        raise InputError(f"camera {target} could not be opened (not connected, busy, or "
                         "unsupported)" if is_camera else f"video {target} could not be opened "
                         "(corrupt, truncated, or a format this OpenCV cannot decode)")

    def frames():
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        failures, index, t0 = 0, 0, time.monotonic()
        try:
            while True:
                ok, frame = cap.read()
                if not ok or frame is None:
                    failures += 1
                    if not is_camera or failures >= max_failures:
                        reason = "camera stopped delivering frames (disconnected?)" if is_camera \
                            else "end of video"
                        log.info("source %s: %s after %d frames", target, reason, index)
                        return
                    continue
                failures = 0
                t = time.monotonic() - t0 if is_camera else index / fps
                index += 1
                yield t, frame
        finally:
            cap.release()
    return frames()


def _folder(path: Path):
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")

    def frames():
        for i, f in enumerate(files):
            try:
                yield float(i), read_image(f)
            except InputError as e:
                log.warning("skipping %s: %s", f.name, e)
    return frames()
