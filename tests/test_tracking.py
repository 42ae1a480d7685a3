"""``MeshRecoverer.track`` / ``stream`` (``d2a_edge.tracking``): crops that follow people, their
ids, the spread-out person search, losing and finding people, and the box filter."""
from pathlib import Path

import numpy as np
import pytest
from conftest import flat_person

from d2a_edge import MeshRecoverer
from d2a_edge.recoverer import _boxes_array, default_intrinsics


def test_track_follows_a_moving_person_and_keeps_float32():
    """``track`` (what ``stream`` runs): the first frame locates the person, later frames crop
    around the previous mesh; every frame gives one person with track id 0, its arrays float32
    with and without smoothing (the smoothed ones came back float64), and the crop box moves
    with the person."""
    from pathlib import Path

    import cv2
    from d2a_edge.recoverer import MeshRecoverer
    crop = cv2.imread(str(Path(__file__).parents[1] / "samples" / "id_0.jpg"))
    s = crop.shape[0]
    frames = []
    for k in range(4):
        frame = np.full((600, 800, 3), 90, np.uint8)
        x = 150 + 40 * k
        frame[100:100 + s, x:x + s] = crop
        frames.append((k / 30, frame))
    rec = MeshRecoverer(backend="onnxruntime")
    for smoothing in (True, False):
        out = list(rec.track(iter(frames), smoothing=smoothing))
        assert len(out) == 4 and all(len(people) == 1 for _, _, people in out)
        for _, _, (p,) in out:
            assert p.track_id == 0
            for name in ("vertices", "joints3d", "joints2d", "translation", "joint_sigma"):
                assert getattr(p, name).dtype == np.float32, (smoothing, name)
        centres = np.array([(p.box[0] + p.box[2]) / 2 for _, _, (p,) in out])
        assert np.all(np.diff(centres) > -1) and centres[-1] - centres[0] > 15, centres


def _pasted_clip(n: int, step_px: float, noise: float = 0.0):
    """The sample crop id_0 pasted into a 1280x720 frame, moving ``step_px`` a frame, 30 fps."""
    from pathlib import Path

    import cv2
    crop = cv2.imread(str(Path(__file__).parents[1] / "samples" / "id_0.jpg"))
    rng = np.random.default_rng(0)
    for k in range(n):
        frame = np.full((720, 1280, 3), 90, np.float32)
        x = int(100 + step_px * k)
        frame[200:200 + crop.shape[0], x:x + crop.shape[1]] = crop
        frame += rng.normal(0, noise, frame.shape)
        yield k / 30, np.clip(frame, 0, 255).astype(np.uint8)


def test_track_crop_keeps_up_with_a_moving_person_and_holds_still():
    """The crop follows a walking (8 px a frame) and a running (40 px) person: once the box
    filter has the speed (frame 7 on), the crop's offset from the person stays within 8 px of
    the first frame's. Before, the crop came from the smoothed mesh and fell further behind
    every frame (139 px by frame 6 at 40 px a frame, then the person was lost). For a still
    person in noisy frames the crop stays put (it followed every measured box, which moved
    the model's depth by up to 10 cm a frame)."""
    from d2a_edge.recoverer import MeshRecoverer
    rec = MeshRecoverer(backend="onnxruntime")
    for step, n in ((8, 20), (40, 10)):
        out = [p for _, _, (p,) in rec.track(_pasted_clip(n, step))]
        offset = np.array([(p.box[0] + p.box[2]) / 2 - (100 + step * k) for k, p in
                           enumerate(out)])
        assert np.abs(offset[7:] - offset[0]).max() < 8, (step, offset.round())
    boxes = np.array([p.box for _, _, (p,) in rec.track(_pasted_clip(20, 0, noise=4.0))])
    assert np.abs(boxes[2:] - boxes[2]).max() < 1, boxes.round(1)


