"""The station's MQTT side: samples from every device into the inbox, each acknowledged once it is stored.

A device announces a sample on ``<prefix>/<id>/sample`` and sends its JPEG in chunks on
``<prefix>/<id>/sample/<sample_id>/<index>`` (docs/station.md). The station takes chunks only
for announced samples, checks the whole (size, sha256, a JPEG that decodes), stores it and
answers ``cmd/samples`` ``{"ack": [sample_id]}``. What is refused is said in one line, counted,
and acknowledged only when sending it again cannot help (a broken JPEG, a model the device never
ran): a damaged or unfinished transfer, or one over the device's rate, is left for the device to
send again. A replay is acknowledged and not stored twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from pydantic import ValidationError

from linewatch.edge.comms.mqtt import BrokerAddress, Credentials, connect, make_client
from linewatch.edge.comms.payloads import Sample
from linewatch.edge.comms.ratelimit import RateLimit
from linewatch.edge.station.inbox import Inbox

logger = logging.getLogger(__name__)

MAX_SAMPLE_BYTES = 8 * 2**20
MAX_UPLOADS = 64  # samples announced and not yet complete, from all devices; then the oldest is forgotten
UPLOAD_TIMEOUT_S = 120.0


@dataclass
class Upload:
    sample: Sample
    started: float
    data: bytearray = field(init=False)
    received: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.data = bytearray(self.sample.size)


class Receiver:
    """Subscribes to every device's samples and status; ``start`` and ``stop`` follow the station."""

    def __init__(self, inbox: Inbox, broker: BrokerAddress, prefix: str = "linewatch", protocol: str = "5",
                 credentials: Credentials = Credentials(), devices: set[str] | None = None,
                 per_hour: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        """``devices``: the only device ids taken (else any that announced its status); ``per_hour``: samples a
        device may send an hour (a tenth at once); the rest wait on the device."""
        self.inbox = inbox
        self.broker = broker
        self.prefix = prefix
        self.credentials = credentials
        self.devices = devices
        self.clock = clock
        self.limit = RateLimit(per_hour, clock)
        self.models: dict[str, set[str]] = inbox.models()
        self.uploads: OrderedDict[tuple[str, str], Upload] = OrderedDict()
        self.said: Counter[tuple[str, str]] = Counter()  # (device, why) -> refusals, to log the first and each 100th
        self.subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = make_client(f"linewatch-station-{int(time.time() * 1000) % 100000}", protocol)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda client, userdata, msg: self.handle(msg.topic, bytes(msg.payload))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.error("the MQTT broker at %s:%d refused the station: %s; check --username, the password and the "
                         "broker's ACL (docs/mosquitto/linewatch.acl, user station)", self.broker.host,
                         self.broker.port, reason)
            return
        logger.info("station connected to %s:%d", self.broker.host, self.broker.port)
        client.subscribe([(f"{self.prefix}/+/status", 1), (f"{self.prefix}/+/sample", 1),
                          (f"{self.prefix}/+/sample/+/+", 1)])

    def start(self) -> None:
        connect(self.client, self.broker, credentials=self.credentials)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # --- messages -------------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker (paho's thread)."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != self.prefix:
            return
        device, kind = parts[1], parts[2:]
        try:
            with self._lock:
                if kind == ["status"]:
                    self._status(device, payload)
                elif kind == ["sample"]:
                    self._announce(device, payload)
                elif len(kind) == 3 and kind[0] == "sample":
                    self._chunk(device, kind[1], kind[2], payload)
        except Exception:  # our own bug: logged, and the station goes on hearing
            logger.exception("handling %s failed", topic)

    def _status(self, device: str, payload: bytes) -> None:
        try:
            digest = json.loads(payload).get("sha256")
        except (ValueError, AttributeError):
            return
        if isinstance(digest, str) and digest not in self.models.setdefault(device, set()):
            self.models[device].add(digest)
            self.inbox.remember_model(device, digest)

    def _announce(self, device: str, payload: bytes) -> None:
        try:
            sample = Sample.model_validate_json(payload)
        except ValidationError as exc:
            self._refuse(device, "malformed", f"a sample announcement that is not one ({_first_error(exc)})")
            return
        if sample.device_id != device:
            self._refuse(device, "malformed", f"a sample that says it is from {sample.device_id}")
            return
        if (self.devices is not None and device not in self.devices) or device not in self.models:
            self._refuse(device, "unknown_device", "a sample from a device this station does not know (not in "
                                                   "--device, or it never announced its status)")
            return
        if sample.model.sha256 not in self.models[device]:
            self._refuse(device, "wrong_model", f"sample {sample.sample_id} names model sha256 "
                                                f"{sample.model.sha256[:12]}…, which the device never announced")
            self._ack(device, sample.sample_id)  # sending it again would not change its model
            return
        if sample.size > MAX_SAMPLE_BYTES or sample.chunks != -(-sample.size // sample.chunk_size):
            self._refuse(device, "malformed", f"sample {sample.sample_id}: {sample.size} bytes in {sample.chunks} "
                                              f"chunks of {sample.chunk_size} (at most {MAX_SAMPLE_BYTES} bytes)")
            self._ack(device, sample.sample_id)
            return
        if self.inbox.has(device, sample.sample_id):
            self.inbox.count("duplicates")
            self._ack(device, sample.sample_id)
            return
        if not self.limit.take(device):
            self.inbox.count("limited")  # not acknowledged: the device keeps it and sends it again later
            return
        self._expire()
        self.uploads[(device, sample.sample_id)] = Upload(sample, self.clock())
        self.uploads.move_to_end((device, sample.sample_id))

    def _chunk(self, device: str, sample_id: str, index_text: str, payload: bytes) -> None:
        upload = self.uploads.get((device, sample_id))
        if upload is None or not index_text.isdigit():
            return  # not announced (the station started mid-upload): the device sends the whole again
        sample, index = upload.sample, int(index_text)
        expected = min(sample.chunk_size, sample.size - index * sample.chunk_size)
        if index >= sample.chunks or len(payload) != expected:
            self._refuse(device, "malformed", f"sample {sample_id}: chunk {index} of {len(payload)} bytes")
            return
        upload.data[index * sample.chunk_size:index * sample.chunk_size + len(payload)] = payload
        upload.received.add(index)
        if len(upload.received) == sample.chunks:
            del self.uploads[(device, sample_id)]
            self._complete(device, upload)

    def _complete(self, device: str, upload: Upload) -> None:
        sample, jpeg = upload.sample, bytes(upload.data)
        if hashlib.sha256(jpeg).hexdigest() != sample.sha256:
            self._refuse(device, "damaged", f"sample {sample.sample_id} arrived damaged (sha256); the device sends it "
                                            "again")
            return
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            self._refuse(device, "broken_jpeg", f"sample {sample.sample_id} is not a JPEG that decodes")
            self._ack(device, sample.sample_id)
            return
        try:
            stored = self.inbox.add(sample, jpeg)
        except OSError as exc:  # the data folder's disk: the device keeps the sample and sends it again
            logger.error("cannot store sample %s from %s in %s (%s): free space there", sample.sample_id, device,
                         self.inbox.folder, exc)
            return
        logger.info("sample %s from %s (%s, %s %.2f): %s", sample.sample_id, device, sample.reason, sample.label,
                    sample.score, stored)
        self._ack(device, sample.sample_id)

    def _expire(self) -> None:
        """Forget uploads that stalled (the device sends them again), and the oldest past ``MAX_UPLOADS``."""
        now = self.clock()
        for key, upload in list(self.uploads.items()):
            if now - upload.started > UPLOAD_TIMEOUT_S or len(self.uploads) >= MAX_UPLOADS:
                del self.uploads[key]
                self.inbox.count("incomplete")

    def _ack(self, device: str, sample_id: str) -> None:
        self.client.publish(f"{self.prefix}/{device}/cmd/samples", json.dumps({"ack": [sample_id]}), qos=1)
        self.inbox.count("acknowledged")

    def _refuse(self, device: str, why: str, message: str) -> None:
        self.inbox.count(f"refused_{why}")
        self.said[(device, why)] += 1
        n = self.said[(device, why)]
        if n == 1 or n % 100 == 0:
            logger.warning("device %s sent %s: refused (%d so far)", device, message, n)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    return f"{'.'.join(str(p) for p in error['loc']) or 'payload'}: {error['msg']}"
