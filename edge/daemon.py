"""The device daemon: a frame source, the int8 engine and the MQTT contract, wired together.

Topics under ``<prefix>/<device_id>/`` (payload schemas in docs/schemas/, contract in docs/mqtt.md):
``status`` (retained), ``result`` and ``event`` (QoS 1 through the on-disk spool),
``snapshot`` (JPEG of an event's frame), ``stats`` (every few seconds), and
``cmd/<name>`` with replies on the MQTT 5 response topic or ``cmd/<name>/reply``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge import artifact, config as config_module
from edge.config import Config
from edge.engine import Engine
from edge.errors import UsageError
from edge.events import EventTracker
from edge.homeassistant import discovery_messages, encode
from edge.messages import SCHEMA, event_payload, result_payload, rfc3339
from edge.mqtt import Credentials, DevicePublisher, parse_broker
from edge.pipeline import Pipeline, PipelineStats, Result
from edge.archive import JpegArchive
from edge.sources import open_source
from edge.spool import Spool
from edge.system import cpu_temperature, max_rss_mb, process_age

logger = logging.getLogger(__name__)

COMMANDS = ("pause", "resume", "snapshot", "threshold", "reload")


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class Daemon:
    """One running device. ``run()`` returns the exit summary."""

    def __init__(self, cfg: Config, config_path: Path | None = None, overrides: dict[str, Any] | None = None,
                 once: bool = False, max_frames: int | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides or {}
        self.once = once
        self.max_frames = max_frames
        self.model = artifact.load(cfg.model.path, cfg.model.labels)
        self.engine = Engine(self.model, cfg.model.threads or None, cfg.model.delegate, cfg.model.cpu_fallback)
        self.source = open_source(cfg.source.spec, fps=cfg.source.fps, loop=cfg.source.loop,
                                  camera_size=cfg.source.camera_size)
        state = Path(cfg.state_dir)
        try:
            self.spool = Spool(state / f"spool-{cfg.device_id}.sqlite", cfg.spool.max_entries)
        except OSError as exc:
            raise UsageError(f"state_dir {state}: {exc}") from None
        self.publisher = DevicePublisher(
            parse_broker(cfg.mqtt.broker), cfg.device_id, self.spool, cfg.mqtt.prefix, cfg.mqtt.protocol,
            Credentials(cfg.mqtt.username, config_module.read_password(cfg.mqtt.password_file), cfg.mqtt.ca_file,
                        cfg.mqtt.cert_file, cfg.mqtt.key_file),
            cfg.mqtt.keepalive, status_extra=lambda: {"model": self.model.name, "version": self.model.version})
        card_thresholds = self.model.card.get("thresholds", {})
        self.tracker = EventTracker(self.model.labels, self.model.card.get("good_labels", []),
                                    {**card_thresholds, **cfg.events.thresholds}, cfg.events.k, cfg.events.n)
        self.review = JpegArchive(Path(cfg.review.dir), int(cfg.review.quota_mb * 2**20)) if cfg.review.dir else None
        self.snapshots = JpegArchive(state / "snapshots", int(cfg.events.snapshot_quota_mb * 2**20)) \
            if cfg.events.snapshots else None
        self.paused = threading.Event()
        self.stop_event = threading.Event()
        self.pipeline: Pipeline | None = None
        self.started = time.time()
        self.latest: Result | None = None
        self._last_label: str | None = None
        self._frames_seen = 0
        self.cold_start_s = 0.0

    # --- results and events ------------------------------------------------------------------------

    def _wanted(self, result: Result) -> bool:
        """Whether this frame's result is published, by the configured mode."""
        mode = self.cfg.results.mode
        if mode == "change":
            changed = result.prediction.label != self._last_label
            self._last_label = result.prediction.label
            return changed
        if mode == "sample":
            return (self._frames_seen - 1) % self.cfg.results.sample_every == 0
        return True

    def on_result(self, result: Result) -> None:
        """The pipeline's sink: runs in its publish thread, never in the inference loop."""
        self.latest = result
        if self.paused.is_set():
            return
        self._frames_seen += 1
        if self._frames_seen == 1:
            self.cold_start_s = process_age()
            logger.info("first result %.2f s after the process started", self.cold_start_s)
        cfg = self.cfg
        if self._wanted(result):
            self.publisher.spool_message("result", lambda seq: _json(
                result_payload(result, cfg.device_id, seq, self.model, cfg.results.top_k)))
        scores = dict(zip(self.model.labels, (float(s) for s in result.prediction.scores)))
        for event in self.tracker.update(scores, result.frame.id, result.frame.ts):
            snapshot = None
            if event["type"] == "start" and self.snapshots is not None:
                snapshot = f"{event['event_id']}.jpg"
                self._publish_snapshot(result.frame.image, snapshot)
            self.publisher.spool_message("event", lambda seq, e=event, s=snapshot: _json(
                event_payload(e, cfg.device_id, seq, s)))
        if self.review is not None and result.prediction.score < cfg.review.below:
            p = result.prediction
            self.review.add(f"{p.label}/{time.strftime('%Y%m%dT%H%M%S')}_{result.frame.id:08d}_{p.score:.2f}.jpg",
                            result.frame.image)

    def _publish_snapshot(self, image: np.ndarray, name: str) -> None:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            return
        jpeg = encoded.tobytes()
        self.snapshots.add(name, jpeg)
        self.publisher.spool_message("snapshot", lambda seq: jpeg)

    # --- stats -------------------------------------------------------------------------------------

    def stats_payload(self, stats: PipelineStats, fps: float) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "device_id": self.cfg.device_id, "ts": rfc3339(time.time()),
            "uptime_s": round(time.time() - self.started, 1), "frames": stats.frames, "fps": round(fps, 2),
            "dropped": stats.dropped, "paused": self.paused.is_set(), "source_state": stats.source_state,
            "latency_ms": {s: {"p50": round(stats.percentile(s, 50), 3), "p99": round(stats.percentile(s, 99), 3)}
                           for s in stats.timings_ms},
            "spool": {"backlog": self.spool.backlog(), "dropped": self.spool.dropped()},
            "acknowledged": self.publisher.acked, "cpu_temp_c": cpu_temperature(), "max_rss_mb": max_rss_mb(),
        }

    def _stats_loop(self) -> None:
        last_frames, last_time = 0, time.monotonic()
        while not self.stop_event.wait(self.cfg.stats.interval_s):
            if self.pipeline is None:
                continue
            stats = self.pipeline.stats
            now = time.monotonic()
            fps = (stats.frames - last_frames) / (now - last_time)
            last_frames, last_time = stats.frames, now
            payload = self.stats_payload(stats, fps)
            if payload["spool"]["dropped"]:
                logger.warning("spool full: %d message(s) dropped so far", payload["spool"]["dropped"])
            self.publisher.publish_now(self.publisher.topic("stats"), _json(payload))

    # --- commands ----------------------------------------------------------------------------------

    def on_command(self, msg: mqtt.MQTTMessage) -> None:
        """Handle ``cmd/<name>``; every command gets a reply, and none can stop the daemon."""
        if msg.retain:  # a retained command would replay on every restart: ignore it
            return
        name = msg.topic.rsplit("/", 1)[-1]
        props = getattr(msg, "properties", None)
        request_id = None
        try:
            body = json.loads(msg.payload) if msg.payload.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the payload must be a JSON object")
            request_id = body.get("id")
            if name not in COMMANDS:
                raise ValueError(f"unknown command '{name}': use one of {', '.join(COMMANDS)}")
            result = getattr(self, f"_cmd_{name}")(body)
            reply = {"ok": True, **({"result": result} if result is not None else {})}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": str(exc) if not isinstance(exc, KeyError) else f"unknown key {exc}"}
        reply = {"schema": SCHEMA, "device_id": self.cfg.device_id, "command": name, "id": request_id, **reply}
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        out_props = None
        if props is not None and getattr(props, "CorrelationData", None) is not None:
            out_props = Properties(PacketTypes.PUBLISH)
            out_props.CorrelationData = props.CorrelationData
        self.publisher.publish_now(response_topic or f"{msg.topic}/reply", _json(reply), qos=1,
                                   properties=out_props if self.cfg.mqtt.protocol == "5" else None)

    def _cmd_pause(self, body: dict[str, Any]) -> None:
        self.paused.set()

    def _cmd_resume(self, body: dict[str, Any]) -> None:
        self.paused.clear()

    def _cmd_snapshot(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.latest is None:
            raise ValueError("no frame yet")
        name = f"manual-{int(time.time() * 1000)}.jpg"
        if self.snapshots is None:
            raise ValueError("snapshots are off: set events.snapshots = true")
        self._publish_snapshot(self.latest.frame.image, name)
        return {"snapshot": name, "frame_id": self.latest.frame.id, "label": self.latest.prediction.label}

    def _cmd_threshold(self, body: dict[str, Any]) -> dict[str, Any]:
        label, value = body.get("class"), body.get("value")
        if not isinstance(label, str) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ValueError('threshold needs {"class": NAME, "value": 0..1}')
        try:
            self.tracker.set_threshold(label, float(value))
        except KeyError:
            raise ValueError(f"class '{label}' is not one of {', '.join(self.model.labels)}") from None
        return {"class": label, "value": float(value)}

    def _cmd_reload(self, body: dict[str, Any]) -> dict[str, Any]:
        """Re-read the config file: result mode, event thresholds and stats interval take effect."""
        if self.config_path is None:
            raise ValueError("started without --config: nothing to reload")
        try:
            fresh = config_module.load(self.config_path, self.overrides)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        self.cfg.results, self.cfg.stats = fresh.results, fresh.stats
        for label, value in fresh.events.thresholds.items():
            self.tracker.set_threshold(label, value)
        return {"reloaded": ["results", "events.thresholds", "stats"]}

    # --- Home Assistant ----------------------------------------------------------------------------

    def _announce(self) -> None:
        ha = self.cfg.homeassistant
        for topic, payload in discovery_messages(ha.prefix, self.cfg.device_id, self.publisher.topic,
                                                 self.model.name, self.model.version):
            self.publisher.publish_now(topic, encode(payload), qos=1, retain=True)

    def _on_ha_status(self, msg: mqtt.MQTTMessage) -> None:
        if msg.payload.strip() == b"online":
            self._announce()

    # --- lifecycle ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run until the source ends (with ``once``), ``max_frames`` are done, or SIGTERM/SIGINT."""
        self.publisher.subscribe(self.publisher.topic("cmd/+"), self.on_command)
        if self.cfg.homeassistant.discovery:
            self.publisher.subscribe(f"{self.cfg.homeassistant.prefix}/status", self._on_ha_status)
            self.publisher.on_connect(self._announce)
        self.publisher.start(self.cfg.mqtt.connect_timeout)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        logger.info("classifying %s with %s (%d threads)", self.source.name, self.model.path, self.engine.num_threads)
        self.pipeline = Pipeline(self.source, self.engine, self.on_result, max_frames=self.max_frames,
                                 roi=self.cfg.source.roi, rotate=self.cfg.source.rotate)
        stats_thread = threading.Thread(target=self._stats_loop, name="stats", daemon=True)
        stats_thread.start()
        first = time.monotonic()
        try:
            stats = self.pipeline.run(self.stop_event)
            elapsed = time.monotonic() - first
            if self.pipeline.exhausted and not self.once:
                logger.info("source %s ended; waiting for SIGTERM (use --once to exit at the end)", self.source.name)
                self.stop_event.wait()
        finally:
            self.stop_event.set()
            self.publisher.stop()
            for saver in (self.review, self.snapshots):
                if saver is not None:
                    saver.close()
            self.spool.close()
        return {
            "frames": stats.frames, "dropped": stats.dropped, "seconds": round(elapsed, 3),
            "fps": round(stats.frames / elapsed, 2) if elapsed > 0 else 0.0,
            "acknowledged": self.publisher.acked, "cold_start_s": round(self.cold_start_s, 3),
            "max_rss_mb": max_rss_mb(), "review_saved": self.review.saved if self.review else 0,
        }
