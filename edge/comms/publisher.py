"""The device's side of MQTT: one paho-mqtt 2.x client that publishes and hears under ``<prefix>/<device_id>/``.

Results and events go through the on-disk ``Spool``: a drain thread hands paho a bounded
window of the oldest entries, and an entry leaves the spool only when the broker has
acknowledged it (``on_publish``), never when ``publish()`` returns. While the broker is
away nothing is handed over; paho resends what was in flight when it reconnects.

The broker is never waited for: the device inspects and spools from the start, and paho
connects in the background, with backoff, forever. Only a definite refusal (bad credentials,
not authorised, banned) is final; it is reported through ``on_state``.

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

from linewatch.edge.comms.mqtt import BrokerAddress, Credentials, connect, make_client, tls_context, tls_problem
from linewatch.edge.comms.payloads import DeviceStatus, Status, rfc3339
from linewatch.edge.comms.spool import Outgoing, Spool

logger = logging.getLogger(__name__)

MessageHandler = Callable[[mqtt.MQTTMessage], None]
StateHandler = Callable[[str, str], None]

# CONNACK reasons that retrying will not cure (MQTT 5 codes; paho maps 3.1.1's onto them):
# unsupported protocol, client id not valid, bad user name or password, not authorized, banned, bad auth method.
REFUSALS = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})


class DevicePublisher:
    """Everything a device says and hears under ``<prefix>/<device_id>/``."""

    def __init__(self, broker: BrokerAddress, device_id: str, spool: Spool, prefix: str = "linewatch",
                 protocol: str = "5", credentials: Credentials = Credentials(), keepalive: int = 30,
                 model: tuple[str, str, str] | None = None, window: int = 64, reconnect_max_s: float = 10.0,
                 insecure: bool = False) -> None:
        """``model`` (name, version, sha256) goes into every status message; reconnects back off up to
        ``reconnect_max_s``; ``insecure`` accepts any broker certificate."""
        self.broker = broker
        self.device_id = device_id
        self.spool = spool
        self.prefix = prefix
        self.protocol = protocol
        self.credentials = credentials
        self.keepalive = keepalive
        self.model = model
        self.reconnect_max_s = reconnect_max_s
        self.insecure = insecure
        self.state = "connecting"
        self._state_handlers: list[StateHandler] = []
        self.window = window
        self.client = make_client(f"linewatch-{device_id}", protocol)
        self.client.max_inflight_messages_set(window)
        self.since = time.time()
        self.connected = threading.Event()
        self.acked = 0
        self._last_sent = 0  # spool id of the last entry handed to paho
        self._cond = threading.Condition()
        self._wake = False  # something for the drain thread since it last looked: a notify is never lost
        self._stopping = False
        self._subscriptions: list[str] = []
        self._on_connect_hooks: list[Callable[[], None]] = []
        self._refused: set[int] = set()  # reason codes of PUBACKs that refused a message, said once each
        self.client.will_set(self.topic("status"), self._status("offline"), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_connect_fail = self._on_connect_fail
        self._drainer = threading.Thread(target=self._drain, name="mqtt-drain", daemon=True)

    def topic(self, name: str) -> str:
        return f"{self.prefix}/{self.device_id}/{name}"

    def _status(self, state: DeviceStatus) -> bytes:
        name, version, digest = self.model or (None, None, None)
        notices = [f"spool file was unreadable: moved aside to {aside}, a fresh one started"
                   for aside in self.spool.recovered]
        if self.spool.in_memory:
            notices.append("disk full at start: the spool is kept in memory until a restart")
        return Status(device_id=self.device_id, state=state, since=rfc3339(self.since), model=name,
                      version=version, sha256=digest, notices=notices or None).encode()

    def set_model(self, name: str, version: str, digest: str) -> None:
        """A new model runs: say so in the retained status (and in the will, for when we vanish)."""
        self.model = (name, version, digest)
        self.client.will_set(self.topic("status"), self._status("offline"), qos=1, retain=True)
        self.publish_now(self.topic("status"), self._status("online"), qos=1, retain=True)

    # --- connection -------------------------------------------------------------------------

    def on_state(self, handler: StateHandler) -> None:
        """``handler(state, detail)`` on every change: connecting, connected, disconnected, refused."""
        self._state_handlers.append(handler)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        for handler in self._state_handlers:
            handler(state, detail)

    @property
    def address(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            if reason.value in REFUSALS:
                logger.error("the MQTT broker at %s refused us: %s; check the user name, password and ACLs",
                             self.address, reason)
                self._set_state("refused", str(reason))
            else:  # server unavailable, busy...: it may accept us later
                logger.warning("the MQTT broker at %s turned us away (%s); retrying", self.address, reason)
                self._set_state("disconnected", str(reason))
            return
        logger.info("connected to %s", self.address)
        client.publish(self.topic("status"), self._status("online"), qos=1, retain=True)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()
        self._nudge()
        self._set_state("connected")
        for hook in self._on_connect_hooks:
            hook()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self._stopping or self.state == "refused":
            return
        if was_connected:
            logger.warning("lost the broker (%s); spooling until it is back", reason)
        elif self.state != "disconnected":
            problem = self._tls_problem()
            if problem:  # TLS 1.3: a client certificate the broker wants is refused after the handshake
                self._say_tls(problem)
                self._set_state("disconnected", f"TLS: {problem}")
                return
            logger.warning("the MQTT broker at %s closed the connection before accepting us (%s): check mqtts:// "
                           "against the broker's port; spooling and retrying", self.address, reason)
        self._set_state("disconnected", str(reason))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if self.state == "disconnected":  # once per outage, not once per retry
            return
        problem = self._tls_problem()
        if problem:
            self._say_tls(problem)
        else:
            logger.warning("cannot reach the MQTT broker at %s; inspecting and spooling, retrying in the background",
                           self.address)
        self._set_state("disconnected", f"TLS: {problem}" if problem else "unreachable")

    def _tls_problem(self) -> str | None:
        """Why the TLS handshake fails, found by one handshake of our own (paho does not say)."""
        return tls_problem(tls_context(self.credentials, self.insecure), self.broker) if self.broker.tls else None

    def _say_tls(self, problem: str) -> None:
        logger.error("the TLS handshake with the MQTT broker at %s fails (%s): check mqtt.ca_file, the host name in "
                     "mqtt.broker and, if the broker asks for one, mqtt.cert_file; inspecting and spooling, retrying "
                     "in the background", self.address, problem)

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on every (re)connect, e.g. to republish discovery."""
        self._on_connect_hooks.append(hook)

    def subscribe(self, topic: str, handler: MessageHandler) -> None:
        """Route messages on ``topic`` (wildcards allowed) to ``handler``; restored on every reconnect."""
        self.client.message_callback_add(topic, lambda client, userdata, msg: handler(msg))
        self._subscriptions.append(topic)
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def start(self) -> None:
        """Start connecting in the background and draining the spool whenever connected; never waits."""
        connect(self.client, self.broker, self.keepalive, self.credentials, self.reconnect_max_s, self.insecure)
        self._drainer.start()

    # --- spooled messages (results, events) ----------------------------------------------------

    def spool_message(self, name: str, build: Callable[[int], bytes]) -> int:
        """Store a QoS 1 message for ``<prefix>/<device>/<name>``; returns its ``seq``."""
        return self.spool_messages([(name, build)])[0]

    def spool_messages(self, messages: list[tuple[str, Callable[[int], bytes]]]) -> list[int]:
        """Store ``(name, build)`` messages in one transaction, in order (a block's results and events); their seqs."""
        seqs = self.spool.append_many([Outgoing(self.topic(name), build, name) for name, build in messages])
        self._nudge()
        return seqs

    def _nudge(self) -> None:
        """Wake the drain thread: a message was spooled or acknowledged, the link is up, or we stop."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()

    def _drain(self) -> None:
        """Hand the oldest spooled entries to paho, at most ``window`` unacknowledged at a time.

        Only this thread touches the in-flight list, and it never holds ``_cond`` while calling
        paho (paho calls ``on_publish`` holding its own locks). It outlives any error of its own:
        without it nothing would be delivered (``make soak`` found that out).
        """
        inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # spool id -> paho's handle, oldest first
        while not self._stopping:
            try:
                self._drain_step(inflight)
            except Exception:
                logger.exception("handing spooled messages to paho failed; starting over from the oldest")
                inflight.clear()
                self._last_sent = 0
                time.sleep(1.0)

    def _drain_step(self, inflight: dict[int, mqtt.MQTTMessageInfo]) -> None:
        acknowledged = []
        for entry_id, info in list(inflight.items()):
            try:
                published = info.is_published()  # set by paho on PUBACK, as on_publish is called
            except RuntimeError:  # the connection dropped just before publish(): paho did not take it
                del inflight[entry_id]
                self._last_sent = min(self._last_sent, entry_id - 1)  # handed over again once connected
                continue
            if published:
                del inflight[entry_id]
                acknowledged.append(entry_id)
        if acknowledged:
            self.spool.remove(acknowledged)
            self.acked += len(acknowledged)
        room = self.window - len(inflight)
        entries = self.spool.after(self._last_sent, room) if self.connected.is_set() and room > 0 else []
        for entry in entries:
            if entry.id not in inflight:
                inflight[entry.id] = self.client.publish(entry.topic, entry.payload, qos=1, retain=entry.retain)
            self._last_sent = entry.id
        if not entries:
            with self._cond:
                if not self._wake:
                    self._cond.wait(0.05)
                self._wake = False

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False) and reason.value not in self._refused:
            # MQTT 5: the broker took the message and dropped it (an ACL without this topic); retrying would not
            # change its mind, so the entry leaves the spool like any answered one. Said once per reason.
            self._refused.add(reason.value)
            logger.error("the MQTT broker at %s refuses our messages (%s): its ACL must let user %s write %s/#",
                         self.address, reason, self.credentials.username or "(anonymous)", self.topic("")[:-1])
        self._nudge()  # the drain thread reaps what was acknowledged

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

    def stop(self, timeout: float = 3.0) -> None:
        """Flush, say ``stopped`` (retained), and disconnect cleanly so the will is not sent."""
        if not (self.connected.is_set() and self.flush(timeout)) and self.spool.backlog():
            logger.warning("%d message(s) still spooled at exit: they go out on the next start",
                           self.spool.backlog())
        self._stopping = True
        self._nudge()
        if self._drainer.is_alive():
            self._drainer.join(5)
        if self.connected.is_set():
            info = self.client.publish(self.topic("status"), self._status("stopped"), qos=1, retain=True)
            with contextlib.suppress(RuntimeError):  # the broker went away at the last moment: the will says offline
                info.wait_for_publish(1.0)
        self.client.disconnect()
        self.client.loop_stop()
