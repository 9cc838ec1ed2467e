"""The MQTT side of the daemon: one paho-mqtt 2.x client per device.

Results and events go through the on-disk ``Spool``: a drain thread hands paho a bounded
window of the oldest entries, and an entry leaves the spool only when the broker has
acknowledged it (``on_publish``), never when ``publish()`` returns. While the broker is
away nothing is handed over; paho resends what was in flight when it reconnects.

Status is retained: ``online`` on every (re)connect, ``offline`` as the last will,
``stopped`` on a clean exit. Subscriptions are restored on every reconnect, and no
exception in a callback can kill paho's network thread.
"""

from __future__ import annotations

import functools
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
from paho.mqtt.properties import Properties

from edge.errors import BrokerError, UsageError
from edge.messages import status_payload
from edge.spool import Spool

logger = logging.getLogger(__name__)

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class Credentials:
    """Who we are to the broker. The password is never logged or put in a repr."""

    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={'***' if self.password else None})"


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
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS[protocol])
    client.suppress_exceptions = True  # a bug in a callback is logged, the network thread lives on
    return client


def connect(client: mqtt.Client, broker: BrokerAddress, keepalive: int = 30,
            credentials: Credentials = Credentials()) -> None:
    """Start connecting in the background; paho reconnects with backoff (1 to 30 s) from then on."""
    if credentials.username:
        client.username_pw_set(credentials.username, credentials.password)
    if broker.tls:
        try:
            client.tls_set(ca_certs=credentials.ca_file, certfile=credentials.cert_file,
                           keyfile=credentials.key_file, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the TLS files ({exc}): check ca_file, cert_file and key_file") from None
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.connect_async(broker.host, broker.port, keepalive=keepalive)
    client.loop_start()


def guarded(callback: Callable) -> Callable:
    """Log, never raise, from a paho callback."""
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception:
            logger.exception("error in MQTT callback %s", callback.__name__)
            return None
    return wrapper


MessageHandler = Callable[[mqtt.MQTTMessage], None]


class DevicePublisher:
    """Everything a device says and hears under ``<prefix>/<device_id>/``."""

    def __init__(self, broker: BrokerAddress, device_id: str, spool: Spool, prefix: str = "linewatch",
                 protocol: str = "5", credentials: Credentials = Credentials(), keepalive: int = 30,
                 status_extra: Callable[[], dict[str, Any]] | None = None, window: int = 64) -> None:
        self.broker = broker
        self.device_id = device_id
        self.spool = spool
        self.prefix = prefix
        self.protocol = protocol
        self.credentials = credentials
        self.keepalive = keepalive
        self.status_extra = status_extra or dict
        self.window = window
        self.client = make_client(f"linewatch-{device_id}", protocol)
        self.client.max_inflight_messages_set(window)
        self.since = time.time()
        self.connected = threading.Event()
        self._refused = threading.Event()
        self.refused = ""
        self.acked = 0
        self._last_sent = 0  # spool id of the last entry handed to paho
        self._cond = threading.Condition()
        self._stopping = False
        self._subscriptions: dict[str, MessageHandler] = {}
        self._on_connect_hooks: list[Callable[[], None]] = []
        self.client.will_set(self.topic("status"), self._status("offline"), qos=1, retain=True)
        self.client.on_connect = guarded(self._on_connect)
        self.client.on_disconnect = guarded(self._on_disconnect)
        self.client.on_publish = guarded(self._on_publish)
        self.client.on_message = guarded(self._on_message)
        self._drainer = threading.Thread(target=self._drain, name="mqtt-drain", daemon=True)

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{self.device_id}/{name}"

    def _status(self, state: str) -> str:
        return json.dumps(status_payload(state, self.device_id, self.since, self.status_extra()))

    # --- connection -------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.error("broker %s:%d refused the connection: %s", self.broker.host, self.broker.port, reason)
            self.refused = str(reason)
            self._refused.set()
            return
        logger.info("connected to %s:%d", self.broker.host, self.broker.port)
        client.publish(self.topic("status"), self._status("online"), qos=1, retain=True)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        with self._cond:
            self.connected.set()
            self._cond.notify_all()
        for hook in self._on_connect_hooks:
            hook()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connected.clear()
        if not self._stopping:
            logger.warning("lost the broker (%s); spooling until it is back", reason)

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on every (re)connect, e.g. to republish discovery."""
        self._on_connect_hooks.append(hook)

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Route messages on ``topic`` (wildcards allowed) to ``handler``; restored on every reconnect."""
        self._subscriptions[topic] = handler
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        for pattern, handler in self._subscriptions.items():
            if mqtt.topic_matches_sub(pattern, msg.topic):
                handler(msg)

    def start(self, timeout: float = 10.0) -> None:
        """Connect, wait until the broker has accepted us, and start draining the spool."""
        connect(self.client, self.broker, self.keepalive, self.credentials)
        deadline = time.monotonic() + timeout
        while not self.connected.is_set() and not self._refused.is_set() and time.monotonic() < deadline:
            self.connected.wait(0.05)
        if self._refused.is_set() and not self.connected.is_set():
            self.client.disconnect()
            self.client.loop_stop()
            raise BrokerError(f"the MQTT broker at {self.broker.host}:{self.broker.port} refused us: {self.refused}; "
                              "check the user name and password")
        if not self.connected.is_set():
            self.client.loop_stop()
            raise BrokerError(f"cannot reach the MQTT broker at {self.broker.host}:{self.broker.port} within "
                              f"{timeout:.0f} s: check the broker address, credentials and that it is running")
        self._drainer.start()

    # --- spooled messages (results, events) ----------------------------------------------------

    def spool_message(self, name: str, build: Callable[[int], bytes], sequence: str | None = None) -> int:
        """Store a QoS 1 message for ``<prefix>/<device>/<name>``; returns its ``seq``."""
        seq = self.spool.append(self.topic(name), build, sequence or name)
        with self._cond:
            self._cond.notify_all()
        return seq

    def _drain(self) -> None:
        """Hand the oldest spooled entries to paho, at most ``window`` unacknowledged at a time.

        Only this thread touches the in-flight list, and it never holds ``_cond`` while calling
        paho (paho calls ``on_publish`` holding its own locks).
        """
        inflight: list[tuple[mqtt.MQTTMessageInfo, int]] = []
        while not self._stopping:
            still = []
            for info, entry_id in inflight:
                if info.is_published():  # set by paho on PUBACK, as on_publish is called
                    self.spool.remove(entry_id)
                    self.acked += 1
                else:
                    still.append((info, entry_id))
            inflight = still
            room = self.window - len(inflight)
            entries = self.spool.after(self._last_sent, room) if self.connected.is_set() and room > 0 else []
            for entry in entries:
                inflight.append((self.client.publish(entry.topic, entry.payload, qos=1, retain=entry.retain),
                                 entry.id))
                self._last_sent = entry.id
            if not entries:
                with self._cond:
                    self._cond.wait(0.05)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            self._cond.notify_all()  # the drain thread reaps what was acknowledged

    # --- direct messages (status, stats, replies, discovery) -----------------------------------

    def publish_now(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                    properties: Properties | None = None) -> bool:
        """Publish straight away when connected (nothing is kept while the broker is away)."""
        if not self.connected.is_set():
            return False
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # --- shutdown ---------------------------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait until the spool is empty (everything acknowledged); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.spool.backlog() == 0:
                return True
            time.sleep(0.02)
        return self.spool.backlog() == 0

    def stop(self, timeout: float = 10.0) -> None:
        """Flush, say ``stopped`` (retained), and disconnect cleanly so the will is not sent."""
        if self.connected.is_set() and not self.flush(timeout):
            logger.warning("%d message(s) still spooled at exit: they go out on the next start",
                           self.spool.backlog())
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._drainer.is_alive():
            self._drainer.join(5)
        if self.connected.is_set():
            info = self.client.publish(self.topic("status"), self._status("stopped"), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except RuntimeError:  # the broker went away at the last moment; the will says offline
                pass
        self.client.disconnect()
        self.client.loop_stop()
