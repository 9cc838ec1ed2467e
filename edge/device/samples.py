"""Samples: the frames worth labelling, sent to the station and kept on disk until it has them.

The result sink offers every frame (``offer``), which costs a few comparisons. A frame that is
to go is handed to a thread of its own that encodes it and writes it into ``state_dir/samples``
(the JPEG, then its announcement), so a sample never delays a result. A second thread sends what
is on disk while the broker is up and the results' spool is not catching up, what teaches most
first (``SAMPLE_PRIORITY``, the newest first within a reason): samples ride on the bandwidth
results leave, and never take the spool's room. The station answers ``cmd/samples`` with the
ids it stored; until then a sample is sent again every ``resend_s`` (the station may have been
restarted mid-upload), and the folder stays under its quota by dropping its oldest, counted.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from linewatch.edge.comms.payloads import (
    SAMPLE_PRIORITY,
    ModelRef,
    Sample,
    SampleReason,
    SampleStats,
    Score,
    rfc3339_ms,
)
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.comms.ratelimit import RateLimit
from linewatch.edge.device.config import SamplesSection, SourceSection
from linewatch.edge.device.pipeline import Result
from linewatch.edge.files import write_atomic
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import Prediction
from linewatch.edge.model.images import crop_rotate, encode_jpeg

logger = logging.getLogger(__name__)

KB = 1024
Candidate = tuple[ModelArtifact, Prediction]  # a model in shadow, and what it said of the frame
IN_FLIGHT = 4  # samples sent and not yet acknowledged, at most: a slow station is not flooded
MAX_ACK_IDS = 200  # a cmd/samples acknowledges at most this many (the command stays under 16 KB)
TOP_K = 3


def model_ref(model: ModelArtifact) -> ModelRef:
    """How a message names a model."""
    return ModelRef(name=model.name, version=model.version, sha256=model.sha256)


class Sampler:
    """Chooses, keeps and sends samples; ``ack`` is the ``cmd/samples`` handler."""

    def __init__(self, cfg: SamplesSection, folder: Path, device_id: str, publisher: DevicePublisher,
                 source: SourceSection, clock: Callable[[], float] = time.monotonic) -> None:
        """``source`` gives the view (ROI, rotation) the model saw, read at each sample: the setup page changes it."""
        self.cfg = cfg
        self.folder = folder
        self.device_id = device_id
        self.publisher = publisher
        self.source = source
        self.clock = clock
        self.limit = RateLimit(cfg.per_hour, clock)
        self.limited: Counter[str] = Counter()
        self.sent = self.acked = self.dropped = 0
        self._frames = 0
        self._lock = threading.Lock()
        self._outbox: OrderedDict[str, tuple[int, SampleReason]] = OrderedDict()  # id -> (bytes, reason), oldest first
        self._bytes = 0
        self._sent_at: dict[str, float] = {}
        self._queue: queue.Queue[tuple[str, SampleReason, Result, str | None, Candidate | None] | None] = \
            queue.Queue(8)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        folder.mkdir(parents=True, exist_ok=True)
        self._read_outbox()
        self._writer = threading.Thread(target=self._write_loop, name="samples-write", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="samples-send", daemon=True)

    # --- choosing -------------------------------------------------------------------------------

    def reason(self, prediction: Prediction) -> SampleReason | None:
        """Why this frame is worth labelling, if it is (random first: that measure must not be thinned)."""
        self._frames += 1
        if self.cfg.random_every and self._frames % self.cfg.random_every == 0:
            return "random"
        if prediction.anomalous:
            return "anomalous"
        if prediction.score < self.cfg.below:
            return "low_confidence"
        return None

    def offer(self, result: Result) -> None:
        """Every classified frame, from the sink's thread: a sample when it is worth one."""
        reason = self.reason(result.prediction)
        if reason is not None:
            self.take(result, reason)

    def take(self, result: Result, reason: SampleReason, suggested: str | None = None,
             candidate: Candidate | None = None) -> str | None:
        """Queue ``result``'s frame as a sample unless its reason's rate is spent; its id, or None. ``suggested``: an
        operator's label; ``candidate``: a model in shadow and its prediction, for a disagreement."""
        with self._lock:  # the sink's thread, and the setup page's
            if not self.limit.take(reason):
                self.limited[reason] += 1
                return None
        sample_id = f"{int(result.frame.ts * 1000):013d}-{result.frame.id}"
        try:
            self._queue.put_nowait((sample_id, reason, result, suggested, candidate))
        except queue.Full:
            self.dropped += 1
            return None
        return sample_id

    # --- keeping --------------------------------------------------------------------------------

    def _read_outbox(self) -> None:
        """What an earlier run left unacknowledged; a JPEG without a readable announcement (a power cut) is removed."""
        for announced in sorted(self.folder.glob("*.json")):
            jpeg = announced.with_suffix(".jpg")
            try:
                reason = Sample.model_validate_json(announced.read_bytes()).reason
                size = jpeg.stat().st_size
            except (OSError, ValidationError):
                self._remove(announced.stem)
                continue
            self._outbox[announced.stem] = (size, reason)
            self._bytes += size
        for jpeg in self.folder.glob("*.jpg"):
            if jpeg.stem not in self._outbox:
                jpeg.unlink(missing_ok=True)

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._write(*item)
            except (OSError, ValueError) as exc:
                self.dropped += 1
                logger.warning("cannot keep sample %s (%s); check %s and its free space", item[0], exc, self.folder)
            self._wake.set()

    def _write(self, sample_id: str, reason: SampleReason, result: Result, suggested: str | None,
               candidate: Candidate | None) -> None:
        frame, prediction, model = result.frame, result.prediction, result.model
        jpeg = encode_jpeg(crop_rotate(frame.image, self.source.roi, self.source.rotate))
        ts_ms = int(frame.ts * 1000)
        sample = Sample(
            device_id=self.device_id, sample_id=sample_id, reason=reason, ts=rfc3339_ms(ts_ms), ts_ms=ts_ms,
            frame_id=frame.id, label=prediction.label, score=round(prediction.score, 4),
            top=[Score(label=label, score=round(score, 4)) for label, score in prediction.top(TOP_K)],
            anomaly_score=None if prediction.anomaly_score is None else round(prediction.anomaly_score, 4),
            suggested=suggested, model=model_ref(model),
            candidate=None if candidate is None else model_ref(candidate[0]),
            candidate_label=None if candidate is None else candidate[1].label,
            candidate_score=None if candidate is None else round(candidate[1].score, 4),
            size=len(jpeg), sha256=hashlib.sha256(jpeg).hexdigest(), chunk_size=self.chunk_size,
            chunks=-(-len(jpeg) // self.chunk_size))
        write_atomic(self.folder / f"{sample_id}.jpg", jpeg)
        write_atomic(self.folder / f"{sample_id}.json", sample.encode())  # last: the sample exists from here on
        with self._lock:
            self._outbox[sample_id] = (len(jpeg), reason)
            self._bytes += len(jpeg)
            while self._bytes > self.cfg.quota_mb * 2**20 and len(self._outbox) > 1:
                oldest, (size, _) = self._outbox.popitem(last=False)
                self._bytes -= size
                self._remove(oldest)
                self.dropped += 1

    def _forget(self, sample_id: str) -> bool:
        """Off the disk and the outbox (with the lock held); whether it was there."""
        entry = self._outbox.pop(sample_id, None)
        if entry is None:
            return False
        self._bytes -= entry[0]
        self._remove(sample_id)
        return True

    def _remove(self, sample_id: str) -> None:
        self._sent_at.pop(sample_id, None)
        for suffix in (".json", ".jpg"):
            (self.folder / f"{sample_id}{suffix}").unlink(missing_ok=True)

    @property
    def chunk_size(self) -> int:
        return self.cfg.chunk_kb * KB

    # --- sending --------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._send_due()
            except Exception:  # our own bug must not end the sending for good
                logger.exception("sending samples failed; trying again")

    def _send_due(self) -> None:
        """Send what is due while the link is up and the spool is not catching up (results first)."""
        publisher = self.publisher
        if not publisher.connected.is_set() or publisher.spool.backlog() > publisher.window:
            return
        now = self.clock()
        with self._lock:
            waiting = [i for i, at in self._sent_at.items() if now - at < self.cfg.resend_s]
            due = [(SAMPLE_PRIORITY.index(reason), -n, i) for n, (i, (_, reason)) in enumerate(self._outbox.items())
                   if now - self._sent_at.get(i, -self.cfg.resend_s) >= self.cfg.resend_s]
        # What teaches most first, the newest first within a reason: the line as it is now.
        for _, _, sample_id in heapq.nsmallest(max(0, IN_FLIGHT - len(waiting)), due):
            if not self._publish(sample_id):
                return
            with self._lock:
                if sample_id in self._outbox:  # not acknowledged already, by a quick station
                    self._sent_at[sample_id] = now
            self.sent += 1

    def _publish(self, sample_id: str) -> bool:
        """The announcement, then the JPEG in chunks, all QoS 1; False when the link went down meanwhile."""
        try:
            jpeg = (self.folder / f"{sample_id}.jpg").read_bytes()
            sample = Sample.model_validate_json((self.folder / f"{sample_id}.json").read_bytes())
        except (OSError, ValidationError) as exc:  # gone under the quota meanwhile, or damaged on the card
            with self._lock:
                if self._forget(sample_id):
                    self.dropped += 1
            logger.debug("sample %s cannot be read (%s): dropped", sample_id, exc)
            return True
        size = self.chunk_size
        sample = sample.model_copy(update={"chunk_size": size, "chunks": -(-len(jpeg) // size)})
        if not self.publisher.publish_now(self.publisher.topic("sample"), sample.encode(), qos=1):
            return False
        for index in range(sample.chunks):
            chunk = jpeg[index * size:(index + 1) * size]
            if not self.publisher.publish_now(self.publisher.topic(f"sample/{sample_id}/{index}"), chunk, qos=1):
                return False
        return True

    def ack(self, body: dict[str, Any]) -> dict[str, Any]:
        """``cmd/samples`` ``{"ack": [sample_id, ...]}``: the station stored these; they leave the disk."""
        ids = body.get("ack")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(ids) > MAX_ACK_IDS:
            raise ValueError(f'samples needs {{"ack": [sample_id, ...]}}, at most {MAX_ACK_IDS} ids')
        with self._lock:
            known = [i for i in ids if self._forget(i)]
            self.acked += len(known)
            pending = len(self._outbox)
        self._wake.set()
        return {"acked": len(known), "pending": pending}

    def stats(self) -> SampleStats:
        with self._lock:
            pending = len(self._outbox)
        return SampleStats(sent=self.sent, acked=self.acked, pending=pending, limited=dict(self.limited),
                           dropped=self.dropped)

    # --- running --------------------------------------------------------------------------------

    def start(self) -> None:
        self._writer.start()
        self._sender.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (it is sent at the next start), then stop."""
        self._queue.put(None)
        self._stopping.set()
        self._wake.set()
        for thread in (self._writer, self._sender):
            if thread.is_alive():
                thread.join(timeout)
