"""The device as a Sparkplug B edge node, so that an Ignition MQTT Engine (or any Sparkplug host) sees it with no
configuration.

An MQTT session of its own (a connection has one will, and Sparkplug's is ``NDEATH``): on every
connect ``NBIRTH`` (with ``bdSeq`` and ``Node Control/Rebirth``) and ``DBIRTH`` for the device
``vision`` with every metric; then ``DDATA`` with the metrics that changed, checked every
``interval_s``; ``NCMD`` ``Node Control/Rebirth`` sends both births again. ``bdSeq`` goes up by one
per connection and is kept in ``state_dir``, so a host pairs each ``NDEATH`` with its ``NBIRTH``
across restarts. The JSON topics are untouched. Metrics come from the ``DeviceReading`` the setup
page and Prometheus read.

With ``primary_host_id`` set (Sparkplug 3.0's primary host application, e.g. Ignition's MQTT Engine),
the births wait for the host's retained ``spBv1.0/STATE/<id>`` to say online; when it says offline,
the node sends ``NDEATH`` and opens a new session, which waits again. A STATE older than one seen
is ignored, as the specification asks.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from linewatch.edge import __version__
from linewatch.edge.comms.mqtt import Credentials, connect, make_client, parse_broker
from linewatch.edge.comms.sparkplug import BOOLEAN, DOUBLE, INT64, STRING, UINT64, Metric, decode, encode, topic
from linewatch.edge.device.clock import SYSTEM_CLOCK, Clock
from linewatch.edge.device.config import MqttSection, SparkplugSection
from linewatch.edge.device.view import DeviceReading
from linewatch.edge.files import write_atomic

logger = logging.getLogger(__name__)

DEVICE = "vision"  # the Sparkplug device under the edge node: the camera and its model
REBIRTH = "Node Control/Rebirth"


def state_topic(host_id: str) -> str:
    """Where a Sparkplug primary host publishes whether it is online (retained, its will saying offline)."""
    return f"spBv1.0/STATE/{host_id}"


def device_metrics(reading: DeviceReading) -> list[Metric]:
    """The device's metrics: its model, its frames, the newest result and, on a line, the part counts."""
    latest = reading.latest
    prediction = latest.prediction if latest is not None else None
    metrics = [
        Metric("Model/Name", STRING, reading.model.name), Metric("Model/Version", STRING, reading.model.version),
        Metric("Model/Sha256", STRING, reading.model.sha256),
        Metric("Status/Source", STRING, reading.source_state), Metric("Status/Paused", BOOLEAN, reading.paused),
        Metric("Frames", UINT64, reading.frames), Metric("Dropped", UINT64, reading.dropped),
        Metric("Events/Started", UINT64, reading.events_started),
        Metric("Last/Label", STRING, prediction.label if prediction else None),
        Metric("Last/Score", DOUBLE, round(prediction.score, 4) if prediction else None),
        Metric("Last/Verdict", STRING, latest.model.verdict(prediction.label, prediction.anomalous)
               if latest is not None and prediction is not None else None),
        Metric("Last/AnomalyScore", DOUBLE, round(prediction.anomaly_score, 4)
               if prediction is not None and prediction.anomaly_score is not None else None),
    ]
    if reading.line is not None:
        counts = reading.line.as_dict()
        metrics += [Metric(f"Line/{name.capitalize()}", UINT64, counts[name]) for name in ("parts", "good", "rejected")]
        metrics += [Metric(f"Line/Rejected/{reason}", UINT64, n) for reason, n in counts["rejected_by_reason"].items()]
        metrics.append(Metric("Line/Yield", DOUBLE, counts["yield"]))
    return metrics


