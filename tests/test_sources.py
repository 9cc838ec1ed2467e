"""Frame sources: picamera2 through a fake module, OpenCV video files for real, folders, and reconnects."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.edge.device.pipeline import AHEAD, BLOCK, LIVE_LAG_S, Block, Frame, Handoff, Pipeline
from linewatch.edge.device.sources import Captured, open_source
from linewatch.edge.device.sources.folder import FolderSource
from linewatch.edge.device.sources.pacing import MIN_SLEEP_S, Pacer
from linewatch.edge.device.sources.video import VideoSource
from linewatch.edge.errors import DataError, UsageError
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import crop_rotate, parse_roi
from linewatch.edge.tools.bench import ReplaySource

FAKE = Path(__file__).parent / "fake_picamera2"


@pytest.fixture
def fake_picamera2(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(FAKE))
    for name in [m for m in sys.modules if m.startswith("picamera2")]:
        monkeypatch.delitem(sys.modules, name)
    import picamera2

    picamera2.instances.clear()
    return picamera2


@pytest.mark.parametrize("board,fmt", [("VC4", "YUV420"), ("PISP", "RGB888")])
def test_picamera_lores_stream_arrives_as_bgr(fake_picamera2, monkeypatch, board: str, fmt: str) -> None:
    from picamera2 import platform

    monkeypatch.setattr(platform, "CURRENT", platform.Platform[board])
    source = open_source("picamera:1", fps=15, camera_size=(320, 240))
    before = time.time()
    captured = next(source.frames())
    frame = captured.image
    camera = fake_picamera2.instances[-1]
    assert camera.requests_out == 0  # every request handed back to the camera
    # Stamped when the sensor exposed it (40 ms before the request completed), not on arrival; bounded by clock
    # readings on either side, as slow as the machine (or emulation) may be.
    lag = fake_picamera2.SENSOR_LAG_NS / 1e9
    assert captured.ts is not None and before - lag - 0.002 < captured.ts <= time.time() - lag + 0.002
    assert camera.camera_num == 1
    assert camera.config["lores"] == {"size": (320, 240), "format": fmt}
    assert camera.config["controls"] == {"FrameRate": 15.0}
    assert frame.shape == (240, 320, 3)
    b, g, r = frame[120, 160].astype(int)
    assert r > 200 and g < 60 and b < 60, (b, g, r)  # the fake shows pure red either way
    source.close()
    assert camera.closed


def test_picamera_frames_take_the_wall_clock_libcamera_gives(fake_picamera2, monkeypatch) -> None:
    from linewatch.edge.device.sources.picamera import capture_time

    monkeypatch.setattr(fake_picamera2, "WALL_CLOCK", True)
    source = open_source("picamera:0")
    before = time.time()
    captured = next(source.frames())
    assert before - 0.04 - 0.02 < captured.ts <= time.time() - 0.04 + 1e-3
    source.close()
    assert capture_time({"FrameWallClock": 1_800_000_000_123_000_000, "SensorTimestamp": 5}) == pytest.approx(
        1_800_000_000.123, abs=1e-6)
    assert capture_time({}) is None  # an old libcamera without either: stamped on arrival


def test_picamera_errors_name_the_fix(fake_picamera2, monkeypatch) -> None:
    with pytest.raises(DataError, match="camera 5 is not available"):
        next(open_source("picamera:5").frames())
    with pytest.raises(UsageError, match="picamera:N"):
        open_source("picamera:front")
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(DataError, match="apt install python3-picamera2"):
        next(open_source("picamera:0").frames())


def _video(path: Path, frames: int = 10) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 20 % 256, np.uint8))
    writer.release()
    return path


def test_video_file_plays_once_or_loops(tmp_path: Path) -> None:
    video = _video(tmp_path / "line.avi")
    frames = [c.image for c in open_source(str(video)).frames()]
    assert len(frames) == 10 and frames[0].shape == (48, 64, 3)
    assert abs(int(frames[3].mean()) - 60) <= 4  # decoded for real
    looped = open_source(str(video), loop=True).frames()
    assert len([next(looped) for _ in range(25)]) == 25


def test_unopenable_sources_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot open source"):
        next(open_source(str(tmp_path / "missing.mp4")).frames())
    with pytest.raises(DataError, match="usb:N"):
        next(open_source("usb:front").frames())
    with pytest.raises(DataError, match="does not exist"):
        next(open_source(str(tmp_path / "nope")).frames())


def test_folder_glob_and_unreadable_files(tmp_path: Path) -> None:
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"part_{i}.png"), np.full((8, 8, 3), i, np.uint8))
    (tmp_path / "part_9.png").write_bytes(b"garbage")
    source = open_source(str(tmp_path / "part_[0-2].png"))
    assert [Path(c.path).name for c in source.frames()] == ["part_0.png", "part_1.png", "part_2.png"]
    folder = FolderSource(tmp_path)
    assert len(list(folder.frames())) == 4 and folder.skipped == 1


def test_live_source_that_fails_is_reopened_with_backoff(tmp_path: Path, tiny: Path, caplog) -> None:
    """A 'camera' that stops delivering (a stream that ends) is reopened, and frames keep coming."""
    video = _video(tmp_path / "cam.avi", frames=6)
    results: list = []
    pipeline = Pipeline(VideoSource(str(video), live=True), Engine(artifact.load(tiny)),
                        results.extend, max_frames=14)
    with caplog.at_level(logging.WARNING):
        stats = pipeline.run(threading.Event())
    assert stats.frames == 14 and len(results) == 14
    assert "stopped delivering frames; reopening in 0.5 s" in caplog.text
    assert "reopening in 1.0 s" not in caplog.text  # backoff resets once frames flow again


def _block(*ids: int) -> Block:  # frame i captured at i seconds
    return Block([Frame(i, float(i), np.zeros(1)) for i in ids], np.zeros((len(ids), 1)), None)  # type: ignore[arg-type]


def test_handoff_keeps_the_newest_frame_for_live_sources() -> None:
    def never() -> bool:
        return False

    live = Handoff(live=True, merge=True)
    for i in range(1, 6):
        live.put(_block(i), never)
    blocks = live.get(never)
    assert blocks is not None and [b.frames[0].id for b in blocks] == [5] and live.dropped == 4
    burst = [Block([Frame(i, 10 + i * LIVE_LAG_S / 8, np.zeros(1))], np.zeros((1, 1)), None)  # type: ignore[arg-type]
             for i in range(6, 10)]
    for block in burst:  # frames closer together than the staleness bound: all kept, handed over at once
        live.put(block, never)
    assert live.get(never) == burst and live.dropped == 4
    flood = [Block([Frame(i, 20 + i * LIVE_LAG_S / 100, np.zeros(1))], np.zeros((1, 1)), None)  # type: ignore[arg-type]
             for i in range(10, 50)]
    for block in flood:  # 40 frames within the staleness bound, faster than a call takes: none lost either
        live.put(block, never)
    assert live.get(never, 32) == flood[:32] and live.get(never, 32) == flood[32:] and live.dropped == 4

    finite = Handoff(live=False, merge=False)
    waits = threading.Semaphore(0)
    put = []

    def waiting() -> bool:  # called by put() each time it waits for room
        waits.release()
        return False

    def writer() -> None:
        for i in range(1, 7):
            finite.put(_block(i), waiting)
            put.append(i)

    got = []

    def take() -> None:
        items = finite.get(never)
        assert items is not None and len(items) == 1
        got.append(items[0].frames[0].id)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    for _ in range(3):  # a finite source waits for room instead of dropping: seen waiting, three times
        assert waits.acquire(timeout=10)
    assert put == list(range(1, AHEAD + 1)) and finite.dropped == 0  # it prepares AHEAD blocks before it waits
    for _ in range(AHEAD - 2):
        take()
    for _ in range(2):  # two blocks left: it waits on, to wake once for several blocks rather than for each
        assert waits.acquire(timeout=10)
    assert put == list(range(1, AHEAD + 1))
    take()  # one left: it goes on
    thread.join(10)
    while len(got) < 6:
        take()
    assert got == [1, 2, 3, 4, 5, 6] and put == [1, 2, 3, 4, 5, 6] and finite.dropped == 0


def test_pacing_holds_the_rate_at_thousands_of_frames_a_second_and_does_not_burst_after_a_stall(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda seconds: (slept.append(seconds), sleep(seconds)))
    fast = Pacer(20_000)
    started = time.monotonic()
    for _ in range(4_000):  # 0.2 s of frames: sleeping 50 us at a time overshot by a quarter
        fast.wait()
    assert 0.198 <= time.monotonic() - started < 0.4  # never faster than the rate, nor drifting far below it
    assert all(seconds > MIN_SLEEP_S for seconds in slept)  # no sleep short enough for its overshoot to matter
    slow = Pacer(100)
    slow.wait()
    time.sleep(0.05)  # five frames late
    started = time.monotonic()
    for _ in range(3):
        slow.wait()
    assert time.monotonic() - started >= 0.019  # starts afresh: the late one at once, then 10 ms apart


@pytest.mark.parametrize("fps", [None, 10.0])
def test_a_folder_read_as_fast_as_it_goes_is_classified_in_full_blocks_a_paced_one_frame_by_frame(
        tiny: Path, holdout: Path, fps: float | None) -> None:
    engine = Engine(artifact.load(tiny))
    engine.predict(np.zeros((8, 8, 3), np.uint8))  # the first call's set-up (and emulation's translation) is not timed
    sizes: list[int] = []  # frames a call of the interpreter
    handed: list[int] = []  # frames a call of the sink
    invoke = engine.invoke
    engine.invoke = lambda tensor: sizes.append(len(tensor)) or invoke(tensor)  # type: ignore[method-assign]
    stats = Pipeline(open_source(str(holdout / "ok"), fps=fps), engine, lambda results: handed.append(len(results)),
                     block=5).run(threading.Event())
    assert stats.frames == sum(sizes) == sum(handed) == 12 and stats.blocks == len(sizes)
    if fps is None:  # the fewest interpreter calls: every block full but the last; their results handed over at once
        assert sizes == [5, 5, 2] and handed == [12] and BLOCK > 12
    else:  # frames 100 ms apart, each classified in well under that (emulated too): none waits for the next
        assert handed == sizes and len(sizes) >= 10, (sizes, handed)


def test_a_paced_frame_that_comes_while_inference_is_busy_does_not_wait_for_the_next_frame(
        tiny: Path, tmp_path: Path) -> None:
    """A replayed line at 1 frame/s: frame 2 comes while frame 1's call runs late, and is classified right after it,
    not a second later with frame 3."""
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"part_{i}.png"), np.full((48, 64, 3), i * 60, np.uint8))
    engine = Engine(artifact.load(tiny))
    engine.predict(np.zeros((8, 8, 3), np.uint8))  # the first call's set-up (and emulation's translation) is not timed
    invoke = engine.invoke
    calls: list[int] = []

    def busy_at_first(tensor: np.ndarray) -> np.ndarray:  # the real invoke, 1.5 s late once: frame 2 comes meanwhile
        if not calls:
            time.sleep(1.5)
        calls.append(len(tensor))
        return invoke(tensor)

    engine.invoke = busy_at_first  # type: ignore[method-assign]
    published: dict[int, float] = {}
    captured: dict[int, float] = {}

    def sink(results: list) -> None:
        for result in results:
            published[result.frame.id] = time.time()
            captured[result.frame.id] = result.frame.ts

    stats = Pipeline(open_source(str(tmp_path), fps=1.0), engine, sink).run(threading.Event())
    assert stats.frames == 3 and calls == [1, 1, 1], calls
    assert captured[1] < captured[2] < published[1] <= published[2] < captured[3], (captured, published)


def test_region_of_interest_and_rotation() -> None:
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 50:] = 255  # right half white
    assert crop_rotate(image, parse_roi("0.5,0,0.5,1")).min() == 255
    assert crop_rotate(image, parse_roi("0,0,0.5,0.5")).shape == (20, 50, 3)
    turned = crop_rotate(image, None, 90)
    assert turned.shape == (100, 40, 3) and turned[-1, 0, 0] == 255  # the white half is now at the bottom
    with pytest.raises(ValueError, match="leaves the frame"):
        parse_roi("0.6,0,0.6,1")


def _wipe_frames(video: Path, numbers: list[int]) -> None:
    """Overwrite whole JPEG frames of an MJPEG file with zeros: what a bad sector or a cut copy leaves."""
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    for n in numbers:
        end = starts[n + 1] if n + 1 < len(starts) else len(data)
        data[starts[n]:end] = bytes(end - starts[n])
    video.write_bytes(bytes(data))


def test_video_file_with_corrupt_frames_is_read_past_them(tmp_path: Path) -> None:
    video = _video(tmp_path / "line.avi", frames=30)
    _wipe_frames(video, [5, 6, 20])
    source = open_source(str(video))
    frames = [c.image for c in source.frames()]
    assert source.corrupt == 2 and len(frames) >= 24  # up to, and past, both corrupt places
    assert abs(int(frames[-1].mean()) - 29 * 20 % 256) <= 4  # the last frame is the file's last


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_looped_file_or_folder_that_vanishes_is_reopened_when_it_returns(kind: str, tmp_path: Path, tiny: Path,
                                                                        caplog) -> None:
    if kind == "video":
        target = _video(tmp_path / "line.avi", frames=5)
    else:
        target = tmp_path / "drop"
        target.mkdir()
        for i in range(3):
            cv2.imwrite(str(target / f"part_{i}.png"), np.full((48, 64, 3), i * 40, np.uint8))
    source = open_source(str(target), loop=True, fps=200)
    assert source.reopens
    results: list = []
    stop = threading.Event()
    pipeline = Pipeline(source, Engine(artifact.load(tiny)), results.extend)
    runner = threading.Thread(target=pipeline.run, args=(stop,))
    with caplog.at_level(logging.WARNING):
        runner.start()
        assert _wait(lambda: len(results) >= 10)
        away = target.rename(target.with_name(target.name + ".away"))
        assert _wait(lambda: pipeline.stats.source_state == "reconnecting")
        stalled = _settled(results)  # frames captured before it vanished are still classified, a block or two
        time.sleep(1.0)
        assert len(results) <= stalled + 5  # nothing to read while it is away (at 200 fps, a second is 200)
        away.rename(target)
        assert _wait(lambda: len(results) >= stalled + 10, timeout=20)  # and back, by itself
        stop.set()
        runner.join(10)
    assert pipeline.error is None and not runner.is_alive()
    assert ("cannot open source" if kind == "video" else "does not exist") in caplog.text


def _settled(results: list, quiet: float = 0.5, timeout: float = 30.0) -> int:
    """How many results there are once none has come for ``quiet`` seconds."""
    deadline, count = time.monotonic() + timeout, -1
    while len(results) != count and time.monotonic() < deadline:
        count = len(results)
        time.sleep(quiet)
    return count


def _wait(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_classify_takes_a_video_file_frame_by_frame(tiny: Path, tmp_path: Path) -> None:
    from tests.helpers import linewatch

    video = _video(tmp_path / "line.avi", frames=12)
    _wipe_frames(video, [4])
    proc = linewatch("classify", str(tiny), str(video), "--json")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) >= 9 and lines[0]["path"] == f"{video}#1"
    assert int(lines[-1]["path"].rpartition("#")[2]) == len(lines)  # frames past the corrupt one are classified
    assert "passed over at 1 place(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_a_fast_finite_source_is_classified_in_blocks_in_order_and_as_frame_by_frame(tiny: Path,
                                                                                    holdout: Path) -> None:
    """While the interpreter is busy, capture prepares a block: one call for many frames, which changes nothing."""
    engine = Engine(artifact.load(tiny))
    paths = sorted(holdout.rglob("*.jpg"))
    frames = [Captured(cv2.imread(str(p)), str(p)) for p in paths] * 10
    expected = {str(p): engine.predict(cv2.imread(str(p))).scores for p in paths}
    calls: list[int] = []
    invoke = engine.invoke

    def busy_at_first(tensor: np.ndarray) -> np.ndarray:  # the real invoke, late once: capture runs ahead
        if not calls:
            time.sleep(0.3)
        calls.append(len(tensor))
        return invoke(tensor)

    engine.invoke = busy_at_first  # type: ignore[method-assign]
    results: list = []
    stats = Pipeline(ReplaySource(frames), engine, results.extend).run(threading.Event())
    assert stats.frames == len(frames) == len(results) == sum(calls) and stats.dropped == 0
    assert [r.frame.id for r in results] == list(range(1, len(frames) + 1))
    assert all(np.array_equal(r.prediction.scores, expected[r.frame.path]) for r in results)
    assert max(calls) > 1 and stats.blocks == len(calls) < stats.frames
