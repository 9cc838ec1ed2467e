"""What happens to each classified frame: a result message, defect events, snapshots, review frames.

The pipeline calls ``ResultSink`` from its publish thread, never from the inference loop.
Results and events are spooled (``DevicePublisher.spool_message``) so none is lost while the
broker is away; their payloads are built inside the spool's transaction, with their ``seq``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from linewatch.edge.comms.payloads import Event, ModelRef, Result, Score, rfc3339
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.device.archive import JpegArchive
from linewatch.edge.device.config import Config
from linewatch.edge.device.events import Alarm, EventTracker
from linewatch.edge.device.pipeline import Result as Classified
from linewatch.edge.device.system import process_age
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.images import encode_jpeg

logger = logging.getLogger(__name__)


def result_payload(result: Classified, device_id: str, seq: int, model: ModelRef, good: set[str],
                   top_k: int) -> Result:
    """One frame's ``result`` message; ``defect`` means a label outside ``good`` (when the model has good labels)."""
    frame, prediction = result.frame, result.prediction
    return Result(
        device_id=device_id, seq=seq, ts=rfc3339(frame.ts), ts_ms=int(frame.ts * 1000), frame_id=frame.id,
        path=frame.path, label=prediction.label, score=round(prediction.score, 4),
        defect=bool(good) and prediction.label not in good,
        top=[Score(label=label, score=round(score, 4)) for label, score in prediction.top(top_k)],
        model=model, latency_ms=round(1000 * (time.time() - frame.ts), 2))


def model_ref(model: ModelArtifact) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, sha256=model.sha256)


REFERENCE_FRAMES, REFERENCE_EVERY = 4, 25


class ResultSink:
    """Publishes by ``results.mode``, raises debounced events with snapshots, keeps doubtful frames.

    It follows the model each result was classified by: after an over-the-air update the
    model reference, the good labels and the event tracker (thresholds from the new card, then
    the configuration's) change with the first result of the new model.
    """

    def __init__(self, cfg: Config, model: ModelArtifact, publisher: DevicePublisher, paused: threading.Event,
                 snapshots: JpegArchive | None, review: JpegArchive | None) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self.paused = paused
        self.snapshots = snapshots
        self.review = review
        self.latest: Classified | None = None
        self.on_first_result: Callable[[], None] | None = None
        self.cold_start_s = 0.0
        self.reference: deque[np.ndarray] = deque(maxlen=REFERENCE_FRAMES)  # recent frames, for OTA self-checks
        self._last_label: str | None = None
        self._frames_seen = 0
        self._follow(model)

    def _follow(self, model: ModelArtifact) -> None:
        card = model.card
        self.model = model
        self.tracker = EventTracker(model.labels, card.good_labels, {**card.thresholds, **self.cfg.events.thresholds},
                                    self.cfg.events.k, self.cfg.events.n)
        self._model_ref = model_ref(model)
        self._good = set(card.good_labels)

    def _wanted(self, result: Classified) -> bool:
        """Whether this frame's result is published, by the configured mode."""
        mode = self.cfg.results.mode
        if mode == "change":
            changed = result.prediction.label != self._last_label
            self._last_label = result.prediction.label
            return changed
        if mode == "sample":
            return (self._frames_seen - 1) % self.cfg.results.sample_every == 0
        return True

    def __call__(self, result: Classified) -> None:
        self.latest = result
        if result.frame.id % REFERENCE_EVERY == 1:
            self.reference.append(result.frame.image)
        if result.model is not self.model:
            self._follow(result.model)
        if self.paused.is_set():
            return
        self._frames_seen += 1
        if self._frames_seen == 1:
            self.cold_start_s = process_age()
            logger.info("first result %.2f s after the process started", self.cold_start_s)
            if self.on_first_result is not None:
                self.on_first_result()
        if self._wanted(result):
            self.publisher.spool_message("result", lambda seq: result_payload(
                result, self.cfg.device_id, seq, self._model_ref, self._good, self.cfg.results.top_k).encode())
        prediction = result.prediction
        scores = dict(zip(self.model.labels, (float(s) for s in prediction.scores)))
        for alarm in self.tracker.update(scores, result.frame.id, result.frame.ts):
            snapshot = None
            if alarm.type == "start" and self.snapshots is not None:
                snapshot = f"{alarm.event_id}.jpg"
                self.publish_snapshot(result, snapshot)
            self.publisher.spool_message("event", lambda seq, a=alarm, s=snapshot: self._event(a, seq, s).encode())
        if self.review is not None and prediction.score < self.cfg.review.below:
            self.review.add(f"{prediction.label}/{time.strftime('%Y%m%dT%H%M%S')}_{result.frame.id:08d}_"
                            f"{prediction.score:.2f}.jpg", result.frame.image)

    def publish_snapshot(self, result: Classified, name: str) -> None:
        """The frame as JPEG: kept under the snapshot quota and published (spooled) on ``snapshot``."""
        if self.snapshots is None:
            raise ValueError("snapshots are off: set events.snapshots = true")
        jpeg = encode_jpeg(result.frame.image)
        self.snapshots.add(name, jpeg)
        self.publisher.spool_message("snapshot", lambda seq: jpeg)

    def _event(self, alarm: Alarm, seq: int, snapshot: str | None) -> Event:
        return Event(device_id=self.cfg.device_id, seq=seq, ts=rfc3339(alarm.ts_ms / 1000), ts_ms=alarm.ts_ms,
                     type=alarm.type, event_id=alarm.event_id, class_=alarm.label, peak_score=alarm.peak_score,
                     frames=alarm.frames, started_ms=alarm.started_ms, frame_id=alarm.frame_id, snapshot=snapshot)
