"""People tracked across frames: ``MeshRecoverer.track`` / ``stream``.

Each tracked person has a box filter (``BoxFilter``: the next crop, from the boxes of its earlier
unsmoothed meshes) and One-Euro filters for its vertices, joints and translation. A frame runs
the model once on every tracked person's predicted crop (one batch). While fewer than
``max_people`` are tracked, the locator looks for more people: with nobody tracked, the whole
search (``MeshRecoverer.locate_all``, about 22 crops) on every ``search_every``-th frame and at
once after the last person is lost; beside tracked people, a few of its windows per frame, so
that no frame pays for all of them (``track``). People it finds that no track covers start new
tracks. A person is lost when their mesh scores below
``LOST_SCORE``, leaves the frame (under half of it inside) or covers the same person as an
older track; a person found again gets a new ``track_id``.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from d2a_edge.camera import project
from d2a_edge.smoothing import BoxFilter, OneEuroFilter
from d2a_edge.types import HumanMesh

LOST_SCORE = 0.25  # a mesh scoring below this is no person (an empty crop scores about 0)
SAME_PERSON_IOU = 0.4  # boxes overlapping this much (intersection over union) hold one person


def check_count(name: str, value) -> None:
    """``ValueError`` unless ``value`` is an int >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def distinct_boxes(boxes: np.ndarray, order: np.ndarray, limit: int) -> np.ndarray:
    """Up to ``limit`` of ``boxes`` (N, 4), taken in ``order``, each overlapping none taken
    before by ``SAME_PERSON_IOU`` or more (non-maximum suppression); (M, 4) float32."""
    kept: list[np.ndarray] = []
    for i in order:
        if len(kept) == limit:
            break
        if all(iou(boxes[i], k) < SAME_PERSON_IOU for k in kept):
            kept.append(boxes[i])
    return np.asarray(kept, np.float32).reshape(-1, 4)


WINDOW_SCALES = (0.5, 0.8)  # locate_all(): square windows, as fractions of the frame's short side
WINDOW_STEPS = 8  # search_windows: at most this many window positions along either axis


def search_windows(width: int, height: int) -> np.ndarray:
    """The full frame plus half-overlapping square windows at ``WINDOW_SCALES`` (N, 4): 22 for
    a 16:9 frame. Along an axis with more than ``WINDOW_STEPS`` positions (a very wide or tall
    frame) that many are spread evenly from end to end, so the batch stays small."""
    out = [[0.0, 0.0, float(width), float(height)]]

    def positions(length: float, side: float) -> np.ndarray:
        p = np.arange(0.0, length - side + 1.0, side / 2)
        return p if len(p) <= WINDOW_STEPS else np.linspace(0.0, length - side, WINDOW_STEPS)

    for f in WINDOW_SCALES:
        side = f * min(width, height)
        xs, ys = positions(width, side), positions(height, side)
        out += [[x, y, x + side, y + side] for y in ys for x in xs]
    return np.asarray(out, np.float32)


@dataclasses.dataclass
class Track:
    """One tracked person: its id, crop box filter and smoothing filters."""

    id: int
    boxes: BoxFilter
    filters: tuple[OneEuroFilter, OneEuroFilter, OneEuroFilter]  # vertices, joints, translation


def track(rec, frames, smoothing: bool, min_cutoff: float, beta: float, search_every: int,
          max_people: int) -> Iterator[tuple[float, np.ndarray, list[HumanMesh]]]:
    """``MeshRecoverer.track``'s loop: (t, frame, people sorted by ``track_id``) per frame.

    With nobody tracked, the whole search (``locate_all``) runs at once, on every
    ``search_every``-th frame and on the frame after the last person is lost. While someone is
    tracked and fewer than ``max_people`` are, the search is spread out: each frame adds the
    next ``ceil(windows / search_every)`` search windows to the tracked people's batch (a
    sweep over all the windows every ``search_every`` frames, so no frame pays for the whole
    search), and a person a window finds that no track covers runs as a new track from the
    next frame."""
    check_count("search_every", search_every)
    check_count("max_people", max_people)
    tracks: list[Track] = []
    next_id, waited = 0, search_every  # waited: frames since the last whole search
    sweep = 0  # the next window of the spread-out search
    found = np.zeros((0, 4), np.float32)  # new people the last frame's windows found
    for t, frame in frames:
        K = rec.camera(frame.shape[1], frame.shape[0])
        boxes, owners = [], []  # the crops to run, and their tracks (None: a new person)
        for tr in list(tracks):
            guess = tr.boxes.next_box(t)
            if guess is None or rec._in_frame(guess, frame.shape) is None:  # leaving the frame
                tracks.remove(tr)
                waited = search_every
                continue
            boxes.append(guess)
            owners.append(tr)
        windows = np.zeros((0, 4), np.float32)
        if not tracks and waited >= search_every:
            waited, found = 1, rec.locate_all(frame, max_people)
        elif not tracks:
            waited += 1
        elif len(tracks) < max_people:
            every = search_windows(frame.shape[1], frame.shape[0])
            n = -(-len(every) // search_every)
            windows = every[(sweep + np.arange(n)) % len(every)]
            sweep = (sweep + n) % len(every)
        for box in found:
            if len(boxes) < max_people and all(iou(box, b) < SAME_PERSON_IOU for b in boxes):
                boxes.append(box)
                owners.append(None)
        run = boxes + list(windows)
        results = rec(frame, boxes=np.stack(run)) if run else []
        people, window_people = results[:len(boxes)], results[len(boxes):]
        out, taken = [], []
        for tr, p in zip(owners, people):  # tracks oldest first, then the new people
            if p.score < LOST_SCORE:  # nobody (any more)
                if tr is not None:
                    tracks.remove(tr)
                    waited = search_every
                continue
            seen = rec._track_box(p, frame.shape, K)
            if seen is not None and any(iou(seen, s) >= SAME_PERSON_IOU for s in taken):
                if tr is not None:  # two tracks on one person: the older one keeps them
                    tracks.remove(tr)
                continue
            if tr is None:
                tr = Track(next_id, BoxFilter(),
                           tuple(OneEuroFilter(min_cutoff, beta) for _ in range(3)))
                next_id += 1
                tracks.append(tr)
            out.append(_follow(tr, p, seen, t, K, smoothing))
            if seen is None:  # leaving the frame, or a degenerate mesh: lost after this frame
                tracks.remove(tr)
                waited = search_every
            else:
                taken.append(seen)
        found = rec._people_boxes(window_people, frame.shape, K, max_people - len(tracks), taken)
        yield t, frame, out


def _follow(tr: Track, p: HumanMesh, seen, t: float, K: np.ndarray,
            smoothing: bool) -> HumanMesh:
    """``p`` with the track's id, smoothed; the track's box filter takes the measured box."""
    p = dataclasses.replace(p, track_id=tr.id)
    if seen is not None:
        tr.boxes.update(seen, t)
    if smoothing:
        v, j, tr_ = (f.filter(x, t) for f, x in zip(tr.filters, (p.vertices, p.joints3d,
                                                                  p.translation)))
        p = dataclasses.replace(p, vertices=v.astype(np.float32), joints3d=j.astype(np.float32),
                                translation=tr_.astype(np.float32),
                                joints2d=project(j, K).astype(np.float32))
    return p
