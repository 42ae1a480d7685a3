"""SDK input handling: the bad-input corpus gets a clear error; sources end, never hang."""
import time

import cv2
import numpy as np
import pytest

from d2a_edge.imageio import VIDEO_MAX_SKIPS, InputError, as_bgr8, open_source, read_image
from d2a_edge.smoothing import OneEuroFilter


@pytest.mark.parametrize("image, match", [
    (None, "image is None"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    (np.zeros((1, 1, 3), np.uint8), "smaller than"),
    (np.zeros((64, 64, 2), np.uint8), r"must be \(H, W\)"),
    (np.zeros((64, 64, 3), np.int64), "dtype int64 not supported"),
    (np.full((64, 64, 3), np.nan, np.float32), "NaN"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_bad_images_raise_clear_errors(image, match):
    with pytest.raises(InputError, match=match):
        as_bgr8(image)


def test_image_conversions():
    gray = np.full((32, 48), 100, np.uint8)
    assert as_bgr8(gray).shape == (32, 48, 3)
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[..., 2] = 200
    assert as_bgr8(rgba)[0, 0].tolist() == [0, 0, 200]
    assert as_bgr8(np.full((32, 32, 3), 65535, np.uint16)).max() == 255
    assert as_bgr8(np.full((32, 32, 3), 0.5, np.float32))[0, 0, 0] == 127
    # a 0..1 float frame with a resize's overshoot above 1.0 stays a 0..1 frame (it turned black)
    overshoot = np.full((32, 32, 3), 0.5, np.float32)
    overshoot[0, 0, 0] = 1.01
    assert as_bgr8(overshoot)[1, 1, 0] == 127 and as_bgr8(overshoot)[0, 0, 0] == 255
    assert as_bgr8(np.full((32, 32, 3), 127.0, np.float32))[0, 0, 0] == 127  # 0..255 floats
    assert as_bgr8(np.zeros((32, 32, 1), np.uint8)).shape == (32, 32, 3)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(bad)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_sources(tmp_path):
    with pytest.raises(InputError, match="camera 97 could not be opened"):
        open_source(97)
    with pytest.raises(InputError, match="camera index must be 0 or more"):
        open_source(-1)  # OpenCV crashed the process on it
    for bad in (None, 0.0, True, [0]):
        with pytest.raises(InputError, match="source must be a camera index"):
            open_source(bad)
    with pytest.raises(InputError, match="neither a camera"):
        open_source(str(tmp_path / "nothing.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        open_source(tmp_path / "empty")
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((32, 32, 3), np.uint8))
    (folder / "b.png").write_bytes(b"corrupt")
    assert len(list(open_source(folder))) == 1  # the corrupt one is skipped with a warning
    cv2.imwrite(str(folder / "c.png"), np.zeros((32, 32, 3), np.uint8))
    # a 30 fps sequence, the skipped image's time kept (frames 1 s apart left stream()'s
    # smoothing nearly idle on a folder)
    assert [t for t, _ in open_source(folder)] == pytest.approx([0.0, 2 / 30])
    video = tmp_path / "v.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(5):
        w.write(np.full((32, 32, 3), i * 40, np.uint8))
    w.release()
    frames = list(open_source(str(video)))  # a video that ends ends the iteration
    assert len(frames) == 5 and frames[1][0] == pytest.approx(0.1)


class _FakeCapture:
    """cv2.VideoCapture stand-in: reads follow ``script`` (a frame, or None for a failed
    read; past its end every read fails); ``count`` frames for a video file, 0 for a camera."""

    def __init__(self, script, count=0, fps=10.0, delay=0.0):
        self.script, self.count, self.fps, self.pos, self.released = list(script), count, fps, \
            0, False
        self.delay = delay  # seconds a read takes (a camera's frame interval)

    def isOpened(self):
        return True

    def read(self):
        time.sleep(self.delay)
        item = self.script[self.pos] if self.pos < len(self.script) else None
        self.pos += 1
        return item is not None, item

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_POS_FRAMES: self.pos,
                cv2.CAP_PROP_FRAME_COUNT: self.count}.get(prop, 0.0)

    def release(self):
        self.released = True


def _fake_captures(monkeypatch, *captures):
    made = list(captures)
    monkeypatch.setattr(cv2, "VideoCapture", lambda target: made.pop(0))
    return captures


def test_a_camera_survives_dropped_frames_and_a_lost_one_raises(monkeypatch):
    """Dropped frames are retried and a silent camera is reopened once (5 failed reads ended
    the stream silently after 50 ms); a camera that stays silent raises SourceLost, which a
    control loop can tell from the end of a video."""
    from d2a_edge import imageio
    from d2a_edge.imageio import SourceLost
    monkeypatch.setattr(imageio, "CAMERA_GRACE_S", 0.2)
    f = [np.full((32, 32, 3), k, np.uint8) for k in range(6)]
    captures = _fake_captures(monkeypatch, _FakeCapture([f[1], None, None, None, f[2], f[3]]),
                              _FakeCapture([f[4], f[5]]), _FakeCapture([]))
    got = []
    with pytest.raises(SourceLost, match="camera 0 delivered no frame for 0.2 s.*after 5 "):
        for _, frame in open_source(0):
            got.append(int(frame[0, 0, 0]))
    # 3 from the first capture (3 failed reads between), 2 after it fell silent and was
    # reopened, none after the second silence and reopening; a frame that the next one
    # replaced before the loop took it is dropped, but never the newest
    assert got == sorted(set(got)) and {3, 5} <= set(got) <= {1, 2, 3, 4, 5}, got
    assert all(c.released for c in captures)


def test_a_slow_loop_gets_the_newest_camera_frame_not_a_queue(monkeypatch, caplog):
    """A camera delivering every 10 ms and a loop taking 50 ms a frame: the loop got every
    frame in turn, falling further behind the camera (a driver's queue); now each frame it
    takes is the newest, the rest are dropped and counted, and the last frame arrives."""
    import logging

    from d2a_edge import imageio
    from d2a_edge.imageio import SourceLost
    monkeypatch.setattr(imageio, "CAMERA_GRACE_S", 0.2)
    frames = [np.full((32, 32, 3), k, np.uint8) for k in range(40)]
    _fake_captures(monkeypatch, _FakeCapture(frames, delay=0.01), _FakeCapture([]))
    got, arrival = [], []
    with caplog.at_level(logging.INFO, logger="d2a_edge"), pytest.raises(SourceLost):
        for t, frame in open_source(0):
            got.append(int(frame[0, 0, 0]))
            arrival.append(t)
            time.sleep(0.05)
    assert got == sorted(set(got)) and got[-1] == 39 and len(got) <= 30, got
    assert np.all(np.diff(arrival) > 0)
    assert f"{40 - len(got)} of 40 frames dropped" in caplog.text


def test_a_damaged_video_frame_is_skipped_not_the_end(monkeypatch):
    """One unreadable frame in the middle of a file ended it there (149 of 300 frames)."""
    f = np.zeros((32, 32, 3), np.uint8)
    _fake_captures(monkeypatch, _FakeCapture([f, f, None, f, f], count=5, fps=10.0))
    frames = list(open_source(__file__))  # any existing file: the capture is the fake
    assert [round(t, 3) for t, _ in frames] == [0.0, 0.1, 0.3, 0.4]


def test_a_video_without_a_usable_frame_rate_is_timed_at_30_fps(monkeypatch, caplog):
    """A header with a NaN, infinite, zero or absurd frame rate: the frames are timed at 30
    fps with a warning (NaN gave NaN times and inf all zeros, which track() refuses)."""
    import logging
    f = np.zeros((32, 32, 3), np.uint8)
    for fps in (float("nan"), float("inf"), 0.0, -5.0, 1e9):
        _fake_captures(monkeypatch, _FakeCapture([f, f, f], count=3, fps=fps))
        with caplog.at_level(logging.WARNING, logger="d2a_edge"):
            times = [t for t, _ in open_source(__file__)]
        np.testing.assert_allclose(times, [0.0, 1 / 30, 2 / 30])
        assert "unusable; timing frames at 30 fps" in caplog.text
        caplog.clear()


def test_one_euro_smooths_noise_and_follows_motion():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    t = np.arange(200) / 30.0
    noisy = 1.0 + rng.normal(0, 0.05, (200, 3))
    out = np.array([f.filter(x, ti) for x, ti in zip(noisy, t)])
    assert out[50:].std() < 0.5 * noisy[50:].std()
    g = OneEuroFilter(min_cutoff=1.0, beta=5.0)
    ramp = np.stack([t * 2.0] * 3, 1)
    out = np.array([g.filter(x, ti) for x, ti in zip(ramp, t)])
    assert np.abs(out[-1] - ramp[-1]).max() < 0.1  # little lag on fast motion
    with pytest.raises(ValueError, match="min_cutoff > 0"):
        OneEuroFilter(min_cutoff=0)


def test_uint16_keeps_the_high_byte():
    """A 16-bit frame (PNG16, machine-vision cameras) maps 0..65535 to 0..255: 0x1234 -> 0x12.
    Taking the low byte instead turns a smooth 16-bit image into noise."""
    img = np.full((32, 32, 3), 0x1234, np.uint16)
    assert as_bgr8(img)[0, 0].tolist() == [0x12] * 3
    assert as_bgr8(np.full((32, 32), 0x00FF, np.uint16)).max() == 0  # dark stays dark


def test_thin_images_are_rejected():
    with pytest.raises(InputError, match="smaller than"):
        as_bgr8(np.zeros((8, 640, 3), np.uint8))


def test_one_euro_reset_and_shape_change_start_afresh():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    f.filter(np.zeros(3), 0.0)
    assert f.filter(np.ones(3), 1 / 30)[0] < 0.5  # smoothed towards the old value
    f.reset()
    np.testing.assert_array_equal(f.filter(np.full(3, 7.0), 2 / 30), np.full(3, 7.0))
    # a new shape (another mesh resolution) restarts rather than broadcasting the old state
    np.testing.assert_array_equal(f.filter(np.full((2, 3), 5.0), 3 / 30), np.full((2, 3), 5.0))
    for kw in ({"d_cutoff": 0.0}, {"beta": -1.0}):
        with pytest.raises(ValueError, match="d_cutoff > 0, beta >= 0"):
            OneEuroFilter(**kw)


def test_a_jpeg_cut_short_is_refused_and_whole_ones_are_read(tmp_path):
    """OpenCV decodes a JPEG cut short (copied in part, or still being written into a watched
    folder) without an error, its lower part grey: a silently wrong mesh. read_image refuses
    it, and an image folder skips it. Whole JPEGs (baseline, progressive, with restart markers,
    with an EXIF thumbnail, with a motion photo's video after the end marker) are read."""
    from d2a_edge.imageio import jpeg_cut_short
    image = read_image("samples/id_0.jpg")
    ok, small = cv2.imencode(".jpg", image[::8, ::8])
    thumb = small.tobytes()  # its own end-of-image marker sits inside the EXIF segment
    kinds = {}
    for name, flags in (("baseline", []), ("progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
                        ("restarts", [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])):
        kinds[name] = cv2.imencode(".jpg", image, flags)[1].tobytes()
    exif = b"Exif\x00\x00" + thumb
    base = kinds["baseline"]
    kinds["exif"] = base[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + base[2:]
    for name, data in kinds.items():
        whole = tmp_path / f"{name}.jpg"
        whole.write_bytes(data)
        assert np.abs(read_image(whole).astype(int) - image).mean() < 3, name
        (tmp_path / f"{name}_motion.jpg").write_bytes(data + b"\x00\x00\x00\x18ftypmp42" * 50)
        read_image(tmp_path / f"{name}_motion.jpg")
        for cut in (len(data) // 2, len(data) - 1):
            part = tmp_path / f"{name}_{cut}.jpg"
            part.write_bytes(data[:cut])
            assert cv2.imread(str(part)) is not None  # what OpenCV alone does
            with pytest.raises(InputError, match="cut short"):
                read_image(part)
    assert not jpeg_cut_short(b"\x89PNG\r\n") and jpeg_cut_short(b"\xff\xd8\xff")
    folder = tmp_path / "seq"
    folder.mkdir()
    for name in ("a", "c"):
        (folder / f"{name}.jpg").write_bytes(base)
    (folder / "b.jpg").write_bytes(base[: len(base) // 2])
    assert [t for t, _ in open_source(folder)] == [0.0, 2 / 30]


class _RecordingCapture:
    """cv2.VideoCapture stand-in that records its target: reads follow ``script`` (a frame, or
    None for a failed read; past its end every read fails); ``count`` frames for a video."""

    def __init__(self, target, script=(), count=0, opened=True):
        self.target, self.script, self.count, self.opened = target, list(script), count, opened
        self.pos, self.released = 0, False

    def isOpened(self):
        return self.opened

    def read(self):
        item = self.script[self.pos] if self.pos < len(self.script) else None
        self.pos += 1
        return item is not None, item

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 10.0, cv2.CAP_PROP_POS_FRAMES: self.pos,
                cv2.CAP_PROP_FRAME_COUNT: self.count}.get(prop, 0.0)

    def release(self):
        self.released = True


def test_tall_narrow_images_are_rejected():
    """Too few columns is as unusable as too few rows (only the height was checked)."""
    with pytest.raises(InputError, match="smaller than"):
        as_bgr8(np.zeros((640, 8, 3), np.uint8))


def test_a_digit_string_is_a_camera_index(monkeypatch):
    """``--source 0`` (d2a-demo's default) reaches OpenCV as camera 0, an int: as a string it
    was a path that does not exist ('neither a camera index ...')."""
    f = np.zeros((32, 32, 3), np.uint8)
    made = []

    def capture(target):
        made.append(_RecordingCapture(target, [f, f]))
        return made[-1]

    monkeypatch.setattr(cv2, "VideoCapture", capture)
    frames = open_source("0")
    assert made[0].target == 0 and isinstance(made[0].target, int)
    assert next(frames)[1] is f
    frames.close()
    assert made[0].released


def test_a_video_of_unreadable_frames_ends_after_the_skip_limit(monkeypatch):
    """A file whose frame count says 1000 but whose frames after the first cannot be decoded
    ends after ``VIDEO_MAX_SKIPS`` failed reads in a row (logged), not after reading on to its
    claimed end (or for ever when the count is bogus)."""
    f = np.zeros((32, 32, 3), np.uint8)
    cap = _RecordingCapture("v.mp4", [f], count=1000)
    monkeypatch.setattr(cv2, "VideoCapture", lambda target: cap)
    frames = list(open_source(__file__))  # any existing file: the capture is the fake
    assert len(frames) == 1
    assert cap.pos <= VIDEO_MAX_SKIPS + 2 and cap.released


def test_a_capture_that_does_not_open_is_released(monkeypatch):
    cap = _RecordingCapture(3, opened=False)
    monkeypatch.setattr(cv2, "VideoCapture", lambda target: cap)
    with pytest.raises(InputError, match="camera 3 could not be opened"):
        open_source(3)
    assert cap.released


def test_an_image_folder_is_read_in_name_order_whatever_the_suffix_case(tmp_path):
    """Images come sorted by name (a frame sequence; the directory's own order is arbitrary),
    and camera-style upper-case suffixes (IMG_0001.JPG) count as images."""
    names = [f"frame_{i:02d}" for i in range(10)]
    for i in (7, 2, 9, 0, 5, 3, 8, 1, 6, 4):  # created out of order
        suffix = ".PNG" if i % 2 else ".png"
        ok, data = cv2.imencode(".png", np.full((16, 16, 3), 20 * i, np.uint8))
        (tmp_path / (names[i] + suffix)).write_bytes(data.tobytes())
    got = [(round(t * 30), int(img[0, 0, 0])) for t, img in open_source(tmp_path)]
    assert got == [(i, 20 * i) for i in range(10)]


def test_a_whole_jpeg_with_fill_bytes_before_its_end_marker_is_read(tmp_path):
    """Any JPEG marker may be preceded by 0xFF fill bytes (T.81 B.1.1.2); one fill byte before
    the end-of-image marker is a whole file, not one 'cut short'."""
    from d2a_edge.imageio import jpeg_cut_short, read_image
    data = cv2.imencode(".jpg", np.full((32, 32, 3), 120, np.uint8))[1].tobytes()
    assert data.endswith(b"\xff\xd9")
    for fill in (b"\xff", b"\xff\xff", b"\xff\xff\xff"):
        padded = data[:-2] + fill + b"\xff\xd9"
        assert not jpeg_cut_short(padded), fill
        assert jpeg_cut_short(padded[:-1]), fill
        (tmp_path / "f.jpg").write_bytes(padded)
        assert read_image(tmp_path / "f.jpg")[16, 16].tolist() == pytest.approx([120] * 3, abs=2)


def test_a_high_speed_video_is_timed_by_its_own_frame_rate(monkeypatch, caplog):
    """Real rates, from slow time-lapse to high-speed cameras (240 fps phone slow motion, 1000
    fps lab cameras, up to MAX_VIDEO_FPS itself), time the frames by the header with no warning.
    Kills MAX_VIDEO_FPS lowered to 100 (a 240 fps clip was timed at 30 fps: 8x too slow, and
    its One-Euro smoothing and velocities off by as much) and `fps < MAX_VIDEO_FPS`."""
    import logging

    from d2a_edge.imageio import MAX_VIDEO_FPS
    f = np.zeros((32, 32, 3), np.uint8)
    for fps in (0.5, 240.0, 1000.0, MAX_VIDEO_FPS):
        _fake_captures(monkeypatch, _FakeCapture([f, f, f], count=3, fps=fps))
        with caplog.at_level(logging.WARNING, logger="d2a_edge"):
            times = [t for t, _ in open_source(__file__)]
        np.testing.assert_allclose(times, [0.0, 1 / fps, 2 / fps])
        assert "unusable" not in caplog.text, fps
