"""``linewatch deploy``: a model to one device, several, or every device online, over MQTT.

The file goes in chunks with its sha256 (and its signature, ``MODEL.sig``, when there is one);
each device checks it, puts it to work and replies (see ``linewatch.edge.device.ota``). The
deployer waits for every chunk to be acknowledged by the broker, shows the progress, and
reports each device's reply.

With ``--shadow`` the devices run the model beside their current one instead
(``linewatch.edge.device.shadow``); ``--promote`` and ``--abort`` end that, and ``--auto``
watches the ``shadow`` messages and decides by ``Rules``, then deploys to ``--then`` devices.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from linewatch.edge.comms.mqtt import Credentials, connect, make_client, parse_broker
from linewatch.edge.errors import BrokerError, ModelError, UsageError
from linewatch.edge.model import artifact
from linewatch.edge.station.client import StationClient

CHUNK_SIZE = 64 * 1024


class _Replies:
    """Replies to our own requests, by request id."""

    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}
        self.cond = threading.Condition()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            with self.cond:
                self.by_id[body["id"]] = body
                self.cond.notify_all()

    def wait(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        with self.cond:
            self.cond.wait_for(lambda: request_id in self.by_id, timeout)
            return self.by_id.get(request_id)


def online_devices(client: mqtt.Client, prefix: str, listen: float = 2.0) -> list[str]:
    """Devices whose retained status says online."""
    seen: dict[str, str] = {}

    def on_status(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError, AttributeError):
            seen[msg.topic.split("/")[-2]] = json.loads(msg.payload).get("state", "")

    client.message_callback_add(f"{prefix}/+/status", on_status)
    client.subscribe(f"{prefix}/+/status", qos=1)
    time.sleep(listen)
    client.unsubscribe(f"{prefix}/+/status")
    return sorted(device for device, state in seen.items() if state == "online")


def _bar(done: int, total: int, device: str, out: TextIO) -> None:
    filled = int(30 * done / total)
    print(f"\r{device:<20} [{'#' * filled}{'.' * (30 - filled)}] {100 * done // total:>3}% "
          f"{done / 1024:.0f}/{total / 1024:.0f} KiB", end="", file=out, flush=True)


def _send(client: mqtt.Client, replies: _Replies, topic: str, data: bytes, signature: bytes | None, device: str,
          timeout: float, out: TextIO, shadow: bool = False) -> dict[str, Any]:
    """One transfer to one device: begin, every chunk acknowledged by the broker, end. Returns the reply."""
    transfer = uuid.uuid4().hex[:12]
    chunks = -(-len(data) // CHUNK_SIZE)
    begin_id, end_id = f"{transfer}-begin", f"{transfer}-end"
    begin = {"id": begin_id, "action": "begin", "transfer": transfer, "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "chunk_size": CHUNK_SIZE, "chunks": chunks,
             "signature": base64.b64encode(signature).decode() if signature else None, "shadow": shadow}
    client.publish(f"{topic}/cmd/ota", json.dumps(begin), qos=1)
    reply = replies.wait(begin_id, 30)
    if reply is None:
        return {"ok": False, "error": "no reply to begin within 30 s: is the device online, with ota.enabled?"}
    if not reply["ok"]:
        return reply
    sent = 0
    for index in range(chunks):
        piece = data[index * CHUNK_SIZE:(index + 1) * CHUNK_SIZE]
        info = client.publish(f"{topic}/cmd/ota/chunk/{transfer}/{index}", piece, qos=1)
        try:
            info.wait_for_publish(timeout)
        except RuntimeError:
            raise BrokerError(f"lost the broker while sending chunk {index} of {chunks} to {device}: deploy again") \
                from None
        if not info.is_published():
            raise BrokerError(f"the broker did not acknowledge chunk {index} to {device} within {timeout:.0f} s")
        sent += len(piece)
        _bar(sent, len(data), device, out)
    print(file=out)
    end = {"id": end_id, "action": "end", "transfer": transfer}
    client.publish(f"{topic}/cmd/ota", json.dumps(end), qos=1)
    return replies.wait(end_id, timeout) or {"ok": False, "error": f"no reply to end within {timeout:.0f} s"}


class Session:
    """One connection to the broker for a deployer's requests and what it watches; ``close`` ends it."""

    def __init__(self, broker: str, prefix: str = "linewatch", protocol: str = "5",
                 credentials: Credentials = Credentials()) -> None:
        self.prefix = prefix
        self.client = make_client(f"linewatch-deploy-{uuid.uuid4().hex[:8]}", protocol)
        self.replies = _Replies()
        self.client.on_message = self.replies.on_message
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
        connect(self.client, parse_broker(broker), credentials=credentials)
        if not connected.wait(10):
            self.close()
            raise BrokerError(f"cannot reach the MQTT broker at {broker}: check the address and credentials")

    def targets(self, devices: list[str] | None) -> list[str]:
        """``devices``, or (None) every device online."""
        targets = devices if devices else online_devices(self.client, self.prefix)
        if not targets:
            raise UsageError(f"no device is online under {self.prefix}/: name one with --device")
        return targets

    def request(self, device: str, command: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        """``cmd/<command>`` to ``device``; its reply (``ok`` false when none came in time)."""
        topic = f"{self.prefix}/{device}/cmd/{command}"
        self.client.subscribe(f"{topic}/reply", qos=1)
        request_id = f"{command}-{uuid.uuid4().hex[:12]}"
        self.client.publish(topic, json.dumps({**body, "id": request_id}), qos=1)
        return self.replies.wait(request_id, timeout) or \
            {"ok": False, "error": f"no reply within {timeout:.0f} s: is the device online?"}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def online(broker: str, prefix: str = "linewatch", protocol: str = "5",
           credentials: Credentials = Credentials()) -> list[str]:
    """Every device whose retained status says online."""
    session = Session(broker, prefix, protocol, credentials)
    try:
        return session.targets(None)
    finally:
        session.close()


def deploy(model_path: str, broker: str, devices: list[str] | None, prefix: str = "linewatch",
           protocol: str = "5", credentials: Credentials = Credentials(), timeout: float = 120.0,
           out: TextIO = sys.stderr, shadow: bool = False) -> dict[str, dict[str, Any]]:
    """Send ``model_path`` to ``devices`` (None: every device online), to act on it or (``shadow``) to run it beside
    the current model; the reply of each, by device id."""
    path = Path(model_path)
    model = artifact.load(path)  # refuse a damaged or foreign file here, not on every device
    if not model.has_card:
        raise ModelError(f"{path} has no linewatch card: convert it with 'linewatch convert'")
    data = path.read_bytes()
    sig_path = path.with_name(path.name + ".sig")
    signature = sig_path.read_bytes() if sig_path.is_file() else None
    session = Session(broker, prefix, protocol, credentials)
    try:
        results: dict[str, dict[str, Any]] = {}
        for device in session.targets(devices):
            topic = f"{prefix}/{device}"
            session.client.subscribe(f"{topic}/cmd/ota/reply", qos=1)
            print(f"{device}: {model.name} {model.version}, {len(data) / 1024:.0f} KiB"
                  f"{', signed' if signature else ''}{', in shadow' if shadow else ''}", file=out, flush=True)
            results[device] = _send(session.client, session.replies, topic, data, signature, device, timeout, out,
                                    shadow)
            reply = results[device]
            done = "runs in shadow" if shadow else "installed"
            outcome = f"{done} {reply.get('result')}" if reply.get("ok") else f"refused: {reply.get('error')}"
            print(f"{device}: {outcome}", file=out, flush=True)
        return results
    finally:
        session.close()


@dataclass(frozen=True)
class Labelled:
    """What people said of frames where the two models disagreed: the station's labelled ``disagreement`` samples."""

    samples: int = 0
    candidate_right: int = 0
    current_right: int = 0

    @classmethod
    def from_station(cls, station: StationClient, device: str, candidate: str) -> Labelled:
        """The samples ``device`` sent while ``candidate`` (its sha256) ran in shadow, as labelled so far."""
        found = station.call(f"/api/samples?state=labelled&reason=disagreement&device={device}&limit=5000")
        mine = [s for s in found["samples"] if (s.get("candidate") or {}).get("sha256") == candidate]
        return cls(len(mine), sum(s["candidate_label"] == s["labelled_as"] for s in mine),
                   sum(s["label"] == s["labelled_as"] for s in mine))


@dataclass(frozen=True)
class Rules:
    """When ``--auto`` promotes a candidate in shadow: all must hold once ``min_frames`` were compared (and, with
    ``min_labelled``, that many of the frames where the two disagreed were labelled at the station)."""

    min_frames: int = 500
    min_agreement: float = 0.9
    max_defect_rate_change: float = 0.05
    min_labelled: int = 0
    min_labelled_accuracy: float = 0.9

    def judge(self, shadow: dict[str, Any], labelled: Labelled | None = None) -> tuple[bool, str]:
        """(promote?, the verdict in words) for a ``shadow`` message that has ``min_frames``."""
        agreement, rates = shadow["agreement"] or 0.0, shadow["defect_rate"]
        change = abs((rates["candidate"] or 0.0) - (rates["current"] or 0.0))
        failures = []
        if agreement < self.min_agreement:
            failures.append(f"agreement {agreement:.3f} < {self.min_agreement:g}")
        if change > self.max_defect_rate_change:
            failures.append(f"defect rate {rates['current']:.3f} -> {rates['candidate']:.3f}, a change over "
                            f"{self.max_defect_rate_change:g}")
        facts = (f"{shadow['frames']} frames, agreement {agreement:.3f}, defect rate {rates['current']:.3f} -> "
                 f"{rates['candidate']:.3f}")
        if self.min_labelled:
            labelled = labelled or Labelled()
            accuracy = labelled.candidate_right / labelled.samples if labelled.samples else 0.0
            facts += (f"; of {labelled.samples} labelled disagreements the candidate was right on "
                      f"{labelled.candidate_right}, the current model on {labelled.current_right}")
            if labelled.samples < self.min_labelled:
                failures.append(f"{labelled.samples} labelled disagreements < {self.min_labelled}")
            elif accuracy < self.min_labelled_accuracy or labelled.candidate_right <= labelled.current_right:
                failures.append(f"right on {accuracy:.0%} of the labelled disagreements (at least "
                                f"{self.min_labelled_accuracy:.0%}, and more than the current model)")
        return (not failures, f"promoted by --auto: {facts}" if not failures else
                f"aborted by --auto: {'; '.join(failures)} ({facts})")


def end_shadow(broker: str, devices: list[str] | None, action: str, reason: str | None = None,
               prefix: str = "linewatch", protocol: str = "5", credentials: Credentials = Credentials(),
               timeout: float = 120.0, out: TextIO = sys.stderr) -> dict[str, dict[str, Any]]:
    """``promote`` or ``abort`` the candidate in shadow on ``devices``; the reply of each."""
    session = Session(broker, prefix, protocol, credentials)
    try:
        results = {device: session.request(device, "shadow", {"action": action, "reason": reason}, timeout)
                   for device in session.targets(devices)}
    finally:
        session.close()
    for device, reply in results.items():
        outcome = f"{action}d" if reply.get("ok") else f"refused: {reply.get('error')}"
        print(f"{device}: {outcome}", file=out, flush=True)
    return results


def watch_shadow(broker: str, device: str, rules: Rules, prefix: str = "linewatch", protocol: str = "5",
                 credentials: Credentials = Credentials(), timeout: float = 3600.0,
                 out: TextIO = sys.stderr, station: StationClient | None = None) -> dict[str, Any]:
    """Follow ``device``'s ``shadow`` messages until ``rules.min_frames`` were compared (and, with
    ``rules.min_labelled``, that many disagreements were labelled at ``station``), then promote or abort by
    ``rules``; the verdict (``promoted``, ``reason``, the last ``shadow`` message). A candidate that failed, or no
    verdict in ``timeout``, is an abort."""
    session = Session(broker, prefix, protocol, credentials)
    latest: list[dict[str, Any]] = []
    cond = threading.Condition()

    def on_shadow(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            body = json.loads(msg.payload)
            with cond:
                latest.append(body)
                cond.notify_all()

    topic = f"{prefix}/{device}/shadow"
    session.client.message_callback_add(topic, on_shadow)
    session.client.subscribe(topic, qos=1)
    deadline = time.monotonic() + timeout
    try:
        with cond:
            cond.wait_for(lambda: bool(latest) and (latest[-1].get("state") != "running"
                                                    or latest[-1].get("frames", 0) >= rules.min_frames), timeout)
            last = latest[-1] if latest else None
        labelled = None
        if rules.min_labelled and station is not None and last is not None and last.get("state") == "running":
            candidate = last["candidate"]["sha256"]
            while (labelled := Labelled.from_station(station, device, candidate)).samples < rules.min_labelled \
                    and time.monotonic() < deadline and latest[-1].get("state") == "running":
                time.sleep(2.0)
            last = latest[-1]
        if last is None or last.get("state") != "running" or last["frames"] < rules.min_frames:
            why = "no shadow message" if last is None else last.get("reason") or \
                f"{last['frames']} of {rules.min_frames} frames in {timeout:.0f} s"
            if last is None or last.get("state") == "running":
                session.request(device, "shadow", {"action": "abort", "reason": f"aborted by --auto: {why}"}, 30)
            verdict = {"promoted": False, "reason": f"aborted by --auto: {why}", "shadow": last}
            print(f"{device}: {verdict['reason']}", file=out, flush=True)
            return verdict
        promote, reason = rules.judge(last, labelled)
        print(f"{device}: {reason}", file=out, flush=True)
        reply = session.request(device, "shadow", {"action": "promote" if promote else "abort", "reason": reason},
                                120)
        if promote and not reply.get("ok"):
            return {"promoted": False, "reason": f"the promotion failed: {reply.get('error')}", "shadow": last}
        return {"promoted": promote, "reason": reason, "shadow": last}
    finally:
        session.close()
