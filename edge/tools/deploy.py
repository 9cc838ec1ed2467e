"""``linewatch deploy``: a model to one device, several, or every device online, over MQTT.

The file goes in chunks with its sha256 (and its signature, ``MODEL.sig``, when there is one);
each device checks it, puts it to work and replies (see ``linewatch.edge.device.ota``). The
deployer waits for every chunk to be acknowledged by the broker, shows the progress, and
reports each device's reply.
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
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from linewatch.edge.comms.mqtt import Credentials, connect, make_client, parse_broker
from linewatch.edge.errors import BrokerError, ModelError, UsageError
from linewatch.edge.model import artifact

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
          timeout: float, out: TextIO) -> dict[str, Any]:
    """One transfer to one device: begin, every chunk acknowledged by the broker, end. Returns the reply."""
    transfer = uuid.uuid4().hex[:12]
    chunks = -(-len(data) // CHUNK_SIZE)
    begin_id, end_id = f"{transfer}-begin", f"{transfer}-end"
    begin = {"id": begin_id, "action": "begin", "transfer": transfer, "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "chunk_size": CHUNK_SIZE, "chunks": chunks,
             "signature": base64.b64encode(signature).decode() if signature else None}
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


def deploy(model_path: str, broker: str, devices: list[str] | None, prefix: str = "linewatch",
           protocol: str = "5", credentials: Credentials = Credentials(), timeout: float = 120.0,
           out: TextIO = sys.stderr) -> dict[str, dict[str, Any]]:
    """Send ``model_path`` to ``devices`` (None: every device online); the reply of each, by device id."""
    path = Path(model_path)
    model = artifact.load(path)  # refuse a damaged or foreign file here, not on every device
    if not model.has_card:
        raise ModelError(f"{path} has no linewatch card: convert it with 'linewatch convert'")
    data = path.read_bytes()
    sig_path = path.with_name(path.name + ".sig")
    signature = sig_path.read_bytes() if sig_path.is_file() else None
    client = make_client(f"linewatch-deploy-{uuid.uuid4().hex[:8]}", protocol)
    replies = _Replies()
    client.on_message = replies.on_message
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    connect(client, parse_broker(broker), credentials=credentials)
    try:
        if not connected.wait(10):
            raise BrokerError(f"cannot reach the MQTT broker at {broker}: check the address and credentials")
        targets = devices if devices else online_devices(client, prefix)
        if not targets:
            raise UsageError(f"no device is online under {prefix}/: name one with --device")
        results: dict[str, dict[str, Any]] = {}
        for device in targets:
            topic = f"{prefix}/{device}"
            client.subscribe(f"{topic}/cmd/ota/reply", qos=1)
            print(f"{device}: {model.name} {model.version}, {len(data) / 1024:.0f} KiB"
                  f"{', signed' if signature else ''}", file=out, flush=True)
            results[device] = _send(client, replies, topic, data, signature, device, timeout, out)
            reply = results[device]
            outcome = f"installed {reply.get('result')}" if reply.get("ok") else f"refused: {reply.get('error')}"
            print(f"{device}: {outcome}", file=out, flush=True)
        return results
    finally:
        client.disconnect()
        client.loop_stop()
