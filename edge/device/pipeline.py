"""Frames in, predictions out, in three overlapping threads that pass blocks of frames.

1. capture: reads the source and prepares each frame (region of interest, rotation, resize,
   quantization), so the interpreter never waits on decoding or resizing;
2. inference (the caller's thread): ``invoke()`` and nothing else of note;
3. publish: hands the ``Result``s to the sink (JSON, MQTT, review frames) a block at a time, in frame order.

Work crosses threads a ``Block`` at a time, never a frame at a time: the hand-offs, the
locks and the Python objects around a call cost tens of microseconds, as much as invoking a
small model. A finite source read as fast as it goes (a folder, a file) is classified in full
blocks of up to ``BLOCK`` frames, one interpreter call each: handing inference whatever was
ready whenever it waited gave it blocks a quarter the size, and the small model three quarters
the throughput, at two interpreter threads of two cores (``linewatch bench``). A live source
(a camera) or a paced one (a folder or file replayed at ``fps``) hands over every frame at
once, so no result waits for the frames after it, and inference takes whatever waits (up to a
call's worth) as one call, so a burst is classified together rather than frame by frame. For a
live source the ``Handoff`` drops frames gone stale (``LIVE_LAG_S``), so inference never works
on an old view of the belt; for a finite one, paced or not, it blocks instead, so every image
is classified.

A thread that sleeps and is woken pays for it in CPU: tens of microseconds a wake-up on a
shared virtual machine's cores (``linewatch bench`` reads each thread's CPU), as much as a
frame's preparing and JSON. So where nobody waits for a frame's result, the threads wake
seldom: capture prepares ``AHEAD`` blocks before it waits, and waits until inference has taken
all but one; inference hands results over ``BLOCK`` frames at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from linewatch.edge.comms.payloads import SourceState
from linewatch.edge.device.sources import Source
from linewatch.edge.errors import DataError
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import Engine, Prediction
from linewatch.edge.model.images import crop_rotate

logger = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "invoke", "postprocess", "publish")
BLOCK = 32  # most frames in one interpreter call; beyond that XNNPACK gains little (benchmarks/results.md)
BLOCK_BYTES = 256 * 1024  # and no more input than a core's L2 cache: bigger blocks of large frames run slower
LIVE_LAG_S = 0.05  # a live frame this much older than the newest is dropped as stale
AHEAD = 4  # blocks a finite source's capture prepares before waiting for inference


# Records made a frame at a time (here, ``Captured``, ``Prediction``, the spool's ``Outgoing``) are slotted,
# not frozen: a frozen dataclass sets each field through ``object.__setattr__``, 1.5 us a record against 0.4,
# and a frame makes several. Nothing changes them once made.
@dataclass(slots=True)
class Frame:
    """A captured image with a monotonic id and its capture time (epoch seconds)."""

    id: int
    ts: float
    image: np.ndarray
    path: str | None = None


@dataclass(slots=True)
class Block:
    """Consecutive frames and their prepared, quantized inputs (one row each), for ``engine``."""

    frames: list[Frame]
    tensor: np.ndarray
    engine: Engine


@dataclass(slots=True)
class Result:
    """A frame's prediction by ``model`` (stage timings are kept in ``PipelineStats``)."""

    frame: Frame
    prediction: Prediction
    model: ModelArtifact


def latency_percentile(values_ms: Sequence[float], q: float) -> float:
    """A stage's latency percentile over its recent frames, in milliseconds (0 before its first frame)."""
    return float(np.percentile(values_ms, q)) if len(values_ms) else 0.0


@dataclass
class PipelineStats:
    """Counters and recent per-frame stage timings (a block's time shared by its frames), read by the stats."""

    frames: int = 0
    dropped: int = 0
    blocks: int = 0  # interpreter calls; frames / blocks is the mean block size
    source_state: SourceState = "starting"
    timings_ms: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=1000) for s in STAGES})
    last_progress: float = field(default_factory=time.monotonic)  # a frame done, a reopen tried, the source ended
    # CPU seconds each thread spent outside invoke() (the interpreter's own threads are invoke's), once it ended:
    # what the pipeline costs besides the interpreter, read directly rather than as a difference of two loops.
    outside_cpu_s: dict[str, float] = field(default_factory=dict)

    def percentile(self, stage: str, q: float) -> float:
        return latency_percentile(list(self.timings_ms[stage]), q)


