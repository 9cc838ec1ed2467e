"""A candidate model in shadow: it sees the frames the current model acts on, and acts on none.

``linewatch deploy MODEL --shadow`` sends a model as an over-the-air update does; the device
checks it the same way and, instead of swapping it in, runs it here beside the current one.
The result sink offers every classified frame; the candidate's thread takes the newest when it
is free (one interpreter thread of its own), so on a device that cannot run both on every frame
it sees one frame in ``every``, said in the ``shadow`` message, and the current model's pipeline
never waits for it. Each frame both classified adds to the agreement, the confusion between the
two, their defect rates, latencies and CPU; a frame where they disagree is sent to the station
as a ``disagreement`` sample. ``cmd/shadow`` promotes the candidate (the signed swap an update
makes, so ``cmd/rollback`` still goes back) or aborts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from linewatch.edge.comms.payloads import Pair, Shadow, ShadowState, rfc3339
from linewatch.edge.device.config import SourceSection
from linewatch.edge.device.pipeline import Result, latency_percentile
from linewatch.edge.device.samples import Sampler, model_ref
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import crop_rotate

logger = logging.getLogger(__name__)


class ShadowRun:
    """The candidate's thread and its tallies; ``message`` is the ``shadow`` payload at any time."""

    def __init__(self, device_id: str, model: ModelArtifact, engine: Engine, source: SourceSection,
                 current_latency_ms: Callable[[], float], sampler: Sampler | None = None) -> None:
        """``source`` gives the view (ROI, rotation) the current model saw; ``current_latency_ms`` its median invoke
        per frame."""
        self.device_id = device_id
        self.model = model
        self.engine = engine
        self.source = source
        self.current_latency_ms = current_latency_ms
        self.sampler = sampler
        self.frames = self.skipped = self.agreed = 0
        self.defects: Counter[str] = Counter()  # "current", "candidate"
        self.confusion: dict[str, Counter[str]] = {}
        self.latency_ms: deque[float] = deque(maxlen=1000)
        self._offered: Result | None = None
        self._cond = threading.Condition()
        self._tally = threading.Lock()
        self._stopping = False
        self._cpu_s = 0.0
        self._started = time.monotonic()
        self._process_cpu = time.process_time()
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()
        logger.info("shadow: %s %s (sha256 %s…) runs beside the current model", self.model.name, self.model.version,
                    self.model.sha256[:12])

    def offer(self, result: Result) -> None:
        """Every classified frame, from the sink's thread; never waits (the one not yet taken is replaced)."""
        with self._cond:
            if self._offered is not None:
                self.skipped += 1
            self._offered = result
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._offered is not None or self._stopping)
                if self._stopping:
                    return
                result, self._offered = self._offered, None
            assert result is not None
            try:
                self._compare(result)
            except Exception:  # the candidate's own failure must not end the current model's work
                logger.exception("shadow: the candidate failed on frame %d", result.frame.id)

    def _compare(self, result: Result) -> None:
        cpu, started = time.thread_time(), time.perf_counter()
        image = crop_rotate(result.frame.image, self.source.roi, self.source.rotate)
        pixels = self.engine.prepare(image)
        invoke = time.perf_counter()
        theirs = self.engine.predict_pixels(pixels)
        invoke_ms = 1000 * (time.perf_counter() - invoke)
        ours = result.prediction
        with self._tally:  # the stats thread reads them
            self.latency_ms.append(invoke_ms)
            self.frames += 1
            self.agreed += ours.label == theirs.label
            self.confusion.setdefault(ours.label, Counter())[theirs.label] += 1
            self.defects["current"] += result.model.verdict(ours.label, ours.anomalous) != "good"
            self.defects["candidate"] += self.model.verdict(theirs.label, theirs.anomalous) != "good"
            self._cpu_s += time.thread_time() - cpu
        if ours.label != theirs.label and self.sampler is not None:
            self.sampler.take(result, "disagreement", candidate=(self.model, theirs))
        logger.debug("shadow frame %d: %s vs %s in %.1f ms", result.frame.id, ours.label, theirs.label,
                     1000 * (time.perf_counter() - started))

    def message(self, current: ModelArtifact, state: ShadowState = "running", reason: str | None = None) -> Shadow:
        with self._tally:
            return self._message(current, state, reason)

    def _message(self, current: ModelArtifact, state: ShadowState, reason: str | None) -> Shadow:
        wall = max(1e-9, time.monotonic() - self._started)
        candidate_cpu = 100 * self._cpu_s / wall
        process_cpu = 100 * (time.process_time() - self._process_cpu) / wall
        frames = self.frames
        return Shadow(
            device_id=self.device_id, ts=rfc3339(time.time()), state=state, reason=reason,
            current=model_ref(current), candidate=model_ref(self.model), frames=frames, skipped=self.skipped,
            every=round((frames + self.skipped) / frames, 2) if frames else 1.0,
            agreement=round(self.agreed / frames, 4) if frames else None,
            confusion={ours: dict(theirs) for ours, theirs in self.confusion.items()},
            defect_rate=Pair(current=round(self.defects["current"] / frames, 4) if frames else None,
                             candidate=round(self.defects["candidate"] / frames, 4) if frames else None),
            latency_ms=Pair(current=round(self.current_latency_ms(), 3),
                            candidate=round(latency_percentile(list(self.latency_ms), 50), 3)),
            cpu_percent=Pair(current=round(max(0.0, process_cpu - candidate_cpu), 1),
                             candidate=round(candidate_cpu, 1)))

    @staticmethod
    def failed(device_id: str, current: ModelArtifact, reason: str) -> Shadow:
        """The message for a candidate that never ran: it did not load or pass its checks on this device."""
        return Shadow(device_id=device_id, ts=rfc3339(time.time()), state="failed", reason=reason,
                      current=model_ref(current), candidate=None, frames=0, skipped=0, every=1.0, agreement=None,
                      confusion={}, defect_rate=Pair(current=None, candidate=None),
                      latency_ms=Pair(current=None, candidate=None), cpu_percent=Pair(current=None, candidate=None))

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(5)
