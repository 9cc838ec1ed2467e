"""The MQTT side of the daemon: one paho-mqtt 2.x client per device.

Status is retained: ``online`` is published on every (re)connect, ``offline`` is the last
will, ``stopped`` is said on a clean exit. Acknowledgements are counted in ``on_publish``
(never by ``publish()`` returning), so "sent" means "the broker has it".
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

from edge.errors import BrokerError, UsageError
from edge.messages import status_payload

logger = logging.getLogger(__name__)

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker(url: str) -> BrokerAddress:
    """``mqtt://host:port`` or ``mqtts://host:port`` (TLS); ports default to 1883 and 8883."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise UsageError(f"broker '{url}' is not a broker URL: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise UsageError(f"broker '{url}' has a bad port number") from None
    return BrokerAddress(parts.hostname, port, tls)


def make_client(client_id: str, protocol: str) -> mqtt.Client:
    """A paho client with the version-2 callback API and the asked-for protocol."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"MQTT protocol '{protocol}' is not supported: use 5 or 3.1.1")
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS[protocol])


def connect(client: mqtt.Client, broker: BrokerAddress, keepalive: int = 30,
            username: str | None = None, password: str | None = None, ca_file: str | None = None) -> None:
    """Start connecting in the background; paho reconnects with backoff from then on."""
    if username:
        client.username_pw_set(username, password)
    if broker.tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.connect_async(broker.host, broker.port, keepalive=keepalive)
    client.loop_start()


class DevicePublisher:
    """Publishes a device's messages under ``<prefix>/<device_id>/`` and counts acknowledgements."""

    def __init__(self, broker: BrokerAddress, device_id: str, prefix: str = "linewatch", protocol: str = "5",
                 status_extra: Callable[[], dict[str, Any]] | None = None, **connect_args: Any) -> None:
        self.broker = broker
        self.device_id = device_id
        self.prefix = prefix
        self.status_extra = status_extra or dict
        self.client = make_client(f"linewatch-{device_id}", protocol)
        self.connect_args = connect_args
        self.since = time.time()
        self.connected = threading.Event()
        self.sent = 0
        self.acked = 0
        self._pending: set[int] = set()
        self._early: set[int] = set()
        self._lock = threading.Lock()
        self.client.will_set(self.topic("status"), self._status("offline"), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{self.device_id}/{name}"

    def _status(self, state: str) -> str:
        return json.dumps(status_payload(state, self.device_id, self.since, self.status_extra()))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.error("broker %s:%d refused the connection: %s", self.broker.host, self.broker.port, reason)
            return
        logger.info("connected to %s:%d", self.broker.host, self.broker.port)
        client.publish(self.topic("status"), self._status("online"), qos=1, retain=True)
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        if reason != 0:
            logger.warning("lost the broker (%s); reconnecting", reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
                self.acked += 1
            else:  # acknowledged before publish() returned to us
                self._early.add(mid)

    def start(self, timeout: float = 10.0) -> None:
        """Connect, and wait until the broker has accepted us."""
        connect(self.client, self.broker, **self.connect_args)
        if not self.connected.wait(timeout):
            self.client.loop_stop()
            raise BrokerError(f"cannot reach the MQTT broker at {self.broker.host}:{self.broker.port} within "
                              f"{timeout:.0f} s: check --broker and that the broker is running")

    def publish(self, name: str, payload: dict[str, Any], qos: int = 1, retain: bool = False) -> None:
        """Queue one JSON message; never blocks on the network."""
        info = self.client.publish(self.topic(name), json.dumps(payload, separators=(",", ":")), qos=qos,
                                   retain=retain)
        with self._lock:
            self.sent += 1
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked += 1
            else:
                self._pending.add(info.mid)

    def wait_acked(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything published; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Flush, say ``stopped`` (retained), and disconnect cleanly so the will is not sent."""
        if not self.wait_acked(timeout):
            logger.warning("%d message(s) not acknowledged by the broker at exit", len(self._pending))
        if self.connected.is_set():
            info = self.client.publish(self.topic("status"), self._status("stopped"), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except RuntimeError:  # the broker went away at the last moment; the will says offline
                pass
        self.client.disconnect()
        self.client.loop_stop()