class Handoff:
    """The capture → inference hand-off: bounded staleness for live sources, blocking otherwise.

    Live: capture never waits; a frame more than ``LIVE_LAG_S`` older than the newest is
    dropped (and counted), so inference never works on a stale view of the belt, while a burst
    shorter than that is classified rather than lost. Finite: capture waits, once ``AHEAD``
    blocks wait, until one is left, so every image is classified and capture wakes once for
    several blocks. ``merge``: blocks are handed over as they come, a frame or a few at a time
    (a live or paced source), and inference takes whatever waits, up to a call's worth, at once.
    """

    END = None

    def __init__(self, live: bool, merge: bool) -> None:
        self.live = live
        self.merge = merge
        self.dropped = 0  # frames
        self._items: deque = deque()
        self._cond = threading.Condition()

    def put(self, block: Block | None, stop: Callable[[], bool]) -> None:
        with self._cond:
            if not self.live:
                if len(self._items) >= AHEAD:
                    while len(self._items) > 1 and not stop():
                        self._cond.wait(0.1)
            elif block is not None:
                items, newest = self._items, block.frames[-1].ts
                while items and newest - items[0].frames[-1].ts > LIVE_LAG_S:
                    self.dropped += len(items.popleft().frames)
            self._items.append(block)
            self._cond.notify_all()

    def get(self, stop: Callable[[], bool], most: int = BLOCK) -> list[Block] | None:
        """The next block, or when merging the blocks waiting, up to ``most`` frames (``END`` when the source is
        done)."""
        with self._cond:
            while not self._items:
                if stop():
                    return self.END
                self._cond.wait(0.1)
            items = self._items
            if items[0] is None:
                return items.popleft()
            taken = [items.popleft()]
            frames = len(taken[0].frames)
            while self.merge and items and items[0] is not None and frames + len(items[0].frames) <= most:
                frames += len(items[0].frames)
                taken.append(items.popleft())
            if len(items) <= 1:  # what a waiting capture waits for: waking it sooner would only put it back to sleep
                self._cond.notify_all()
            return taken


class _Filling:
    """The block capture is preparing: frames resized straight into one array, quantized together."""

    def __init__(self, engine: Engine, size: int) -> None:
        self.engine = engine
        self.frames: list[Frame] = []
        self.pixels = np.empty((size, engine.height, engine.width, 3), np.uint8)
        self.capture_s = self.prepare_s = 0.0  # its frames' time waiting for the source, and being prepared

    @property
    def full(self) -> bool:
        return len(self.frames) == len(self.pixels)

    def add(self, frame: Frame, prepare: Callable[[Engine, np.ndarray, np.ndarray | None], np.ndarray]) -> None:
        """``frame``, prepared by ``prepare`` straight into its row of the block."""
        prepare(self.engine, frame.image, self.pixels[len(self.frames)])
        self.frames.append(frame)

    def block(self, timings: dict[str, deque]) -> Block:
        """The block to hand over; its stage timings (shared by its frames, as invoke's are) go into ``timings``."""
        count = len(self.frames)
        timings["capture"].append(1000 * self.capture_s / count)
        timings["preprocess"].append(1000 * self.prepare_s / count)
        return Block(self.frames, self.engine.quantize(self.pixels[:count], in_place=True), self.engine)


