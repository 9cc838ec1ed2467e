"""Commands on ``<prefix>/<device_id>/cmd/<name>``: one handler per command, one reply per message.

Only the device's own ``cmd/+`` is subscribed, so another device's commands never reach
here. A payload must be a JSON object (an optional ``"id"`` is echoed); a malformed or
unknown command gets an error reply and changes nothing (so does one too large or nested too
deeply to parse, and one whose handler fails); a retained command is ignored, as it would replay on
every restart. No command can stop the daemon.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt

from linewatch.edge.comms.payloads import Reply
from linewatch.edge.device.events import EventTracker
from linewatch.edge.device.results import ResultSink
from linewatch.edge.model.engine import Engine

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Any]
MAX_COMMAND_BYTES = 16 * 1024  # OTA chunks travel on cmd/ota/chunk/..., not through here


class CommandRouter:
    """Parses a command message, runs its handler, and hands the reply to ``reply(request, payload)``."""

    def __init__(self, device_id: str, handlers: Mapping[str, Handler],
                 reply: Callable[[mqtt.MQTTMessage, bytes], None]) -> None:
        self.device_id = device_id
        self.handlers = handlers
        self.reply = reply

    def __call__(self, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            return
        name = msg.topic.rsplit("/", 1)[-1]
        request_id = None
        try:
            if len(msg.payload) > MAX_COMMAND_BYTES:  # not parsed at all: a command is a small JSON object
                raise ValueError(f"the payload is {len(msg.payload)} bytes, more than a command takes "
                                 f"({MAX_COMMAND_BYTES})")
            body = json.loads(msg.payload) if msg.payload.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("the payload must be a JSON object")
            request_id = body.get("id")
            if isinstance(request_id, bool) or not isinstance(request_id, (str, int, float, type(None))):
                request_id = None
                raise ValueError('"id" must be a string or a number')
            if name not in self.handlers:
                raise ValueError(f"unknown command '{name}': use one of {', '.join(self.handlers)}")
            answer = Reply(device_id=self.device_id, command=name, id=request_id, ok=True,
                           result=self.handlers[name](body))
        except RecursionError:  # JSON nested deeper than Python parses
            answer = self._refuse(name, None, "the payload is nested too deeply")
        except (ValueError, KeyError, TypeError) as exc:
            answer = self._refuse(name, request_id, f"unknown key {exc}" if isinstance(exc, KeyError) else str(exc))
        except Exception:  # a bug in a handler: logged with its traceback, answered, and the device goes on
            logger.exception("command %s failed", name)
            answer = self._refuse(name, request_id, "internal error: see the device's log")
        try:
            payload = answer.encode()
        except ValueError:  # a handler's result that cannot be put into JSON: a bug, answered all the same
            logger.exception("command %s: the reply cannot be encoded", name)
            payload = self._refuse(name, request_id, "internal error: see the device's log").encode()
        self.reply(msg, payload)

    def _refuse(self, name: str, request_id: str | int | float | None, error: str) -> Reply:
        return Reply(device_id=self.device_id, command=name, id=request_id, ok=False, error=error)


def anomaly_threshold(value: float) -> float:
    """``value`` if it can be an anomaly model's threshold: a finite anomaly score above 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"an anomaly threshold is an anomaly score above 0 (1.0 = the one set at training), "
                         f"not {value}")
    return value


def apply_threshold(engine: Engine, tracker: EventTracker, label: str, value: float) -> None:
    """Set an event threshold: a class's score (0..1), or an anomaly model's ``anomaly`` score (above 0).

    An anomaly model scores a frame 0.5 where its anomaly score meets the threshold, so that
    threshold is the engine's, and its events keep 0.5.
    """
    if engine.task == "anomaly" and label == "anomaly":
        engine.anomaly_threshold = anomaly_threshold(value)
        return
    if not 0 < value <= 1:
        raise ValueError(f"the threshold of '{label}' is a score in 0..1")
    try:
        tracker.set_threshold(label, value)
    except KeyError:
        raise ValueError(f"class '{label}' is not one of {', '.join(tracker.labels)}") from None


class DeviceCommands:
    """The handlers: pause, resume, snapshot, threshold, reload (``ota`` and ``rollback`` are the updater's)."""

    def __init__(self, paused: threading.Event, sink: ResultSink, set_threshold: Callable[[str, float], None],
                 reload: Callable[[], list[str]]) -> None:
        self.paused = paused
        self.sink = sink
        self._set_threshold = set_threshold
        self._reload = reload

    def handlers(self) -> dict[str, Handler]:
        return {"pause": self.pause, "resume": self.resume, "snapshot": self.snapshot,
                "threshold": self.threshold, "reload": self.reload}

    def pause(self, body: dict[str, Any]) -> None:
        """Stop publishing results and events; frames are still read."""
        self.paused.set()

    def resume(self, body: dict[str, Any]) -> None:
        self.paused.clear()

    def snapshot(self, body: dict[str, Any]) -> dict[str, Any]:
        """Publish the current frame now."""
        latest = self.sink.latest
        if latest is None:
            raise ValueError("no frame yet")
        name = f"manual-{int(time.time() * 1000)}.jpg"
        self.sink.publish_snapshot(latest, name)
        return {"snapshot": name, "frame_id": latest.frame.id, "label": latest.prediction.label}

    def threshold(self, body: dict[str, Any]) -> dict[str, Any]:
        """A class's event threshold (0..1), or with an anomaly model ``"class": "anomaly"``, its score threshold."""
        label, value = body.get("class"), body.get("value")
        if not isinstance(label, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError('threshold needs {"class": NAME, "value": NUMBER}')
        self._set_threshold(label, float(value))
        return {"class": label, "value": float(value)}

    def reload(self, body: dict[str, Any]) -> dict[str, Any]:
        """Re-read the config file (result mode, event thresholds, stats interval) and the model file."""
        return {"reloaded": self._reload()}
