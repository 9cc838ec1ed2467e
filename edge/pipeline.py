"""Frames in, predictions out: capture and inference overlap in two threads.

Capture runs in its own thread and hands frames over through a ``Handoff``. For a live
source (a camera) the hand-off keeps only the newest frame, so inference never works on a
stale view of the belt, and counts what it drops. For a finite source (a folder, a file)
it blocks instead, so every image is classified. Results go to a ``sink`` that must not
block (the MQTT publisher only queues).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.engine import Engine, Prediction
from edge.errors import DataError
from edge.sources import Source

logger = logging.getLogger(__name__)

STAGES = ("capture", "preprocess", "invoke", "postprocess", "publish")


@dataclass(frozen=True)
class Frame:
    """A captured image with a monotonic id and its capture time (epoch seconds)."""

    id: int
    ts: float
    image: np.ndarray
    path: str | None = None
    truth: str | None = None


@dataclass(frozen=True)
class Result:
    """A frame's prediction with the time each stage took, in milliseconds."""

    frame: Frame
    prediction: Prediction
    timings_ms: dict[str, float]


@dataclass
class PipelineStats:
    """Counters and recent per-stage timings, read by the stats reporter."""

    frames: int = 0
    dropped: int = 0
    source_state: str = "starting"
    timings_ms: dict[str, deque] = field(default_factory=lambda: {s: deque(maxlen=1000) for s in STAGES})

    def percentile(self, stage: str, q: float) -> float:
        values = self.timings_ms[stage]
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
                 max_frames: int | None = None, max_backoff: float = 30.0) -> None:
        self.source = source
        self.engine = engine
        self.sink = sink
        self.max_frames = max_frames
        self.max_backoff = max_backoff
        self.stats = PipelineStats()
        self.error: DataError | None = None
        self.exhausted = False  # a finite source reached its end
        self._handoff = Handoff(drop_stale=source.live)
        self._stop = threading.Event()
        self._done = threading.Event()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self._done.is_set()

    def _capture(self) -> None:
        """Read frames until the source ends or ``stop``; a live source that fails is reopened."""
        next_id = 0
        backoff = 0.5
        stop = self._stopping
        while not stop():
            try:
                started = time.monotonic()
                for captured in self.source.frames():
                    self.stats.source_state = "ok"
                    backoff = 0.5
                    next_id += 1
                    self.stats.timings_ms["capture"].append(1000 * (time.monotonic() - started))
                    self._handoff.put(Frame(next_id, time.time(), captured.image, captured.path, captured.truth),
                                      stop)
                    if stop():
                        break
                    started = time.monotonic()
                if stop():
                    break
                if not self.source.live:
                    self.exhausted = True
                    break
                raise DataError(f"source {self.source.name} ended")
            except DataError as exc:
                if not self.source.live:
                    self.error = exc
                    break
                self.stats.source_state = "reconnecting"
                logger.warning("%s; reopening in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                self.source.close()
        self.stats.source_state = "ended" if self.error is None else "failed"
        self._handoff.put(Handoff.END, stop)

    def run(self, stop: threading.Event) -> PipelineStats:
        """Classify frames until the source ends, ``max_frames`` are done, or ``stop`` is set."""
        self._stop = stop
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        capture.start()
        timings = self.stats.timings_ms
        while True:
            frame = self._handoff.get(stop.is_set)
            if frame is Handoff.END:
                break
            t0 = time.perf_counter()
            tensor = self.engine.quantize(self.engine.prepare(frame.image))
            t1 = time.perf_counter()
            raw = self.engine.invoke(tensor)
            t2 = time.perf_counter()
            prediction = Prediction(self.engine.dequantize(raw), self.engine.model.labels)
            t3 = time.perf_counter()
            stage_ms = {"preprocess": 1000 * (t1 - t0), "invoke": 1000 * (t2 - t1), "postprocess": 1000 * (t3 - t2)}
            self.sink(Result(frame, prediction, stage_ms))
            t4 = time.perf_counter()
            stage_ms["publish"] = 1000 * (t4 - t3)
            for stage, ms in stage_ms.items():
                timings[stage].append(ms)
            self.stats.frames += 1
            self.stats.dropped = self._handoff.dropped
            if self.max_frames and self.stats.frames >= self.max_frames:
                break
        self._done.set()
        capture.join(timeout=5)
        if self.error is not None:
            raise self.error
        return self.stats
