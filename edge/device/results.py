"""What happens to each classified frame: a result message, defect events, snapshots, review frames, samples.

The pipeline calls ``ResultSink`` from its publish thread, never from the inference loop.
Results and events are spooled (``DevicePublisher.spool_messages``) so none is lost while the
broker is away, a block of frames' in one transaction; their payloads are built inside it,
with their ``seq``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from linewatch.edge.comms.payloads import SCHEMA, Event, rfc3339_ms
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.device.archive import JpegArchive
from linewatch.edge.device.config import EventsSection, ResultsSection, ReviewSection, SourceSection
from linewatch.edge.device.events import Alarm, EventTracker
from linewatch.edge.device.pipeline import Result as Classified
from linewatch.edge.device.samples import Sampler, model_ref
from linewatch.edge.device.shadow import ShadowRun
from linewatch.edge.device.system import process_age
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import best_first
from linewatch.edge.model.images import crop_rotate, encode_jpeg, heat_map_overlay

logger = logging.getLogger(__name__)


class ResultEncoder:
    """A device's ``result`` messages for one model, as the JSON bytes ``Result(...).encode()`` gives.

    Validating and serializing the pydantic model costs about 11 us a frame, as much as invoking
    a small model; here everything that does not change from frame to frame is encoded once, and
    a frame costs a few string joins. The pydantic ``Result`` stays the contract and the schema:
    tests/test_contract.py proves the two give the same bytes, and the daemon's published results
    are validated against it there. ``defect`` means a label outside the model's good labels.

    Scores are written as ``round(score, 4)`` is, and that costs a microsecond a number (a
    decimal conversion there and another back); an int8 model has only 256 output values, so
    each one's text is kept once made.
    """

    def __init__(self, device_id: str, model: ModelArtifact, top_k: int) -> None:
        self.top_k = top_k
        self._labels = [_json(label) for label in model.outcomes]
        self._tops = [f'{{"label":{label},"score":' for label in self._labels]  # a top entry, but its score
        self._defect = ["false" if model.verdict(label) == "good" else "true" for label in model.outcomes]
        self._head = f'{{"schema":{SCHEMA},"device_id":{_json(device_id)},"seq":'
        self._model = ',"model":' + model_ref(model).model_dump_json() + ',"latency_ms":'
        self._scores: dict[float, str] = {}  # a score's text, as ``round(score, 4)`` writes it

    def _score(self, value: float) -> str:
        text = repr(round(value, 4))
        if len(self._scores) < SCORE_TEXTS:  # -0.0 would find 0.0's text, but the engine's scores are never -0.0
            self._scores[value] = text
        return text

    def __call__(self, result: Classified, seq: int) -> bytes:
        frame, tops, prediction, known = result.frame, self._tops, result.prediction, self._scores
        scores = prediction.scores.tolist()
        order = best_first(scores, self.top_k)  # as Prediction.top; the first is argmax
        best, ts = order[0], frame.ts
        texts = [known.get(scores[i]) or self._score(scores[i]) for i in order]
        top = "},".join([f"{tops[i]}{text}" for i, text in zip(order, texts)])
        path = "" if frame.path is None else f',"path":{_json(frame.path)}'
        anomaly = "" if prediction.anomaly_score is None else \
            f',"anomaly_score":{self._score(prediction.anomaly_score)},"anomalous":{self._defect[best]}'
        ms = int(ts * 1000)
        return (f'{self._head}{seq},"ts":"{rfc3339_ms(ms)}","ts_ms":{ms},'
                f'"frame_id":{frame.id}{path},"label":{self._labels[best]},"score":{texts[0]},'
                f'"defect":{self._defect[best]},"top":[{top}}}]{self._model}'
                f'{_hundredths(1000 * max(0.0, time.time() - ts))}{anomaly}}}').encode()


SCORE_TEXTS = 4096  # score texts kept a model: an int8 model's 256 output values, and a float model's recent ones


def _hundredths(value: float) -> str:
    """``repr(round(value, 2))`` in half the time: one correctly rounded conversion, trailing zeros dropped."""
    if not 0 <= value < 1e15:  # repr turns to exponents at 1e16
        return repr(round(value, 2))
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _json(text: str) -> str:
    """A JSON string as pydantic writes it (UTF-8, not \\u escapes); a plain one (a file path) without json.dumps."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'  # nothing in it that JSON escapes: quotes, backslashes and control characters
    return json.dumps(text, ensure_ascii=False)


