"""The device daemon: a frame source, the int8 engine and the MQTT contract, wired together.

Each part has one job: the ``Pipeline`` classifies frames, the ``ResultSink`` turns them into
results, events and snapshots, the ``CommandRouter`` answers ``cmd/<name>``, the
``StatsReporter`` publishes ``stats``, and the ``DevicePublisher`` owns MQTT (the spool,
status, replies). Topics and payloads: docs/mqtt.md and docs/schemas/.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from linewatch.edge.comms.homeassistant import discovery_messages
from linewatch.edge.comms.mqtt import Credentials, parse_broker
from linewatch.edge.comms.payloads import PartVerdict, ShadowState, rfc3339
from linewatch.edge.comms.payloads import Shadow as ShadowMessage
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.comms.spool import Spool
from linewatch.edge.device import config as config_module
from linewatch.edge.device.archive import JpegArchive
from linewatch.edge.device.commands import CommandRouter, DeviceCommands, anomaly_threshold, apply_threshold
from linewatch.edge.device.config import (
    Config,
    HttpSection,
    LineSection,
    ModbusSection,
    MqttSection,
    OpcUaSection,
    Rotation,
    SparkplugSection,
)
from linewatch.edge.device.line import LATENCY_MARGIN_MS, LineController, Part, decision_latency_ms
from linewatch.edge.device.metrics import Metrics
from linewatch.edge.device.ota import ModelUpdater, candidate_path
from linewatch.edge.device.pipeline import Pipeline
from linewatch.edge.device.plc.handshake import Handshake
from linewatch.edge.device.results import ResultSink
from linewatch.edge.device.samples import Sampler
from linewatch.edge.device.setup import SetupView
from linewatch.edge.device.shadow import ShadowRun
from linewatch.edge.device.sources import Source, open_source
from linewatch.edge.device.state import StateReporter
from linewatch.edge.device.stats import StatsReporter
from linewatch.edge.device.system import max_rss_mb
from linewatch.edge.device.systemd import ServiceNotifier
from linewatch.edge.device.view import DeviceReader
from linewatch.edge.device.web import SetupServer
from linewatch.edge.errors import BrokerError, LinewatchError, ModelError, UsageError
from linewatch.edge.files import write_atomic
from linewatch.edge.http import page_token
from linewatch.edge.model import artifact, signing
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import Engine

if TYPE_CHECKING:  # imported where they are turned on: asyncua alone takes longer to import than the daemon
    from linewatch.edge.device.plc.modbus import ModbusServer
    from linewatch.edge.device.plc.opcua import OpcUaServer
    from linewatch.edge.device.sparkplug import SparkplugNode

logger = logging.getLogger(__name__)

MB = 2**20


def make_engine(cfg: Config, model: ModelArtifact, threads: int | None = None) -> Engine:
    """An engine for ``model``, at start, for every update, a shadow (``threads``: its own) and ``linewatch check``;
    the device runs full-integer models only, and only models that can call a part good."""
    model.require_good_outcome()
    engine = Engine(model, threads or cfg.model.threads or None, cfg.model.delegate, cfg.model.cpu_fallback)
    if not engine.integer:
        raise ModelError(f"{model.path} is a float model: the device runs full-integer (int8) models, make one "
                         "with 'linewatch convert'")
    override = cfg.events.thresholds.get("anomaly")
    if engine.task == "anomaly" and override is not None:
        try:
            engine.anomaly_threshold = anomaly_threshold(override)
        except ValueError as exc:
            raise UsageError(f"events.thresholds.anomaly: {exc}") from None
    return engine


class Daemon:
    """One running device. ``run()`` returns the exit summary.

    Built by short ``init_*`` steps in the order the parts depend on each other; each step hands a
    part its own config section and, by keyword, the few collaborators it needs. The setup page
    and the metrics get a ``DeviceReader``, never the daemon.
    """

    def __init__(self, cfg: Config, config_path: Path | None = None, overrides: dict[str, Any] | None = None,
                 once: bool = False, max_frames: int | None = None, source: Source | None = None) -> None:
        """``source`` replaces the configured one (the line demo's simulated conveyor and photo-eye)."""
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides or {}
        self.once = once
        self.state_dir = Path(cfg.state_dir)
        self.model = artifact.load(cfg.model.path, cfg.model.labels)
        self.engine = make_engine(cfg, self.model)
        self.source = source or open_source(cfg.source.spec, fps=cfg.source.fps, loop=cfg.source.loop,
                                            camera_size=cfg.source.camera_size)
        self.paused = threading.Event()
        self.stop_event = threading.Event()
        self.refusal: str | None = None
        self.interrupted = False
        self._finished = False  # the pipeline ended; the daemon only waits now
        self.init_publisher(cfg.mqtt)
        self.state = StateReporter(cfg.device_id, self.publisher)
        self.line = self.init_line(cfg.line) if cfg.line.mode != "free" else None
        self.handshake = self.init_handshake() if cfg.modbus.listen or cfg.opcua.listen else None
        self.modbus: ModbusServer | None = self.init_modbus(cfg.modbus) if cfg.modbus.listen else None
        self.opcua: OpcUaServer | None = self.init_opcua(cfg.opcua) if cfg.opcua.listen else None
        self.init_sink()
        self.pipeline = Pipeline(self.source, self.engine, self.sink, max_frames=max_frames, roi=cfg.source.roi,
                                 rotate=cfg.source.rotate)
        self.read = DeviceReader(device_id=cfg.device_id, pipeline=self.pipeline, sink=self.sink,
                                 publisher=self.publisher, paused=self.paused, line=self.line)
        self.metrics = Metrics(cfg.device_id, self.read)
        self.sparkplug = self.init_sparkplug(cfg.sparkplug) if cfg.sparkplug.enabled else None
        if self.line is not None:
            self.line.on_decision = self.metrics.decision.observe
        self.updater = ModelUpdater(Path(cfg.model.path), self.state_dir / "ota", install=self.install,
                                    make_engine=functools.partial(make_engine, cfg),
                                    reference_frames=lambda: list(self.sink.reference),
                                    public_key=signing.load_public(Path(cfg.ota.public_key)) if cfg.ota.public_key
                                    else None, max_bytes=int(cfg.ota.max_mb * MB), shadow=self.start_shadow,
                                    shadow_failed=self._shadow_failed)
        self.shadow: ShadowRun | None = None
        if candidate_path(Path(cfg.model.path)).is_file():
            logger.warning("a candidate left in shadow by the last run was dropped: deploy it again with --shadow")
            self.updater.discard()
        self.init_commands()
        self.stats = StatsReporter(cfg.device_id, self.publisher, self.paused,
                                   interval=lambda: self.cfg.stats.interval_s,
                                   line=self.line.counters.as_dict if self.line else None,
                                   samples=self.sampler.stats if self.sampler else None,
                                   on_tick=self._publish_shadow,
                                   on_fps=lambda fps: self.state.update(fps=fps))
        self.notifier = ServiceNotifier(self._last_progress, self._status_line)
        self.sink.on_first_result = self.notifier.ready
        self.status_file = self.state_dir / f"status-{cfg.device_id}.json"
        self.publisher.on_state(self._on_broker_state)
        self.web = self.init_setup_page(cfg.http) if cfg.http.listen else None
        if cfg.metrics.listen:
            self.init_metrics_listener(cfg.metrics.listen)

    def init_publisher(self, mqtt_cfg: MqttSection) -> None:
        """The spool in ``state_dir`` and the MQTT side that drains it."""
        try:
            self.spool = Spool(self.state_dir / f"spool-{self.cfg.device_id}.sqlite", self.cfg.spool.max_entries,
                               self.cfg.spool.max_mb)
        except OSError as exc:
            raise UsageError(f"state_dir {self.state_dir}: {exc}") from None
        for warning in config_module.check_files(mqtt_cfg):
            logger.warning(warning)
        self.credentials = credentials = Credentials(
            mqtt_cfg.username, config_module.read_password(mqtt_cfg.password_file), mqtt_cfg.ca_file,
            mqtt_cfg.cert_file, mqtt_cfg.key_file)
        self.publisher = DevicePublisher(
            parse_broker(mqtt_cfg.broker), self.cfg.device_id, self.spool, prefix=mqtt_cfg.prefix,
            protocol=mqtt_cfg.protocol, credentials=credentials, keepalive=mqtt_cfg.keepalive,
            model=(self.model.name, self.model.version, self.model.sha256), reconnect_max_s=mqtt_cfg.reconnect_max_s,
            insecure=mqtt_cfg.insecure)

    def init_line(self, line: LineSection) -> LineController:
        """Line I/O, refused at start (exit 2) when the reject would come before the daemon can decide."""
        needed = decision_latency_ms(self.engine, self.cfg.source.fps) + line.capture_offset_ms + line.window_ms / 2
        if line.reject_delay_ms < needed + LATENCY_MARGIN_MS:
            raise UsageError(f"line.reject_delay_ms {line.reject_delay_ms:g} is shorter than this device needs to "
                             f"decide ({needed:.0f} ms measured, plus {LATENCY_MARGIN_MS} ms margin): move the reject "
                             "gate further down the line, or shorten line.window_ms")
        return LineController(line, publish=self.publisher.spool_message, device_id=self.cfg.device_id,
                              spool_writable=self.spool.writable, on_part=self.state.update)

    def init_handshake(self) -> Handshake:
        """The PLC's handshake on the line's parts, for every protocol that serves it."""
        line = self.line
        assert line is not None  # the config refuses a PLC without parts

        def verdict(part: Part, verdict: PartVerdict) -> None:
            result = part.result
            prediction = result.prediction if result is not None else None
            handshake.verdict(part.external_id, verdict, prediction.index if prediction else None,
                              prediction.score if prediction else None,
                              prediction.anomaly_score if prediction else None,
                              part.decided_mono - part.trigger_mono if part.decided_mono is not None else None)

        handshake = Handshake(lambda external_id: line.trigger(external_id, debounce=False), line.counters.as_dict,
                              lambda: self.model.sha256, clock=line.clock)
        line.on_verdict, line.on_check = verdict, handshake.beat
        return handshake

    def init_sparkplug(self, sparkplug: SparkplugSection) -> SparkplugNode:
        """The Sparkplug B edge node, on a connection of its own: it reads what the setup page reads."""
        from linewatch.edge.device.sparkplug import SparkplugNode

        return SparkplugNode(sparkplug, self.cfg.mqtt, self.cfg.device_id, self.credentials, self.read,
                             self.state_dir)

    def init_modbus(self, modbus: ModbusSection) -> ModbusServer:
        """Modbus TCP, listening now: a port in use is a one-line error at start."""
        from linewatch.edge.device.plc.modbus import ModbusServer
        assert self.handshake is not None and modbus.listen
        server = ModbusServer(self.handshake, *config_module.parse_listen(modbus.listen), unit_id=modbus.unit_id,
                              allow=modbus.allow)
        server.start()
        return server

    def init_opcua(self, opcua: OpcUaSection) -> OpcUaServer:
        """OPC UA, listening now; the server's certificate kept, or made when install did not make it."""
        from linewatch.edge.device.plc.opcua import OpcUaServer

        assert self.handshake is not None and opcua.listen
        password = config_module.read_password(opcua.password_file, env=config_module.OPCUA_PASSWORD_ENV,
                                               whose="OPC UA")
        if opcua.username and not password:
            raise UsageError(f"opcua.username {opcua.username} has no password: put it in opcua.password_file or "
                             f"{config_module.OPCUA_PASSWORD_ENV}")
        server = OpcUaServer(self.handshake, *config_module.parse_listen(opcua.listen), device_id=self.cfg.device_id,
                             state_dir=self.state_dir, username=opcua.username, password=password,
                             anonymous=opcua.anonymous, insecure=opcua.insecure, cert_file=opcua.cert_file,
                             key_file=opcua.key_file, trust_dir=opcua.trust_dir)
        server.start()
        return server

    def init_sink(self) -> None:
        """Results, events and snapshots; the frames kept for review, and those sent to be labelled."""
        cfg = self.cfg
        self.sampler = Sampler(cfg.samples, self.state_dir / "samples", cfg.device_id, self.publisher, cfg.source) \
            if cfg.samples.enabled else None
        review = JpegArchive(Path(cfg.review.dir), int(cfg.review.quota_mb * MB)) if cfg.review.dir else None
        snapshots = JpegArchive(self.state_dir / "snapshots", int(cfg.events.snapshot_quota_mb * MB)) \
            if cfg.events.snapshots else None
        self.archives = [archive for archive in (review, snapshots) if archive is not None]
        self.review = review
        self.sink = ResultSink(self.model, device_id=cfg.device_id, results=cfg.results, events=cfg.events,
                               review=cfg.review, source=cfg.source, publisher=self.publisher, paused=self.paused,
                               snapshots=snapshots, review_archive=review, sampler=self.sampler,
                               on_result=self.line.on_result if self.line else None, on_events=self.state.update)

    def init_commands(self) -> None:
        """``cmd/<name>`` for this device's id only: the built-in commands, OTA when enabled, triggers for a line."""
        handlers = DeviceCommands(self.paused, self.sink, self.set_threshold, self.reload).handlers()
        if self.cfg.ota.enabled:
            handlers |= {"ota": self.updater.ota, "rollback": self.updater.rollback, "shadow": self.shadow_command}
        if self.sampler is not None:
            handlers["samples"] = self.sampler.ack
        if self.line is not None and self.cfg.line.mode == "mqtt":
            handlers["trigger"] = self._trigger
        self.commands = CommandRouter(self.cfg.device_id, handlers, self.publisher.reply)

    def init_setup_page(self, http: HttpSection) -> SetupServer:
        """The setup page's server, bound now so that a port in use is a one-line error at start (exit 2)."""
        host, port = config_module.parse_listen(http.listen or "")
        view = SetupView(read=self.read, apply_view=self.apply_view, state_dir=self.state_dir,
                         save_dir=Path(self.cfg.review.dir) if self.cfg.review.dir else self.state_dir / "collected",
                         sampler=self.sampler,
                         metrics=self.metrics.text, overridden=self.overrides.keys())
        try:
            token = page_token(http.token, self.state_dir, "setup page")
            return SetupServer(view, host, port, token, http.fps, http.cert_file, http.key_file)
        except OSError as exc:
            raise UsageError(f"http.listen {http.listen}: {exc.strerror or exc} (another program on that port? "
                             "choose another, or check http.cert_file and http.key_file)") from None

    def init_metrics_listener(self, listen: str) -> None:
        """Prometheus on an address of its own, bound now: a port in use is a one-line error at start."""
        try:
            self.metrics.serve(*config_module.parse_listen(listen))
        except OSError as exc:
            raise UsageError(f"metrics.listen {listen}: {exc.strerror or exc}") from None

    def apply_view(self, roi: tuple[float, float, float, float] | None, rotate: Rotation) -> None:
        """The setup page's region of interest and rotation, from the next frame on."""
        self.cfg.source.roi, self.cfg.source.rotate = roi, rotate  # validated by the config model
        self.pipeline.roi, self.pipeline.rotate = roi, rotate

    def _trigger(self, body: dict[str, Any]) -> dict[str, Any]:
        """``cmd/trigger``: a part is in front of the camera now, with an optional id of the PLC's."""
        part = body.get("part")
        if isinstance(part, bool) or not isinstance(part, (str, int, type(None))):
            raise ValueError('"part" is the PLC\'s id for the part: a string or a number')
        assert self.line is not None
        return self.line.trigger(None if part is None else str(part))

    def set_threshold(self, label: str, value: float) -> None:
        """An event threshold, live (``cmd/threshold``, reload): see ``commands.apply_threshold``."""
        apply_threshold(self.pipeline.engine, self.sink.tracker, label, value)

    def install(self, model: ModelArtifact, engine: Engine) -> None:
        """Put a checked model to work: the pipeline takes the new engine between two frames."""
        self.model, self.engine = model, engine
        self.pipeline.engine = engine
        self.publisher.set_model(model.name, model.version, model.sha256)
        if self.cfg.homeassistant.discovery:
            self._announce()
        logger.info("now classifying with %s %s (sha256 %s…)", model.name, model.version, model.sha256[:12])

    def start_shadow(self, model: ModelArtifact, engine: Engine) -> None:
        """A checked candidate runs beside the current model (a new one replaces the one in shadow)."""
        if self.shadow is not None:
            self._end_shadow("aborted", "replaced by another candidate")
        run = ShadowRun(self.cfg.device_id, model, engine, self.cfg.source,
                        current_latency_ms=lambda: self.pipeline.stats.percentile("invoke", 50), sampler=self.sampler)
        run.start()
        self.shadow = self.sink.shadow = run

    def shadow_command(self, body: dict[str, Any]) -> dict[str, Any]:
        """``cmd/shadow``: ``{"action": "status" | "promote" | "abort", "reason": why}``; promote and abort end it."""
        action, reason = body.get("action", "status"), body.get("reason")
        if action not in ("status", "promote", "abort") or not isinstance(reason, (str, type(None))):
            raise ValueError('shadow takes {"action": "status", "promote" or "abort", "reason": TEXT}')
        if self.shadow is None:
            raise ValueError("no candidate runs in shadow: deploy one with --shadow")
        if action == "status":
            return self.shadow.message(self.model).model_dump(by_alias=True)
        if action == "abort":
            self.updater.discard()
            return self._end_shadow("aborted", reason or "aborted by command").model_dump(by_alias=True)
        final = self._end_shadow("promoted", reason or "promoted by command", publish=False)
        try:
            installed = self.updater.promote()
        except ValueError as exc:
            self.updater.discard()
            failed = final.model_copy(update={"state": "failed", "reason": f"not promoted: {exc}"})
            self.publisher.publish_now(self.publisher.topic("shadow"), failed.encode(), qos=1)
            raise
        self.publisher.publish_now(self.publisher.topic("shadow"), final.encode(), qos=1)
        return {**final.model_dump(by_alias=True), "installed": installed}

    def _end_shadow(self, state: ShadowState, reason: str, publish: bool = True) -> ShadowMessage:
        run, self.shadow, self.sink.shadow = self.shadow, None, None
        assert run is not None
        run.stop()
        final = run.message(self.model, state, reason)
        logger.info("shadow %s: %s (%d frames, agreement %s)", state, reason, final.frames, final.agreement)
        if publish:
            self.publisher.publish_now(self.publisher.topic("shadow"), final.encode(), qos=1)
        return final

    def _shadow_failed(self, reason: str) -> None:
        logger.warning("shadow: the candidate was refused (%s); the current model goes on", reason)
        self.publisher.publish_now(self.publisher.topic("shadow"),
                                   ShadowRun.failed(self.cfg.device_id, self.model, reason).encode(), qos=1)

    def _publish_shadow(self) -> None:
        """Every stats interval while a candidate runs in shadow."""
        run = self.shadow
        if run is not None:
            self.publisher.publish_now(self.publisher.topic("shadow"), run.message(self.model).encode(), qos=1)

    def _last_progress(self) -> float:
        return time.monotonic() if self._finished else self.pipeline.stats.last_progress

    def _status_line(self) -> str:
        """What ``systemctl status`` shows."""
        stats = self.pipeline.stats
        return (f"{stats.frames} frames, source {stats.source_state}, broker {self.publisher.state}, "
                f"{self.spool.backlog()} waiting in the spool")

    def _on_broker_state(self, state: str, detail: str) -> None:
        """Keep a status file for people and tools on the device; a refusal ends the run (exit 6)."""
        record = {"device_id": self.cfg.device_id, "broker": state, "detail": detail, "address": self.publisher.address,
                  "ts": rfc3339(time.time()), "model": self.model.name, "version": self.model.version}
        try:
            write_atomic(self.status_file, json.dumps(record) + "\n")
        except OSError as exc:
            logger.warning("cannot write %s: %s", self.status_file, exc.strerror)
        if state == "refused":
            self.refusal = detail
            self.stop_event.set()

    def reload(self) -> list[str]:
        """Re-read the config file and the model file; what can change without a restart takes effect.

        Results, event thresholds and the stats interval follow the file; a model file that changed
        on disk is checked like an over-the-air update and put to work. The rest needs a restart.
        """
        if self.config_path is None:
            raise ValueError("started without --config: nothing to reload")
        self.notifier.reloading()
        try:
            return self._reload(self.config_path)
        finally:
            self.notifier.reloaded()

    def _reload(self, path: Path) -> list[str]:
        try:
            fresh = config_module.load_run(path, self.overrides)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        self.cfg.results, self.cfg.stats = fresh.results, fresh.stats
        self.sink.results = fresh.results
        self.cfg.events.thresholds = fresh.events.thresholds
        self.stats.reschedule()
        for label, value in fresh.events.thresholds.items():
            self.set_threshold(label, value)
        reloaded = ["results", "events.thresholds", "stats"]
        model_path = Path(self.cfg.model.path)
        try:
            changed = artifact.load(model_path).sha256 != self.model.sha256
        except LinewatchError as exc:
            raise ValueError(f"the configuration was reloaded, the model was not: {exc}") from None
        if changed:
            self.install(*self.updater.checked(model_path))
            reloaded.append("model")
        return reloaded

    def _announce(self) -> None:
        """Home Assistant discovery: retained, again on every reconnect and whenever HA comes online."""
        ha = self.cfg.homeassistant
        anomaly = self.model.card.task == "anomaly"
        for topic, payload in discovery_messages(ha.prefix, self.cfg.device_id, self.publisher.topic, anomaly,
                                                 self.line is not None):
            self.publisher.publish_now(topic, payload, qos=1, retain=True)

    def _on_ha_status(self, msg: mqtt.MQTTMessage) -> None:
        if msg.payload.strip() == b"online":
            self._announce()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:  # reload in a thread of its own: a signal handler must not block
            threading.Thread(target=self._reload_logged, name="reload", daemon=True).start()
            return
        self.interrupted = self.interrupted or signum == signal.SIGINT
        self.stop_event.set()

    def _reload_logged(self) -> None:
        try:
            logger.info("SIGHUP: reloaded %s", ", ".join(self.reload()))
        except ValueError as exc:
            logger.error("SIGHUP: the configuration was not reloaded: %s", exc)

    def run(self) -> dict[str, Any]:
        """Run until the source ends (with ``once``: and all is delivered), ``max_frames`` are done, or a signal.

        The broker is not waited for: inspection and spooling start at once. SIGTERM stops cleanly,
        SIGINT too (the CLI then exits 130), SIGHUP reloads the configuration.
        """
        self.publisher.subscribe(self.publisher.topic("cmd/+"), self.commands)
        if self.cfg.ota.enabled:
            self.publisher.subscribe(self.publisher.topic("cmd/ota/chunk/+/+"),
                                     lambda msg: self.updater.chunk(msg.topic, bytes(msg.payload)))
        if self.cfg.homeassistant.discovery:
            self.publisher.subscribe(f"{self.cfg.homeassistant.prefix}/status", self._on_ha_status)
            self.publisher.on_connect(self._announce)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.publisher.start()
        logger.info("classifying %s with %s (%d threads)", self.source.name, self.model.path, self.engine.num_threads)
        self.stats.start(self.pipeline.stats)
        self.state.start()
        if self.sampler is not None:
            self.sampler.start()
        if self.web is not None:
            self.web.start()
        if self.sparkplug is not None:
            self.sparkplug.start()
        if self.line is not None:
            # A thread waiting for the GIL may wait a whole switch interval (5 ms by default) behind the
            # pipeline's Python: a reject pulse must not. Half a millisecond costs the pipeline little.
            sys.setswitchinterval(0.0005)
            self.line.start()
        first = time.monotonic()
        try:
            stats = self.pipeline.run(self.stop_event)
            elapsed = time.monotonic() - first
            self._finished = True
            if self.line is not None:
                self.line.stop()  # no more frames: parts in transit are rejected at their deadlines, then spooled
            # --max-frames: done when they are, though the source may have ended while they were classified
            counted = stats.frames >= (self.pipeline.max_frames or float("inf"))
            if self.pipeline.exhausted and self.once:
                while self.spool.backlog() and not self.stop_event.wait(0.1):
                    pass  # --once: exit when the broker has acknowledged everything
            elif self.pipeline.exhausted and not counted:
                logger.info("source %s ended; waiting for SIGTERM (use --once to exit at the end)", self.source.name)
                self.stop_event.wait()
        finally:
            self.stop_event.set()
            self.notifier.stopping()
            if self.web is not None:
                self.web.stop()
            for server in (self.modbus, self.opcua, self.sparkplug):
                if server is not None:
                    server.stop()
            if self.line is not None:
                self.line.stop()  # parts in transit are rejected at their deadlines, and their messages spooled
            self.stats.stop()
            self.state.stop()
            if self.shadow is not None:
                self.shadow.stop()
            self.publisher.stop()
            if self.sampler is not None:
                self.sampler.close()
            for archive in self.archives:
                archive.close()
            spool_dropped = self.spool.dropped()
            self.spool.close()
        if self.refusal is not None:
            raise BrokerError(f"the MQTT broker at {self.publisher.address} refused us ({self.refusal}): check the "
                              "user name, password and the broker's ACLs")
        return {
            "frames": stats.frames, "dropped": stats.dropped, "seconds": round(elapsed, 3),
            "fps": round(stats.frames / elapsed, 2) if elapsed > 0 else 0.0,
            "acknowledged": self.publisher.acked, "spool_dropped": spool_dropped,
            "cold_start_s": round(self.sink.cold_start_s, 3),
            "max_rss_mb": max_rss_mb(), "review_saved": self.review.saved if self.review else 0,
            "interrupted": self.interrupted,
        }