class SparkplugNode:
    """One edge node (this device) with one device (``vision``) on a connection of its own."""

    def __init__(self, cfg: SparkplugSection, mqtt_cfg: MqttSection, device_id: str, credentials: Credentials,
                 read: Callable[[], DeviceReading], state_dir: Path, clock: Clock = SYSTEM_CLOCK) -> None:
        self.cfg, self.mqtt_cfg, self.credentials = cfg, mqtt_cfg, credentials
        self.group, self.node = cfg.group_id, cfg.edge_node_id or device_id
        self.read, self.clock = read, clock
        self.bdseq_path = state_dir / f"sparkplug-bdseq-{device_id}"
        self.client = make_client(f"{device_id}-sparkplug", mqtt_cfg.protocol)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.message_callback_add(topic(self.group, "NCMD", self.node), self._on_command)
        self.host = cfg.primary_host_id
        if self.host is not None:
            self.client.message_callback_add(state_topic(self.host), self._on_state)
        self._host_seen = -1  # the newest STATE's timestamp
        self._bad_states = 0
        self._walk = threading.Event()  # the host went offline: end this session, open another
        self._lock = threading.Lock()
        self._seq = 0
        self._last: dict[str, Any] = {}
        self._connected = False
        self.refused_commands = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sparkplug", daemon=True)
        self.bdseq = self._next_bdseq()
        self._set_will()

    def _next_bdseq(self) -> int:
        """This connection's ``bdSeq``: the last one kept plus one (0 to 255), kept for the next."""
        try:
            last = int(self.bdseq_path.read_text().strip())
        except (OSError, ValueError):
            last = -1
        bdseq = (last + 1) % 256
        write_atomic(self.bdseq_path, f"{bdseq}\n".encode())
        return bdseq

    def _death(self) -> bytes:
        return encode([Metric("bdSeq", INT64, self.bdseq)], self._now_ms(), None)

    def _set_will(self) -> None:
        self.client.will_set(topic(self.group, "NDEATH", self.node), self._death(), qos=1, retain=False)

    def _now_ms(self) -> int:
        return int(self.clock.time() * 1000)

    def start(self) -> None:
        connect(self.client, parse_broker(self.mqtt_cfg.broker), self.mqtt_cfg.keepalive, self.credentials,
                self.mqtt_cfg.reconnect_max_s, self.mqtt_cfg.insecure)
        self._thread.start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe(topic(self.group, "NCMD", self.node), qos=0)
        if self.host is None:
            self._birth()
        else:  # retained: the host's state comes at once, and the births with it when it is online
            client.subscribe(state_topic(self.host), qos=1)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._lock:
            self._connected = False
            if not self._stop.is_set():  # the next connection is a new session: its own bdSeq and will
                self.bdseq = self._next_bdseq()
                self._set_will()

    def _publish(self, kind: str, metrics: list[Metric], device: str | None = None) -> None:
        """One message with the next ``seq`` (0 to 255, from 0 at NBIRTH); QoS 0, not retained, as Sparkplug asks."""
        payload = encode(metrics, self._now_ms(), self._seq)
        self._seq = (self._seq + 1) % 256
        self.client.publish(topic(self.group, kind, self.node, device), payload, qos=0)

    def _birth(self) -> None:
        """NBIRTH then DBIRTH with every metric: on every connect and on a host's rebirth request."""
        metrics = device_metrics(self.read())
        with self._lock:
            self._seq = 0
            self._publish("NBIRTH", [Metric("bdSeq", INT64, self.bdseq), Metric(REBIRTH, BOOLEAN, False),
                                     Metric("Properties/linewatch version", STRING, __version__)])
            self._publish("DBIRTH", metrics, DEVICE)
            self._last = {m.name: m.value for m in metrics}
            self._connected = True
        logger.info("sparkplug: born as %s/%s/%s (bdSeq %d)", self.group, self.node, DEVICE, self.bdseq)

    def tick(self) -> None:
        """DDATA with the metrics that changed since the last message (none changed, nothing sent)."""
        metrics = device_metrics(self.read())
        with self._lock:
            if not self._connected:
                return
            changed = [m for m in metrics if m.name not in self._last or self._last[m.name] != m.value]
            if changed:
                self._publish("DDATA", changed, DEVICE)
                self._last.update({m.name: m.value for m in changed})

    def _on_state(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """The primary host's STATE: online, the births (once); offline, NDEATH and a new session."""
        try:
            state = json.loads(msg.payload)
            online, timestamp = state["online"], state["timestamp"]
            if not isinstance(online, bool) or not isinstance(timestamp, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._bad_states += 1
            if self._bad_states == 1:
                logger.warning('sparkplug: %s is not {"online": true|false, "timestamp": ms}: ignored (logged once)',
                               msg.topic)
            return
        if timestamp < self._host_seen:
            return
        self._host_seen = timestamp
        if online and not self._connected:
            self._birth()
        elif not online and self._connected:
            with self._lock:
                self._connected = False
                client.publish(topic(self.group, "NDEATH", self.node), self._death(), qos=1)
            logger.warning("sparkplug: primary host %s is offline: NDEATH sent; a new session waits for it", self.host)
            self._walk.set()

    def _new_session(self) -> None:
        """Leave the broker and connect again (from this node's thread: paho's own ends with the session)."""
        self._walk.clear()
        self.client.disconnect()
        self.client.loop_stop()  # when it returns, the next session's bdSeq and will are set (_on_disconnect)
        broker = parse_broker(self.mqtt_cfg.broker)
        self.client.connect_async(broker.host, broker.port, keepalive=self.mqtt_cfg.keepalive)
        self.client.loop_start()

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.interval_s):
            if self._walk.is_set():
                self._new_session()
                continue
            try:
                self.tick()
            except Exception:  # a reading that fails is logged; the node keeps its session
                logger.exception("sparkplug: could not publish the device's metrics")

    def _on_command(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """NCMD: ``Node Control/Rebirth`` true sends the births again; anything else is refused, counted, logged
        once."""
        try:
            command = decode(bytes(msg.payload))
        except ValueError as exc:
            command = {"metrics": {}}
            reason = str(exc)
        else:
            reason = "no Node Control/Rebirth = true in it"
        if command["metrics"].get(REBIRTH) is True:
            self._birth()
            return
        self.refused_commands += 1
        if self.refused_commands == 1:
            logger.warning("sparkplug: NCMD refused (%s); further refusals are counted, not logged", reason)

    def stop(self) -> None:
        """NDEATH before leaving (a clean disconnect sends no will), then disconnect."""
        self._stop.set()
        self._thread.join(5)
        with self._lock:
            if self._connected:
                self.client.publish(topic(self.group, "NDEATH", self.node), self._death(), qos=1).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