class Pipeline:
    """Runs ``source`` through ``engine`` and hands the ``Result``s to ``sink`` a block at a time, in frame order.

    ``block`` bounds the frames of one interpreter call for a finite source read as fast as it goes (1 turns blocks
    off); a block's input is also kept under ``BLOCK_BYTES``.
    """

    def __init__(self, source: Source, engine: Engine, sink: Callable[[list[Result]], None],
                 max_frames: int | None = None, max_backoff: float = 30.0,
                 roi: tuple[float, float, float, float] | None = None, rotate: int = 0, block: int = BLOCK) -> None:
        self.source = source
        self.engine = engine
        self.sink = sink
        self.max_frames = max_frames
        self.max_backoff = max_backoff
        self.roi = roi
        self.rotate = rotate
        # A live or paced source's frames are each awaited (a part on the belt, a replayed line): each goes at once.
        # Otherwise nobody waits on a frame's result, and inference gets full blocks.
        self._at_once = source.live or bool(source.fps)
        self.block = 1 if self._at_once else max(1, block)
        self.stats = PipelineStats()
        self.error: DataError | None = None
        self.exhausted = False  # a finite source reached its end
        self._handoff = Handoff(live=source.live, merge=self._at_once)
        self._results: queue.Queue = queue.Queue(maxsize=64)  # blocks of results
        self._stop = threading.Event()
        self._done = threading.Event()
        self._next_id = 0  # the last frame id handed out
        self._invoke_cpu_s = 0.0  # the inference thread's own CPU inside invoke()
        self._backoff = 0.5  # before reopening a failed live source; reset by every frame

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._done.is_set()

    @staticmethod
    def _most_frames(engine: Engine) -> int:
        """The most frames one interpreter call takes: ``BLOCK``, and no more input than ``BLOCK_BYTES``."""
        return max(1, min(BLOCK, BLOCK_BYTES // (engine.height * engine.width * 3)))

    def _pixels(self, engine: Engine, image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return engine.prepare(crop_rotate(image, self.roi, self.rotate), out)

    def _frames(self, stop: Callable[[], bool]) -> None:
        """Read the source once through, handing blocks over; raises ``DataError`` as the source does.

        Whatever happens, the frames already prepared are handed over: they have ids, and a gap
        in ids means a frame dropped as stale.
        """
        timings, handoff = self.stats.timings_ms, self._handoff
        filling: _Filling | None = None
        waiting_since = time.perf_counter()
        try:
            for captured in self.source.frames():
                self.stats.source_state = "ok"
                self._backoff = 0.5
                self._next_id += 1
                t0 = time.perf_counter()
                engine = self.engine  # an update or reload starts a new block for the new engine
                if filling is not None and filling.engine is not engine:
                    handoff.put(filling.block(timings), stop)
                    filling = None
                if filling is None:
                    filling = _Filling(engine, min(self.block, self._most_frames(engine)))
                filling.add(Frame(self._next_id, captured.ts or time.time(), captured.image, captured.path),
                            self._pixels)
                t1 = time.perf_counter()
                filling.capture_s += t0 - waiting_since
                filling.prepare_s += t1 - t0
                if filling.full:
                    handoff.put(filling.block(timings), stop)
                    filling = None
                if stop():
                    return
                waiting_since = time.perf_counter()
        finally:
            if filling is not None:
                handoff.put(filling.block(timings), stop)

    def _capture(self) -> None:
        """Read and prepare frames until the source ends or ``stop``; a live source that fails is reopened."""
        cpu, stop = time.thread_time(), self._stopping
        while not stop():
            try:
                self._frames(stop)
                if stop():
                    break
                if not self.source.live:
                    self.exhausted = True
                    break
                raise DataError(f"source {self.source.name} ended")
            except DataError as exc:
                if not self.source.reopens:
                    self.error = exc
                    break
                self.stats.source_state = "reconnecting"
                self.stats.last_progress = time.monotonic()
                logger.warning("%s; reopening in %.1f s", exc, self._backoff)
                self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, self.max_backoff)
            finally:
                self.source.close()
        self.stats.source_state = "ended" if self.error is None else "failed"
        self._handoff.put(Handoff.END, stop)
        self.stats.outside_cpu_s["capture"] = time.thread_time() - cpu

    def _publish(self) -> None:
        """Hand results to the sink in order; a failing sink is logged, never fatal."""
        timings, cpu = self.stats.timings_ms["publish"], time.thread_time()
        while True:
            results = self._results.get()
            if results is None:
                self.stats.outside_cpu_s["publish"] = time.thread_time() - cpu
                return
            t = time.perf_counter()
            try:
                self.sink(results)
            except Exception:  # the sink is the daemon's own code: log it, keep inspecting
                logger.exception("publishing the results of frames %d to %d failed", results[0].frame.id,
                                 results[-1].frame.id)
            timings.append(1000 * (time.perf_counter() - t) / len(results))

    def _classify(self, blocks: list[Block]) -> list[Result]:
        """One interpreter call for the blocks; frames prepared for a replaced engine are prepared again."""
        engine = self.engine  # replaced between two blocks by an over-the-air update or a reload
        frames = [frame for block in blocks for frame in block.frames]
        if any(block.engine is not engine for block in blocks):
            tensor = engine.quantize(np.stack([self._pixels(engine, f.image) for f in frames]))
        else:
            tensor = blocks[0].tensor if len(blocks) == 1 else np.concatenate([block.tensor for block in blocks])
        t1, cpu = time.perf_counter(), time.thread_time()
        raw = engine.invoke(tensor)
        self._invoke_cpu_s += time.thread_time() - cpu
        t2 = time.perf_counter()
        model = engine.model
        results = [Result(frame, prediction, model) for frame, prediction in zip(frames, engine.predictions(raw))]
        t3 = time.perf_counter()
        timings, count = self.stats.timings_ms, len(results)
        timings["invoke"].append(1000 * (t2 - t1) / count)
        timings["postprocess"].append(1000 * (t3 - t2) / count)
        return results

    def run(self, stop: threading.Event) -> PipelineStats:
        """Classify frames until the source ends, ``max_frames`` are done, or ``stop`` is set."""
        self._stop = stop
        cv2.setNumThreads(1)  # OpenCV's workers would spin on the cores the interpreter is using
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                   threading.Thread(target=self._publish, name="publish", daemon=True)]
        for thread in threads:
            thread.start()
        stats, cpu = self.stats, time.thread_time()
        done: list[Result] = []  # classified, not yet handed to publish
        try:
            while True:
                blocks = self._handoff.get(stop.is_set, self._most_frames(self.engine))
                if blocks is None:  # Handoff.END: the source is done
                    break
                results = self._classify(blocks)
                if self.max_frames:
                    results = results[: self.max_frames - stats.frames]
                done += results
                if self._at_once or len(done) >= BLOCK:  # else nobody waits for them: publish wakes less often
                    self._results.put(done)
                    done = []
                stats.frames += len(results)
                stats.blocks += 1
                stats.dropped = self._handoff.dropped
                stats.last_progress = time.monotonic()
                if self.max_frames and stats.frames >= self.max_frames:
                    break
        finally:
            self._done.set()
            if done:
                self._results.put(done)
            self._results.put(None)
            stats.outside_cpu_s["inference"] = time.thread_time() - cpu - self._invoke_cpu_s
            for thread in threads:
                thread.join(timeout=30)
        if self.error is not None:
            raise self.error
        return self.stats
