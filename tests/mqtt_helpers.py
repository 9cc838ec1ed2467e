"""A plain paho subscriber for tests: independent of linewatch's own monitor, so it can judge it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


@dataclass(frozen=True)
class Message:
    topic: str
    payload: Any
    retain: bool


class Collector:
    """Subscribes to ``topic`` on ``url`` and keeps every message, decoded from JSON where it can."""

    def __init__(self, url: str, topic: str = "linewatch/#", protocol: int = mqtt.MQTTv5,
                 session: str | None = None) -> None:
        """``session`` names a persistent session: the broker queues QoS 1 messages while we are away."""
        parts = urlsplit(url)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session or "", protocol=protocol)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        kwargs = {}
        if session:  # MQTT 5 only: a session that outlives the connection
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect(parts.hostname, parts.port, **kwargs)
        self.client.loop_start()
        assert self._subscribed.wait(10), "test subscriber could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload: Any = json.loads(msg.payload)
        except ValueError:
            payload = msg.payload
        with self._cond:
            self.messages.append(Message(msg.topic, payload, bool(msg.retain)))
            self._cond.notify_all()

    def on(self, suffix: str) -> list[Any]:
        with self._cond:
            return [m.payload for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[["Collector"], bool], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
