"""People tracked across frames: ``MeshRecoverer.track`` / ``stream``.

Each tracked person has a box filter (``BoxFilter``: the next crop, from the boxes of its earlier
unsmoothed meshes) and One-Euro filters for its vertices, joints and translation. A frame runs
the model once on every tracked person's predicted crop (one batch). The first frame runs
the whole person search (``MeshRecoverer.locate_all``, about 22 crops); after it, while fewer
than ``max_people`` are tracked, each frame adds a share of the search's windows to its batch,
so that no frame pays for all of them (``Tracker``). People it finds that no track covers start
new tracks. A person is lost when their mesh scores below
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
    """``MeshRecoverer.track``'s loop: (t, frame, people sorted by ``track_id``) per frame."""
    tracker = Tracker(rec, smoothing, min_cutoff, beta, search_every, max_people)
    for t, frame in frames:
        yield t, frame, tracker.step(t, frame)


class Tracker:
    """The people followed through a stream, one ``step`` per frame.

    The first frame runs the whole search (``locate_all``). After it, while fewer than
    ``max_people`` are tracked, the search is spread out: each frame adds the next
    ``1 / search_every`` of the search windows to the tracked people's batch (all of them
    every ``search_every`` frames; none on some frames when there are fewer windows than
    that), so that no frame pays for the whole search, with people in view or not. A person a
    window finds that no track covers runs as a new track from the next frame. Frame times
    must increase."""

    def __init__(self, rec, smoothing: bool, min_cutoff: float, beta: float, search_every: int,
                 max_people: int):
        check_count("search_every", search_every)
        check_count("max_people", max_people)
        self.rec, self.smoothing, self.cutoff = rec, smoothing, (min_cutoff, beta)
        self.search_every, self.max_people = search_every, max_people
        self.tracks: list[Track] = []
        self.next_id = 0
        self.sweep = 0  # this frame's share of the spread-out search: 0..search_every-1
        self.found = np.zeros((0, 4), np.float32)  # new people the last frame's windows found
        self.t = None  # the last frame's time

    def step(self, t: float, frame: np.ndarray) -> list[HumanMesh]:
        """The tracked people in ``frame`` (at ``t`` seconds), oldest track first."""
        first = self.t is None
        if not first and not t > self.t:  # the filters would freeze or divide by zero
            raise ValueError(f"track(): frame times must increase, got t={t!r} after "
                             f"t={self.t!r} (seconds)")
        self.t = t
        K = self.rec.camera(frame.shape[1], frame.shape[0])
        boxes, owners = self._predicted(t, frame.shape)
        if first:
            self.found = self.rec.locate_all(frame, self.max_people)
        for box in self.found:  # new people: not tracked, and inside this frame
            if (len(boxes) < self.max_people and self.rec._in_frame(box, frame.shape) is not None
                    and all(iou(box, b) < SAME_PERSON_IOU for b in boxes)):
                boxes.append(box)
                owners.append(None)
        windows = self._sweep(frame.shape) if len(boxes) < self.max_people and not first else []
        run = boxes + list(windows)
        results = self.rec(frame, boxes=np.stack(run)) if run else []
        out, taken = [], []
        for tr, p in zip(owners, results[:len(boxes)]):  # tracks oldest first, then new people
            kept = self._update(tr, p, frame.shape, K, taken)
            if kept is not None:
                out.append(_follow(*kept, p, t, K, self.smoothing))
        self.found = self.rec._people_boxes(results[len(boxes):], frame.shape, K,
                                            self.max_people - len(self.tracks), taken)
        return out

    def _predicted(self, t: float, shape) -> tuple[list[np.ndarray], list[Track | None]]:
        """Each track's next crop and the track; tracks whose crop leaves the frame end."""
        boxes, owners = [], []
        for tr in list(self.tracks):
            guess = tr.boxes.next_box(t)
            if guess is None or self.rec._in_frame(guess, shape) is None:  # leaving the frame
                self.tracks.remove(tr)
                continue
            boxes.append(guess)
            owners.append(tr)
        return boxes, owners

    def _sweep(self, shape) -> np.ndarray:
        """This frame's share of the search windows (N, 4): its ``1 / search_every``."""
        every = search_windows(shape[1], shape[0])
        k, n = self.sweep, self.search_every
        self.sweep = (k + 1) % n
        return every[k * len(every) // n:(k + 1) * len(every) // n]

    def _update(self, tr: Track | None, p: HumanMesh, shape, K: np.ndarray,
                taken: list) -> tuple[Track, np.ndarray | None] | None:
        """The track that ``p`` (the mesh of track ``tr``, None: a new person) belongs to and
        its box in the frame (None: leaving the frame, lost after this frame), or None when
        ``p`` is nobody or a person an older track holds. Adds the box to ``taken``."""
        if p.score < LOST_SCORE:  # nobody (any more)
            if tr is not None:
                self.tracks.remove(tr)
            return None
        seen = self.rec._track_box(p, shape, K)
        if seen is not None and any(iou(seen, s) >= SAME_PERSON_IOU for s in taken):
            if tr is not None:  # two tracks on one person: the older one keeps them
                self.tracks.remove(tr)
            return None
        if tr is None:
            tr = Track(self.next_id, BoxFilter(),
                       tuple(OneEuroFilter(*self.cutoff) for _ in range(3)))
            self.next_id += 1
            self.tracks.append(tr)
        if seen is None:  # leaving the frame, or a degenerate mesh: lost after this frame
            self.tracks.remove(tr)
        else:
            taken.append(seen)
        return tr, seen


def _follow(tr: Track, seen, p: HumanMesh, t: float, K: np.ndarray,
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
