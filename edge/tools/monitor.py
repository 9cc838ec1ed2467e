"""``linewatch monitor``: what a subscriber sees, a line per message and a view per device.

It is also the reference subscriber: it checks ``seq`` for gaps, which is how a dashboard
or PLC bridge tells a lost message from a quiet line.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from linewatch.edge.comms.mqtt import Credentials, connect, make_client, parse_broker
from linewatch.edge.errors import BrokerError

logger = logging.getLogger(__name__)


@dataclass
class DeviceView:
    """What the monitor knows of one device."""

    status: str = "unknown"
    results: int = 0
    defects: int = 0
    last_label: str = ""
    last_seq: int = 0
    gaps: int = 0
    duplicates: int = 0
    first_ms: int = 0
    last_ms: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    anomaly_score: float | None = None  # the last result's, from an anomaly model

    @property
    def fps(self) -> float:
        span = (self.last_ms - self.first_ms) / 1000
        return (self.results - 1) / span if span > 0 else 0.0


class Monitor:
    """Subscribes to ``<prefix>/+/#`` and keeps a ``DeviceView`` per device id."""

    def __init__(self, prefix: str = "linewatch", as_json: bool = False, out: TextIO = sys.stdout,
                 on_result: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        """``on_result(device_id, payload)`` is called for every new (not repeated) result."""
        self.prefix = prefix
        self.on_result = on_result
        self.as_json = as_json
        self.out = out
        self.devices: dict[str, DeviceView] = {}
        self.results = 0
        self.changed = threading.Condition()

    def handle(self, topic: str, payload: bytes) -> None:
        """Account for one message and print its line."""
        parts = topic.split("/")
        if len(parts) < 3 or parts[0] != self.prefix:
            return
        device, kind = parts[1], "/".join(parts[2:])
        try:
            body: Any = json.loads(payload)
        except ValueError:  # a snapshot (JPEG) or something not ours
            body = {"bytes": len(payload)}
        view = self.devices.setdefault(device, DeviceView())
        line = f"{device} {kind}"
        if kind == "status" and isinstance(body, dict):
            view.status = str(body.get("state"))
            line += f" {view.status}"
        elif kind == "result" and isinstance(body, dict):
            self._result(device, view, body)
            line += f" #{body.get('seq')} {body.get('label')} {body.get('score')}"
            if "anomaly_score" in body:
                line += f" anomaly score {body['anomaly_score']}"
            if body.get("defect"):
                line += " DEFECT"
        elif kind == "event" and isinstance(body, dict):
            line += f" {body.get('type')} {body.get('class')} peak {body.get('peak_score')} #{body.get('seq')}"
        elif kind == "snapshot":
            line += f" {body.get('bytes')} bytes"
        with self.changed:
            if self.as_json:
                print(json.dumps({"device_id": device, "topic": kind, "payload": body}), file=self.out, flush=True)
            else:
                print(line, file=self.out, flush=True)
            self.changed.notify_all()

    def table(self) -> str:
        """The live view: one row per device."""
        rows = [f"{'device':<20} {'status':<8} {'last label':<12} {'anomaly':>7} {'results':>8} {'defect %':>8} "
                f"{'frames/s':>8} {'missing':>7} {'repeats':>7}"]
        for device, v in sorted(self.devices.items()):
            rate = 100 * v.defects / v.results if v.results else 0.0
            anomaly = "-" if v.anomaly_score is None else f"{v.anomaly_score:.2f}"
            rows.append(f"{device:<20} {v.status:<8} {v.last_label:<12} {anomaly:>7} {v.results:>8} {rate:>8.1f} "
                        f"{v.fps:>8.1f} {v.gaps:>7} {v.duplicates:>7}")
        return "\n".join(rows)

    def _result(self, device_id: str, view: DeviceView, body: dict[str, Any]) -> None:
        seq = int(body.get("seq", 0))
        if view.last_seq and seq <= view.last_seq:
            view.duplicates += 1
            return
        if view.last_seq and seq > view.last_seq + 1:
            view.gaps += seq - view.last_seq - 1
            logger.warning("gap in seq: %d message(s) missing before #%d", seq - view.last_seq - 1, seq)
        view.last_seq = seq
        view.results += 1
        self.results += 1
        view.last_label = str(body.get("label"))
        view.labels[view.last_label] = view.labels.get(view.last_label, 0) + 1
        view.defects += bool(body.get("defect"))
        view.anomaly_score = body.get("anomaly_score")
        view.first_ms = view.first_ms or int(body.get("ts_ms", 0))
        view.last_ms = int(body.get("ts_ms", 0))
        if self.on_result is not None:
            self.on_result(device_id, body)


def monitor(broker: str, prefix: str = "linewatch", protocol: str = "5", as_json: bool = False,
            count: int | None = None, timeout: float | None = None, out: TextIO = sys.stdout,
            ready: threading.Event | None = None, summary_every: float | None = None,
            credentials: Credentials = Credentials(),
            on_result: Callable[[str, dict[str, Any]], None] | None = None) -> Monitor:
    """Print messages until ``count`` results arrived or ``timeout`` passed (or forever).

    With ``summary_every``, the per-device table is printed that often, and at the end.
    """
    view = Monitor(prefix, as_json, out, on_result)
    client = make_client(f"linewatch-monitor-{int(time.time() * 1000) % 100000}", protocol)
    subscribed = threading.Event()

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        c.subscribe(f"{prefix}/+/#", qos=1)  # again on every reconnect

    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, msg: view.handle(msg.topic, bytes(msg.payload))
    address = parse_broker(broker)
    connect(client, address, credentials=credentials)
    try:
        if not subscribed.wait(10):
            raise BrokerError(f"cannot subscribe at {address.host}:{address.port}: is the broker running?")
        if ready is not None:
            ready.set()
        deadline = time.monotonic() + timeout if timeout else None
        next_summary = time.monotonic() + summary_every if summary_every else None
        with view.changed:
            while count is None or view.results < count:
                left = deadline - time.monotonic() if deadline else 1.0
                if left <= 0:
                    break
                view.changed.wait(min(left, 1.0))
                if summary_every and next_summary and time.monotonic() >= next_summary:
                    print(view.table(), file=out, flush=True)
                    next_summary = time.monotonic() + summary_every
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if summary_every:
        print(view.table(), file=out, flush=True)
    return view
