"""What subscribers see: retained status with a last will, and payloads that match docs/schemas."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from linewatch.edge.comms.payloads import TOPIC_PAYLOADS
from linewatch.edge.demo.brokers import EmbeddedBroker
from tests.helpers import Collector, linewatch, start_daemon, stop_daemon


def _retained_state(broker, device: str) -> str:
    """What a subscriber that joins now is told first: the retained status."""
    late = Collector(broker.url, f"linewatch/{device}/status")
    try:
        assert late.wait_for(lambda s: bool(s.messages), timeout=10)
        assert late.messages[0].retain
        return str(late.messages[0].payload["state"])
    finally:
        late.close()


def test_status_is_online_while_running_and_stopped_after_sigterm(tiny: Path, broker, tmp_path: Path) -> None:
    sub = Collector(broker.url, "linewatch/st-term/#")
    proc = start_daemon(tiny, broker.url, "st-term", tmp_path, source="conveyor:1", fps=20)
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 5, timeout=60), proc.stderr
        assert _retained_state(broker, "st-term") == "online"
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    assert _retained_state(broker, "st-term") == "stopped"


def test_last_will_says_offline_after_kill_9(tiny: Path, broker, tmp_path: Path) -> None:
    sub = Collector(broker.url, "linewatch/st-kill/status")
    proc = start_daemon(tiny, broker.url, "st-kill", tmp_path, source="conveyor:1", fps=20)
    try:
        assert sub.wait_for(lambda s: any(p["state"] == "online" for p in s.on("/status")), timeout=60)
        proc.kill()
        proc.wait(10)
        assert sub.wait_for(lambda s: s.on("/status")[-1]["state"] == "offline", timeout=20)
    finally:
        sub.close()
    assert _retained_state(broker, "st-kill") == "offline"


@pytest.mark.parametrize("topic", ["result", "status"])
def test_payloads_match_their_schema(tiny: Path, holdout: Path, broker, topic: str) -> None:
    sub = Collector(broker.url, "linewatch/schema/#")
    try:
        linewatch("run", "--model", str(tiny), "--source", str(holdout / "scratch"),
                  "--device-id", "schema", "--broker", broker.url, "--once")
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 12 and len(s.on("/status")) >= 2, timeout=20)
        payloads = sub.on(f"/{topic}")
    finally:
        sub.close()
    for payload in payloads:  # strict: the exact JSON types of docs/schemas/<topic>.schema.json
        TOPIC_PAYLOADS[topic].model_validate(payload, strict=True)
    if topic == "status":
        assert [p["state"] for p in payloads][-2:] == ["online", "stopped"]
    else:
        assert all(p["defect"] for p in payloads if p["label"] == "scratch")
        assert all(len(p["top"]) == 3 for p in payloads)


@pytest.mark.workstation  # amqtt comes with the demo extra, not with a device install
def test_embedded_broker_carries_the_demo_where_mosquitto_is_missing(tiny: Path, holdout: Path) -> None:
    """``make demo`` falls back to amqtt (MQTT 3.1.1) on machines without mosquitto."""
    embedded = EmbeddedBroker()
    embedded.start()
    sub = Collector(embedded.url, "linewatch/embedded/#", protocol=mqtt.MQTTv311)
    try:
        linewatch("run", "--model", str(tiny), "--source", str(holdout / "ok"), "--device-id",
                  "embedded", "--broker", embedded.url, "--protocol", embedded.protocol, "--once")
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 12, timeout=20)
    finally:
        sub.close()
        embedded.stop()
    assert [r["seq"] for r in sub.on("/result")] == list(range(1, 13))
