"""What subscribers see: retained status with a last will, and payloads that match docs/schemas."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from edge.broker import EmbeddedBroker
from tests.conftest import ENV, ROOT, TrainedModel, linewatch
from tests.mqtt_helpers import Collector

SCHEMAS = ROOT / "docs" / "schemas"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def _daemon(trained: TrainedModel, broker, device: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--model", str(trained.model), "--source", "conveyor:1",
         "--fps", "20", "--device-id", device, "--broker", broker.url],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _retained_state(broker, device: str) -> str:
    """What a subscriber that joins now is told first: the retained status."""
    late = Collector(broker.url, f"linewatch/{device}/status")
    try:
        assert late.wait_for(lambda s: bool(s.messages), timeout=10)
        assert late.messages[0].retain
        return late.messages[0].payload["state"]
    finally:
        late.close()


def test_status_is_online_while_running_and_stopped_after_sigterm(trained: TrainedModel, broker) -> None:
    sub = Collector(broker.url, "linewatch/st-term/#")
    proc = _daemon(trained, broker, "st-term")
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 5, timeout=60), proc.stderr
        assert _retained_state(broker, "st-term") == "online"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        sub.close()
    assert _retained_state(broker, "st-term") == "stopped"


def test_last_will_says_offline_after_kill_9(trained: TrainedModel, broker) -> None:
    sub = Collector(broker.url, "linewatch/st-kill/status")
    proc = _daemon(trained, broker, "st-kill")
    try:
        assert sub.wait_for(lambda s: any(p["state"] == "online" for p in s.on("/status")), timeout=60)
        proc.kill()
        proc.wait(10)
        assert sub.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline", timeout=20)
    finally:
        sub.close()
    assert _retained_state(broker, "st-kill") == "offline"


@pytest.mark.parametrize("topic", ["result", "status"])
def test_payloads_match_their_schema(trained: TrainedModel, broker, topic: str) -> None:
    sub = Collector(broker.url, "linewatch/schema/#")
    try:
        linewatch("run", "--model", str(trained.model), "--source", str(trained.holdout / "scratch"),
                  "--device-id", "schema", "--broker", broker.url, "--once")
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 12 and len(s.on("/status")) >= 2, timeout=20)
        payloads = sub.on(f"/{topic}")
    finally:
        sub.close()
    for payload in payloads:
        jsonschema.validate(payload, _schema(topic))
    if topic == "status":
        assert [p["state"] for p in payloads][-2:] == ["online", "stopped"]
    else:
        assert all(p["defect"] for p in payloads if p["label"] == "scratch")
        assert all(len(p["top"]) == 3 for p in payloads)


def test_embedded_broker_carries_the_demo_where_mosquitto_is_missing(trained: TrainedModel) -> None:
    """``make demo`` falls back to amqtt (MQTT 3.1.1) on machines without mosquitto."""
    embedded = EmbeddedBroker()
    embedded.start()
    sub = Collector(embedded.url, "linewatch/embedded/#", protocol=mqtt.MQTTv311)
    try:
        linewatch("run", "--model", str(trained.model), "--source", str(trained.holdout / "ok"), "--device-id",
                  "embedded", "--broker", embedded.url, "--protocol", embedded.protocol, "--once")
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 12, timeout=20)
    finally:
        sub.close()
        embedded.stop()
    assert [r["seq"] for r in sub.on("/result")] == list(range(1, 13))