def test_box_filter_follows_a_constant_velocity_and_holds_small_jitter():
    from d2a_edge.smoothing import BoxFilter
    f = BoxFilter()
    assert f.next_box(0.0) is None
    for k in range(30):  # 300 px/s to the right, 100 x 200 px
        t = k / 30
        f.next_box(t)
        f.update([100 + 300 * t, 50, 200 + 300 * t, 250], t)
    # within the hold (4 % of the side) of the true box
    np.testing.assert_allclose(f.next_box(1.0), [400, 50, 500, 250], atol=0.04 * 200)
    # a still box measured with +-2 px of jitter: the crop does not move
    g, rng = BoxFilter(), np.random.default_rng(0)
    crops = []
    for k in range(30):
        t = k / 30
        crops.append(g.next_box(t))
        g.update(np.array([100, 50, 200, 250]) + rng.uniform(-2, 2, 4), t)
    assert np.ptp(np.array(crops[5:]), axis=0).max() < 1.5
    g.reset()
    assert g.next_box(2.0) is None
    with pytest.raises(ValueError):
        BoxFilter(g=0)


def test_a_low_score_loses_the_track_even_when_the_mesh_is_on_screen():
    K = default_intrinsics(640, 480)
    assert MeshRecoverer._track_box(flat_person(0.0, 0.9), (480, 640), K) is not None
    assert MeshRecoverer._track_box(flat_person(0.0, 0.1), (480, 640), K) is None


def test_track_restarts_its_smoothing_after_the_person_is_lost():
    """Frame 1 loses the person (score 0.1 < LOST_SCORE: it gives []); frame 2's search
    windows find them again, so frame 3 starts a new track with fresh One-Euro filters: its
    output is the raw prediction, not one pulled towards the person seen before the loss."""
    people = iter([flat_person(0.0, 0.9), flat_person(0.0, 0.1), flat_person(0.5, 0.9),
                   flat_person(0.5, 0.9)])
    calls = []

    class Scripted(MeshRecoverer):
        def __init__(self):
            self.K = None

        def locate_all(self, image, max_people):
            calls.append("search")
            return np.float32([[200, 100, 440, 380]])

        def __call__(self, image, boxes=None):  # the next person in the first box, else nobody
            calls.append(len(boxes))
            return [next(people)] + [flat_person(0.0, 0.0)] * (len(boxes) - 1)

    frames = [(k / 30, np.zeros((480, 640, 3), np.uint8)) for k in range(4)]
    out = [people for _, _, people in Scripted().track(iter(frames), smoothing=True)]
    assert calls == ["search", 1, 1, 3, 1] and out[1] == out[2] == []  # 3: frame 2's windows
    assert [p.track_id for p in (out[0][0], out[3][0])] == [0, 1]  # found again: a new id
    out = [people[0] if people else None for people in out]
    np.testing.assert_allclose(out[3].translation, [0.5, 0.0, 3.0], atol=1e-6)
    np.testing.assert_allclose(out[3].vertices, flat_person(0.5, 0.9).vertices, atol=1e-6)


