"""The device's side of MQTT: one paho-mqtt 2.x client that publishes and hears under ``<prefix>/<device_id>/``.

Results and events go through the on-disk ``Spool``: a drain thread hands paho a bounded
window of the oldest entries, and an entry leaves the spool only when the broker has
acknowledged it (``on_publish``), never when ``publish()`` returns. While the broker is
away nothing is handed over; paho resends what was in flight when it reconnects.

Status is retained: ``online`` on every (re)connect, ``offline`` as the last will,
``stopped`` on a clean exit. Subscriptions are routed by paho itself
(``message_callback_add``) and restored on every reconnect; command replies follow MQTT 5
request/response (response topic, correlation data) here, so handlers only build the payload.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linewatch.edge.comms.mqtt import BrokerAddress, Credentials, connect, make_client
from linewatch.edge.comms.payloads import Status, rfc3339
from linewatch.edge.comms.spool import Spool
from linewatch.edge.errors import BrokerError

logger = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]


class DevicePublisher:
    """Everything a device says and hears under ``<prefix>/<device_id>/``."""

    def __init__(self, broker: BrokerAddress, device_id: str, spool: Spool, prefix: str = "linewatch",
                 protocol: str = "5", credentials: Credentials = Credentials(), keepalive: int = 30,
                 model: tuple[str, str] | None = None, window: int = 64) -> None:
        """``model`` (name, version) goes into every status message."""
        self.broker = broker
        self.device_id = device_id
        self.spool = spool
        self.prefix = prefix
        self.protocol = protocol
        self.credentials = credentials
        self.keepalive = keepalive
        self.model = model
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
        self._subscriptions: list[str] = []
        self._on_connect_hooks: list[Callable[[], None]] = []
        self.client.will_set(self.topic("status"), self._status("offline"), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self._drainer = threading.Thread(target=self._drain, name="mqtt-drain", daemon=True)

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{self.device_id}/{name}"

    def _status(self, state: str) -> bytes:
        name, version = self.model or (None, None)
        return Status(device_id=self.device_id, state=state, since=rfc3339(self.since), model=name,
                      version=version).encode()

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
        self.client.message_callback_add(topic, lambda client, userdata, msg: handler(msg))
        self._subscriptions.append(topic)
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

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

    def reply(self, request: mqtt.MQTTMessage, payload: bytes) -> None:
        """Answer a command: on its MQTT 5 response topic with its correlation data, else on ``<topic>/reply``."""
        props = getattr(request, "properties", None)
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        out = None
        if self.protocol == "5" and correlation is not None:
            out = Properties(PacketTypes.PUBLISH)
            out.CorrelationData = correlation
        self.publish_now(response_topic or f"{request.topic}/reply", payload, qos=1, properties=out)

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
            with contextlib.suppress(RuntimeError):  # the broker went away at the last moment: the will says offline
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
