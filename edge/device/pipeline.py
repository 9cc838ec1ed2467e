"""Frames in, predictions out, in three overlapping threads.

1. capture: reads the source and prepares each frame (region of interest, rotation, resize,
   quantization), so the interpreter never waits on decoding or resizing;
2. inference (the caller's thread): ``invoke()`` and nothing else of note;
3. publish: hands each ``Result`` to the sink (JSON, MQTT, review frames).

Between capture and inference sits a ``Handoff``. For a live source (a camera) it keeps only
the newest frame, so inference never works on a stale view of the belt, and counts what it
drops. For a finite source (a folder, a file) it blocks instead, so every image is classified.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from linewatch.edge.device.sources import Captured, Source
from linewatch.edge.errors import DataError
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import Engine, Prediction
from linewatch.edge.model.images import crop_rotate

logger = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "invoke", "postprocess", "publish")


@dataclass(frozen=True)
class Frame:
    """A captured image with a monotonic id and its capture time (epoch seconds)."""

    id: int
    ts: float
    image: np.ndarray
    path: str | None = None
    tensor: np.ndarray | None = None  # the prepared, quantized model input
    engine: Engine | None = None  # the engine ``tensor`` was prepared for


@dataclass(frozen=True)
class Result:
    """A frame's prediction by ``model`` (stage timings are kept in ``PipelineStats``)."""

    frame: Frame
    prediction: Prediction
    model: ModelArtifact


@dataclass
class PipelineStats:
    """Counters and recent per-stage timings, read by the stats reporter."""

    frames: int = 0
    dropped: int = 0
    source_state: str = "starting"
    timings_ms: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=1000) for s in STAGES})
    last_progress: float = field(default_factory=time.monotonic)  # a frame done, a reopen tried, the source ended

    def percentile(self, stage: str, q: float) -> float:
        values = list(self.timings_ms[stage])
        return float(np.percentile(values, q)) if values else 0.0


class Handoff:
    """The capture → inference hand-off: newest-frame-wins for live sources, blocking otherwise."""

    END = None

    def __init__(self, drop_stale: bool) -> None:
        self.drop_stale = drop_stale
        self.dropped = 0
        self._items: deque = deque()
        self._cond = threading.Condition()

    def put(self, frame: Frame | None, stop: Callable[[], bool]) -> None:
        with self._cond:
            if self.drop_stale:
                if self._items and self._items[-1] is not None:
                    self._items.pop()
                    self.dropped += 1
            else:
                while len(self._items) >= 2 and not stop():
                    self._cond.wait(0.1)
            self._items.append(frame)
            self._cond.notify_all()

    def get(self, stop: Callable[[], bool]) -> Frame | None:
        with self._cond:
            while not self._items:
                if stop():
                    return self.END
                self._cond.wait(0.1)
            item = self._items.popleft()
            self._cond.notify_all()
            return item


class Pipeline:
    """Runs ``source`` through ``engine`` and hands each ``Result`` to ``sink``."""

    def __init__(self, source: Source, engine: Engine, sink: Callable[[Result], None],
                 max_frames: int | None = None, max_backoff: float = 30.0,
                 roi: tuple[float, float, float, float] | None = None, rotate: int = 0) -> None:
        self.source = source
        self.engine = engine
        self.sink = sink
        self.max_frames = max_frames
        self.max_backoff = max_backoff
        self.roi = roi
        self.rotate = rotate
        self.stats = PipelineStats()
        self.error: DataError | None = None
        self.exhausted = False  # a finite source reached its end
        self._handoff = Handoff(drop_stale=source.live)
        self._results: queue.Queue = queue.Queue(maxsize=256)
        self._stop = threading.Event()
        self._done = threading.Event()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._done.is_set()

    def _tensor(self, engine: Engine, image: np.ndarray) -> np.ndarray:
        return engine.quantize(engine.prepare(crop_rotate(image, self.roi, self.rotate)))

    def _prepare(self, frame_id: int, captured: Captured, started: float) -> Frame:
        ts = time.time()
        t0 = time.perf_counter()
        engine = self.engine
        tensor = self._tensor(engine, captured.image)
        self.stats.timings_ms["capture"].append(1000 * (t0 - started))
        self.stats.timings_ms["preprocess"].append(1000 * (time.perf_counter() - t0))
        return Frame(frame_id, ts, captured.image, captured.path, tensor, engine)

    def _capture(self) -> None:
        """Read and prepare frames until the source ends or ``stop``; a live source that fails is reopened."""
        next_id = 0
        backoff = 0.5
        stop = self._stopping
        while not stop():
            try:
                started = time.perf_counter()
                for captured in self.source.frames():
                    self.stats.source_state = "ok"
                    backoff = 0.5
                    next_id += 1
                    self._handoff.put(self._prepare(next_id, captured, started), stop)
                    if stop():
                        break
                    started = time.perf_counter()
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
                logger.warning("%s; reopening in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self.source.close()
        self.stats.source_state = "ended" if self.error is None else "failed"
        self._handoff.put(Handoff.END, stop)

    def _publish(self) -> None:
        """Hand results to the sink in order; a failing sink is logged, never fatal."""
        while True:
            result = self._results.get()
            if result is None:
                return
            t = time.perf_counter()
            try:
                self.sink(result)
            except Exception:  # the sink is the daemon's own code: log it, keep inspecting
                logger.exception("publishing result of frame %d failed", result.frame.id)
            self.stats.timings_ms["publish"].append(1000 * (time.perf_counter() - t))

    def run(self, stop: threading.Event) -> PipelineStats:
        """Classify frames until the source ends, ``max_frames`` are done, or ``stop`` is set."""
        self._stop = stop
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                   threading.Thread(target=self._publish, name="publish", daemon=True)]
        for thread in threads:
            thread.start()
        timings = self.stats.timings_ms
        try:
            while True:
                frame = self._handoff.get(stop.is_set)
                if frame is Handoff.END:
                    break
                engine = self.engine  # replaced between two frames by an OTA update or a reload
                tensor = frame.tensor if frame.engine is engine else self._tensor(engine, frame.image)
                t1 = time.perf_counter()
                raw = engine.invoke(tensor)
                t2 = time.perf_counter()
                prediction = Prediction(engine.dequantize(raw), engine.model.labels)
                t3 = time.perf_counter()
                timings["invoke"].append(1000 * (t2 - t1))
                timings["postprocess"].append(1000 * (t3 - t2))
                self._results.put(Result(frame, prediction, engine.model))
                self.stats.frames += 1
                self.stats.dropped = self._handoff.dropped
                self.stats.last_progress = time.monotonic()
                if self.max_frames and self.stats.frames >= self.max_frames:
                    break
        finally:
            self._done.set()
            self._results.put(None)
            for thread in threads:
                thread.join(timeout=30)
        if self.error is not None:
            raise self.error
        return self.stats