def test_stream_reports_nobody_in_an_empty_scene_and_spreads_its_search():
    """A person for 3 frames, an empty scene for 12, the person again for 6: the empty frames
    give [] (they gave a made-up person at score 0 from a whole-frame search on every frame,
    about 1 s a frame on 2 cores), the whole search runs on the first frame only (it ran on
    every 5th frame while nobody was there, about 0.5 s), each later frame runs a fifth of its
    windows, and the person is found again within 5 frames of coming back."""
    import cv2

    from d2a_edge.tracking import search_windows
    crop = cv2.imread(str(Path(__file__).parents[1] / "samples" / "id_0.jpg"))
    rng = np.random.default_rng(0)

    def frame(person: bool) -> np.ndarray:
        f = np.full((480, 640, 3), 90, np.float32) + rng.normal(0, 4, (480, 640, 3))
        if person:
            f[50:50 + crop.shape[0], 100:100 + crop.shape[1]] = crop
        return np.clip(f, 0, 255).astype(np.uint8)

    frames = [(k / 30, frame(k < 3 or k >= 15)) for k in range(21)]
    searches, batches = [], []

    class Counting(MeshRecoverer):
        def locate_all(self, image, max_people):
            searches.append(len(batches))
            return super().locate_all(image, max_people)

        def __call__(self, image, boxes=None):
            batches.append(len(boxes))
            return super().__call__(image, boxes)

    rec = Counting(backend="onnxruntime")
    found = [len(people) for _, _, people in rec.track(iter(frames))]
    back = found.index(1, 3)
    assert found[:3] == [1] * 3 and 15 < back <= 20 and found[back:] == [1] * (21 - back), found
    windows = len(search_windows(640, 480))
    assert searches == [0] and batches[0] == windows  # the whole search: frame 0 only
    assert max(batches[1:]) <= 1 + -(-windows // 5)  # later: a person and a fifth of them
    assert rec(frames[5][1], boxes="auto") == []
    with pytest.raises(ValueError, match="search_every"):
        next(rec.track(iter(frames), search_every=0))


def _two_people_clip(n: int, b_away: range = range(0)):
    """id_0 walking right 8 px a frame and id_2 standing, in a 1280x720 frame at 30 fps; id_2
    is out of the frame during ``b_away``. Yields (t, frame, a's x0, whether b is there)."""
    import cv2
    a = cv2.imread(str(Path(__file__).parents[1] / "samples" / "id_0.jpg"))
    b = cv2.imread(str(Path(__file__).parents[1] / "samples" / "id_2.jpg"))
    for k in range(n):
        frame = np.full((720, 1280, 3), 90, np.uint8)
        x = 100 + 8 * k
        frame[200:200 + a.shape[0], x:x + a.shape[1]] = a
        if k not in b_away:
            frame[250:250 + b.shape[0], 750:750 + b.shape[1]] = b
        yield k / 30, frame, x, k not in b_away


def _centre_x(p) -> float:
    return float(p.box[0] + p.box[2]) / 2


def test_locate_all_finds_each_person_once_and_nobody_in_an_empty_frame():
    rec = MeshRecoverer(backend="onnxruntime")
    _, frame, x, _ = next(_two_people_clip(1))
    boxes = rec.locate_all(frame, 4)
    assert boxes.shape == (2, 4) and boxes.dtype == np.float32
    centres = sorted((boxes[:, 0] + boxes[:, 2]) / 2)  # a's crop spans 100-484, b's 750-1134
    assert 100 < centres[0] < 484 and 750 < centres[1] < 1134, boxes.round()
    np.testing.assert_array_equal(rec.locate_all(frame, 1), boxes[:1])
    np.testing.assert_array_equal(rec.locate(frame), boxes[0])
    assert rec.locate_all(np.full((720, 1280, 3), 90, np.uint8), 3).shape == (0, 4)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_people"):
            rec.locate_all(frame, bad)


def test_track_follows_two_people_with_their_own_ids():
    """max_people=2: both people are tracked from the first frame, each keeping its id while
    one walks; when one leaves, the other keeps its id and the lost one's track ends; when it
    comes back, the spread-out search (all windows every 5 frames) finds it under a new id."""
    rec = MeshRecoverer(backend="onnxruntime")
    clip = list(_two_people_clip(24, b_away=range(10, 17)))
    out = list(rec.track(((t, f) for t, f, _, _ in clip), max_people=2))
    first = {p.track_id: p for p in out[0][2]}
    assert sorted(first) == [0, 1]
    a_id = min(first, key=lambda i: _centre_x(first[i]))  # the one on the left
    b_id = 1 - a_id
    for (_, _, x, b_here), (_, _, people) in zip(clip, out):
        ids = [p.track_id for p in people]
        assert ids == sorted(ids)
        by_id = {p.track_id: p for p in people}
        assert a_id in by_id and abs(_centre_x(by_id[a_id]) - (x + 192)) < 60, (x, ids)
    ids = [[p.track_id for p in people] for _, _, people in out]
    assert all(sorted(i) == [0, 1] for i in ids[:10]), ids
    back = next(k for k, i in enumerate(ids) if 2 in i)  # b is back in frame 17
    assert 17 < back <= 17 + 5, ids  # found by a window in 17..21, tracked from the next frame
    assert all(i == [a_id] for i in ids[10:back]), ids
    assert all(sorted(i) == sorted([a_id, 2]) for i in ids[back:]), ids
    assert abs(_centre_x({p.track_id: p for p in out[back][2]}[2]) - 942) < 60
    assert b_id not in sum(ids[10:], [])
    with pytest.raises(ValueError, match="max_people"):
        next(rec.track(iter([]), max_people=0))


def test_the_search_beside_tracked_people_is_spread_over_frames():
    """Two people in view, max_people=3: the first frame searches all 22 windows, then each
    frame runs the two tracked crops and the next fifth of the windows (4 or 5) in one batch
    (it ran all 22 on every 5th frame: about 0.5 s on 2 cores), each window once in 5 frames.
    With search_every above the number of windows, some frames run none."""
    from d2a_edge.tracking import search_windows
    batches = []

    class Counting(MeshRecoverer):
        def __call__(self, image, boxes=None):
            batches.append(np.asarray(boxes))
            return super().__call__(image, boxes)

    counting = Counting(backend="onnxruntime")
    clip = [(t, f) for t, f, _, _ in _two_people_clip(12)]
    out = [people for _, _, people in counting.track(iter(clip), max_people=3)]
    assert [len(p) for p in out] == [2] * 12
    windows = search_windows(1280, 720)
    assert len(batches) == 13 and len(batches[0]) == 22 and len(batches[1]) == 2  # frame 0
    # frames 1-11: the tracked crops, at times a new person a window found (here: a part of
    # one of the two, dropped as such), and, while fewer than 3 are run, the windows' share
    ran = [b[2:] for b in batches[2:] if len(b) != 3]
    assert max(len(b) for b in ran) <= 5 and len(ran) >= 10
    assert all(any((w == b).all(1).any() for b in ran[:6]) for w in windows)  # one sweep
    np.testing.assert_array_equal(np.concatenate(ran)[:22], windows)
    batches.clear()
    list(counting.track(iter(clip[:7]), max_people=3, search_every=44))
    assert [len(b) - 2 for b in batches[2:]] == [0, 1, 0, 1, 0, 1]  # 22 windows in 44 frames


def test_a_found_box_outside_a_smaller_next_frame_is_dropped_not_run():
    """A window found a new person in the last (1280x720) frame and the next frame is 640x360
    (a camera changing mode, a folder of mixed sizes): that box lies outside it and is dropped
    (it raised InputError and ended the stream). A frame must come before: a first frame
    replaces ``found`` with ``locate_all``'s boxes (an earlier version of this test stepped a
    fresh tracker and so tried nothing)."""
    from d2a_edge.smoothing import BETA, MIN_CUTOFF
    from d2a_edge.tracking import Tracker
    tracker = Tracker(MeshRecoverer(backend="onnxruntime"), True, MIN_CUTOFF, BETA, 5, 2)
    tracker.t = -1 / 30  # a 1280x720 frame came before and its windows found this person
    tracker.found = np.float32([[871, 232, 1226, 587]])
    assert tracker.step(0.0, np.full((360, 640, 3), 90, np.uint8)) == []


def test_track_refuses_frame_times_that_do_not_increase():
    """All-equal times froze the smoothed output (the One-Euro filter's step fell to 1e-6 s)
    while the crops followed the person, without a word."""
    rec = MeshRecoverer(backend="onnxruntime")
    frame = np.full((120, 160, 3), 90, np.uint8)
    for times in ([0.0, 0.1, 0.1], [0.0, 0.1, 0.05]):
        with pytest.raises(ValueError, match="frame times must increase"):
            list(rec.track(iter([(t, frame) for t in times])))


def test_distinct_boxes_keeps_one_box_per_person_in_order():
    from d2a_edge.tracking import distinct_boxes, iou
    assert iou(np.float32([0, 0, 10, 10]), np.float32([5, 0, 15, 10])) == pytest.approx(1 / 3)
    assert iou(np.float32([0, 0, 10, 10]), np.float32([20, 0, 30, 10])) == 0.0
    boxes = np.float32([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [40, 0, 50, 10]])
    np.testing.assert_array_equal(distinct_boxes(boxes, np.array([1, 0, 2, 3]), 2),
                                  boxes[[1, 2]])
    assert distinct_boxes(boxes, np.arange(4), 5).shape == (3, 4)


class _Scripted(MeshRecoverer):
    """A recoverer without a model: ``locate_all`` gives ``first``; each ``__call__`` checks
    its boxes as the real one does (InputError outside the frame), records the batch and gives
    ``script(frame_index, i)`` for box i (a ``HumanMesh``; default: nobody)."""

    def __init__(self, first, script):
        self.K = None
        self.first, self.script, self.batches, self.frame = first, script, [], -1

    def locate_all(self, image, max_people):
        return np.float32(self.first).reshape(-1, 4)[:max_people]

    def __call__(self, image, boxes=None):
        b = _boxes_array(boxes, image.shape[1], image.shape[0])
        self.batches.append((self.frame, b))
        return [self.script(self.frame, i) or flat_person(0.0, 0.0) for i in range(len(b))]


def _run(rec, shapes, max_people, search_every=44):
    """``Tracker.step`` over frames of ``shapes`` (H, W) at 30 fps; people per frame."""
    from d2a_edge.smoothing import BETA, MIN_CUTOFF
    from d2a_edge.tracking import Tracker
    tracker = Tracker(rec, False, MIN_CUTOFF, BETA, search_every, max_people)
    out = []
    for k, (h, w) in enumerate(shapes):
        rec.frame = k
        out.append(tracker.step(k / 30, np.zeros((h, w, 3), np.uint8)))
    return out


def test_a_tracked_crop_outside_a_smaller_next_frame_ends_the_track_not_the_stream():
    """A person tracked on the right of a 1280x720 frame, then a 640x360 frame (a camera
    changing mode): their predicted crop lies outside it, so the track ends and the frame gives
    []. Without the check the crop is run and InputError ends the stream."""
    rec = _Scripted([[871, 232, 1226, 587]],
                    lambda k, i: flat_person(0.8, 0.9) if (k, i) == (0, 0) else None)
    out = _run(rec, [(720, 1280), (360, 640)], max_people=1)
    assert [p.track_id for p in out[0]] == [0] and out[1] == []


def test_a_found_box_on_a_tracked_person_is_not_run_again():
    """A box found by the last frame's windows that overlaps a tracked person's crop is that
    person: it is not added to the batch (without the check each such frame runs one more
    crop, only to drop its mesh as a duplicate)."""
    rec = _Scripted([[200, 30, 440, 450]], lambda k, i: flat_person(0.0, 0.9) if i == 0 else None)
    from d2a_edge.smoothing import BETA, MIN_CUTOFF
    from d2a_edge.tracking import Tracker
    tracker = Tracker(rec, False, MIN_CUTOFF, BETA, 44, 2)
    rec.frame = 0
    assert len(tracker.step(0.0, np.zeros((480, 640, 3), np.uint8))) == 1
    tracker.found = tracker.rec._track_box(flat_person(0.0, 0.9), (480, 640),
                                           rec.camera(640, 480))[None]
    rec.frame = 1
    assert [p.track_id for p in tracker.step(1 / 30, np.zeros((480, 640, 3), np.uint8))] == [0]
    assert [len(b) for _, b in rec.batches] == [1, 1]


def test_two_tracks_on_one_person_leave_the_older_one():
    """Two people tracked; then both crops hold one person (boxes overlapping by IoU 0.71):
    the older track keeps them, the younger one ends and is not run on the next frame. With the
    younger track kept, it runs a crop every frame and holds a max_people slot for a ghost; with
    a looser overlap rule, one person is reported twice under two ids."""
    def script(k, i):
        if k == 0:
            return flat_person(-0.6 if i == 0 else 0.6, 0.9)
        return flat_person(0.1 * i, 0.9) if i < 2 else None

    rec = _Scripted([[50, 30, 290, 450], [350, 30, 590, 450]], script)
    out = _run(rec, [(480, 640)] * 3, max_people=2)
    assert [[p.track_id for p in people] for people in out] == [[0, 1], [0], [0]]
    assert [len(b) for _, b in rec.batches] == [2, 2, 1]


def test_a_person_mostly_outside_the_frame_is_lost_after_that_frame():
    """A tracked person whose next mesh is 70 % outside the frame is reported that frame and
    then lost: the next frame runs no crop for them and gives []. Kept, their stale crop runs
    on and the person is reported with the old id while out of view."""
    rec = _Scripted([[200, 30, 440, 450]],
                    lambda k, i: flat_person(0.0 if k == 0 else 1.3, 0.9) if i == 0 else None)
    out = _run(rec, [(480, 640)] * 3, max_people=1)
    assert [[p.track_id for p in people] for people in out] == [[0], [0], []]
    assert [k for k, _ in rec.batches] == [0, 1]  # frame 2 runs nothing