REFERENCE_FRAMES, REFERENCE_EVERY = 4, 25


class ResultSink:
    """Publishes by ``results.mode``, raises debounced events with snapshots, keeps doubtful frames.

    It follows the model each result was classified by: after an over-the-air update the
    model reference, the good labels and the event tracker (thresholds from the new card, then
    the configuration's) change with the first result of the new model.
    """

    def __init__(self, model: ModelArtifact, *, device_id: str, results: ResultsSection, events: EventsSection,
                 review: ReviewSection, source: SourceSection, publisher: DevicePublisher, paused: threading.Event,
                 snapshots: JpegArchive | None = None, review_archive: JpegArchive | None = None,
                 sampler: Sampler | None = None, on_result: Callable[[Classified], None] | None = None,
                 on_events: Callable[..., None] | None = None) -> None:
        """Its sections are read at each frame (a reload replaces ``results``; the setup page changes ``source``'s
        view, which snapshots' heat maps follow). ``on_result`` sees every frame, paused or not (line I/O judges
        parts from them); ``on_events(**facts)`` hears when events open or close (the ``state`` topic)."""
        self.device_id = device_id
        self.results = results
        self.events = events
        self.review_below = review.below
        self.source = source
        self.publisher = publisher
        self.paused = paused
        self.snapshots = snapshots
        self.review = review_archive
        self.sampler = sampler
        self.shadow: ShadowRun | None = None  # a candidate model beside the current one, set while it runs
        self.on_result = on_result
        self.on_events = on_events
        self.events_started = 0
        self.latest: Classified | None = None
        self.on_first_result: Callable[[], None] | None = None
        self.cold_start_s = 0.0
        self.reference: deque[np.ndarray] = deque(maxlen=REFERENCE_FRAMES)  # recent frames, for OTA self-checks
        self.recent_events: deque[dict[str, object]] = deque(maxlen=10)  # for the setup page
        self._last_label: str | None = None
        self._frames_seen = 0
        self._follow(model)

    def _follow(self, model: ModelArtifact) -> None:
        card = model.card
        self.model = model
        # An anomaly model's frames are scored 0.5 at its threshold (the engine's), so its events use 0.5.
        thresholds = {} if card.task == "anomaly" else {**card.thresholds, **self.events.thresholds}
        self.tracker = EventTracker(model.outcomes, model.good_outcomes, thresholds, self.events.k,
                                    self.events.n)
        self._encode = ResultEncoder(self.device_id, model, self.results.top_k)

    def _wanted(self, result: Classified) -> bool:
        """Whether this frame's result is published, by the configured mode."""
        mode = self.results.mode
        if mode == "change":
            changed = result.prediction.label != self._last_label
            self._last_label = result.prediction.label
            return changed
        if mode == "sample":
            return (self._frames_seen - 1) % self.results.sample_every == 0
        return True

    def __call__(self, results: list[Classified]) -> None:
        """A block of results, in frame order; their messages are spooled together, in one transaction."""
        messages: list[tuple[str, Callable[[int], bytes]]] = []
        for result in results:
            try:
                self._judge(result, messages)
            except Exception:  # our own code: log it, keep inspecting
                logger.exception("publishing the result of frame %d failed", result.frame.id)
        if messages:
            self.publisher.spool_messages(messages)

    def _judge(self, result: Classified, messages: list[tuple[str, Callable[[int], bytes]]]) -> None:
        """One frame: its result message, events and snapshots (added to ``messages``), review frames, samples."""
        self.latest = result
        if result.frame.id % REFERENCE_EVERY == 1:
            self.reference.append(result.frame.image)
        if result.model is not self.model:
            self._follow(result.model)
        if self.on_result is not None:
            self.on_result(result)
        if self.paused.is_set():
            return
        self._frames_seen += 1
        if self._frames_seen == 1:
            self.cold_start_s = process_age()
            logger.info("first result %.2f s after the process started", self.cold_start_s)
            if self.on_first_result is not None:
                self.on_first_result()
        if self._wanted(result):
            encode = self._encode  # this frame's model's, though the block is spooled after a model change
            messages.append(("result", lambda seq: encode(result, seq)))
        prediction = result.prediction
        scores = dict(zip(self.model.outcomes, prediction.scores.tolist()))
        for alarm in self.tracker.update(scores, result.frame.id, result.frame.ts):
            snapshot = None
            if alarm.type == "start" and self.snapshots is not None:
                snapshot = f"{alarm.event_id}.jpg"
                messages.append(("snapshot", self._snapshot(result, snapshot)))
            messages.append(("event", self._event_message(alarm, snapshot)))
            self.recent_events.appendleft({"type": alarm.type, "class": alarm.label, "event_id": alarm.event_id,
                                           "ts_ms": alarm.ts_ms, "peak_score": alarm.peak_score, "snapshot": snapshot})
            self.events_started += alarm.type == "start"
            if self.on_events is not None:
                open_labels = self.tracker.open_labels
                self.on_events(open_events=open_labels, events=self.events_started, defect=bool(open_labels),
                               anomaly=bool(open_labels) and self.model.card.task == "anomaly")
        if self.review is not None and prediction.score < self.review_below:
            self.review.add(f"{prediction.label}/{time.strftime('%Y%m%dT%H%M%S')}_{result.frame.id:08d}_"
                            f"{prediction.score:.2f}.jpg", result.frame.image)
        if self.sampler is not None:
            self.sampler.offer(result)
        shadow = self.shadow
        if shadow is not None:
            shadow.offer(result)

    def publish_snapshot(self, result: Classified, name: str) -> None:
        """The frame as JPEG, kept under the snapshot quota and spooled on ``snapshot`` at once (``cmd/snapshot``)."""
        self.publisher.spool_message("snapshot", self._snapshot(result, name))

    def _snapshot(self, result: Classified, name: str) -> Callable[[int], bytes]:
        """The frame as JPEG, kept under the snapshot quota; the message to spool on ``snapshot``.

        An anomaly model's heat map is blended over the region it looked at, to show where.
        """
        if self.snapshots is None:
            raise ValueError("snapshots are off: set events.snapshots = true")
        heat, image = result.prediction.heat_map, result.frame.image
        if heat is not None:
            image = heat_map_overlay(crop_rotate(image, self.source.roi, self.source.rotate), heat)
        jpeg = encode_jpeg(image)
        self.snapshots.add(name, jpeg)
        return lambda seq: jpeg

    def _event_message(self, alarm: Alarm, snapshot: str | None) -> Callable[[int], bytes]:
        return lambda seq: self._event(alarm, seq, snapshot).encode()

    def _event(self, alarm: Alarm, seq: int, snapshot: str | None) -> Event:
        # By the payload's own names: its "class" is a keyword Python reserves (events are rare: validating is cheap).
        return Event.model_validate({
            "device_id": self.device_id, "seq": seq, "ts": rfc3339_ms(alarm.ts_ms), "ts_ms": alarm.ts_ms,
            "type": alarm.type, "event_id": alarm.event_id, "class": alarm.label, "peak_score": alarm.peak_score,
            "frames": alarm.frames, "started_ms": alarm.started_ms, "frame_id": alarm.frame_id, "snapshot": snapshot})
