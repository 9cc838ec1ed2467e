"""Line I/O on gpiozero's MockFactory pins (the code paths of a Pi): parts, verdicts, a reject that fails safe.

The pins' own state histories are the evidence: when the reject output went high, for how long.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from linewatch.edge import __version__
from linewatch.edge.comms.payloads import PartMessage, Stats
from linewatch.edge.demo.brokers import free_port
from linewatch.edge.demo.line import pin_history
from linewatch.edge.device.config import LineSection
from linewatch.edge.device.line import LineController
from linewatch.edge.device.pipeline import Frame, Result
from linewatch.edge.model import artifact
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.card import ModelCard
from linewatch.edge.model.engine import Prediction
from tests.helpers import Collector, linewatch, start_daemon, stop_daemon

LABELS = ["crack", "empty", "ok", "scratch", "stain"]
GOOD = ["ok", "empty"]
MODEL = ModelArtifact(Path("m.tflite"), b"", ModelCard(labels=LABELS, good_labels=GOOD), LABELS)
TRIGGER, REJECT, GOOD_PIN, READY = 17, 27, 23, 22


def _line(**settings: Any) -> tuple[LineController, list[dict[str, Any]]]:
    cfg = LineSection(mode="gpio", trigger_pin=TRIGGER, reject_pin=REJECT, good_pin=GOOD_PIN, ready_pin=READY,
                      pin_factory="mock", reject_delay_ms=300, reject_pulse_ms=40, **settings)
    messages: list[dict[str, Any]] = []

    def publish(name: str, build: Any) -> int:
        messages.append(PartMessage.model_validate_json(build(len(messages) + 1), strict=True).model_dump())
        return len(messages)

    line = LineController(cfg, publish, "dev", lambda: True)
    for pin in (REJECT, GOOD_PIN, READY):
        line.outputs.factory.pin(pin).clear_states()  # type: ignore[union-attr]
    line.start()
    return line, messages


def _result(frame_id: int, ts: float, label: str) -> Result:
    scores = np.full(len(LABELS), 0.01, np.float32)
    scores[LABELS.index(label)] = 0.96
    return Result(Frame(frame_id, ts, np.zeros((4, 4, 3), np.uint8)), Prediction(scores, LABELS), MODEL)


def _edge(line: LineController) -> float:
    """The photo-eye sees a part: a 5 ms pulse on the trigger pin; its monotonic time."""
    pin = line.outputs.factory.pin(TRIGGER)  # type: ignore[union-attr]
    started = time.monotonic()
    pin.drive_high()
    time.sleep(0.005)
    pin.drive_low()
    return started


def _highs(line: LineController, number: int, base: float) -> list[tuple[float, float]]:
    """(start, length) in seconds after ``base`` of each time the output pin was high."""
    pulses, start = [], None
    for t, high in pin_history(line.outputs.factory.pin(number)):  # type: ignore[union-attr]
        if high and start is None:
            start = t
        elif not high and start is not None:
            pulses.append((start - base, t - start))
            start = None
    return pulses


def test_parts_in_transit_get_their_own_verdicts_and_only_the_bad_one_is_pushed_off() -> None:
    line, messages = _line()
    try:
        base = time.monotonic()
        frame, edges = 0, []
        for label in ("ok", "scratch", "ok", "stain"):
            edge_time = _edge(line) - base
            edges.append(edge_time)
            now = time.time()
            for offset in (-0.03, 0.0, 0.03, 0.06):  # frames around the trigger, classified a little later
                frame += 1
                line.on_result(_result(frame, now + offset, "ok" if offset else label))
            assert edge_time < 0.5
            time.sleep(0.08)
        time.sleep(0.5)
    finally:
        line.stop()
    assert [m["verdict"] for m in messages] == ["good", "defect", "good", "defect"]
    assert [m["rejected"] for m in messages] == [False, True, False, True]
    assert [m["reason"] for m in messages] == [None, "defect", None, "defect"]
    assert [m["seq"] for m in messages] == [1, 2, 3, 4] and all(m["decision_ms"] < 300 for m in messages)
    rejects, goods = _highs(line, REJECT, base), _highs(line, GOOD_PIN, base)
    assert len(rejects) == 2 and len(goods) == 2
    for (start, length), edge_time in zip(rejects, (edges[1], edges[3])):
        assert start - edge_time == pytest.approx(0.3, abs=0.02)  # on time: the delay after its own trigger
        assert length == pytest.approx(0.04, abs=0.01)
    counters = line.counters.as_dict()
    assert counters["parts"] == 4 and counters["good"] == 2 and counters["rejected"] == 2 and counters["yield"] == 0.5


def test_a_part_without_a_verdict_by_its_deadline_is_rejected_as_late_unless_fail_safe_is_off() -> None:
    for fail_safe in (True, False):
        line, messages = _line(fail_safe=fail_safe)
        try:
            line.on_result(_result(1, time.time() - 0.5, "ok"))  # the pipeline is behind: nothing after the trigger
            _edge(line)
            time.sleep(0.45)
        finally:
            line.stop()
        assert [(m["verdict"], m["rejected"], m["reason"]) for m in messages] == \
            [("late", True, "late") if fail_safe else ("late", False, None)]
        assert len(_highs(line, REJECT, 0)) == (1 if fail_safe else 0) and line.counters.late == 1


def test_bounce_and_double_triggers_are_counted_not_parts_and_no_frame_is_a_verdict() -> None:
    line, messages = _line(debounce_ms=5, min_spacing_ms=60)
    try:
        pin = line.outputs.factory.pin(TRIGGER)  # type: ignore[union-attr]
        for _ in range(3):  # contact bounce: edges 1 ms apart
            pin.drive_high()
            pin.drive_low()
        time.sleep(0.02)
        _edge(line)  # 20 ms after the first: a double trigger
        later = time.time() + 0.5
        line.on_result(_result(1, later, "ok"))  # a frame well after the window: none within it
        time.sleep(0.45)
    finally:
        line.stop()
    counters = line.counters.as_dict()
    assert counters["parts"] == 1 and counters["double_triggers"] == 1 and line.counters.bounces == 2
    assert [(m["verdict"], m["rejected"]) for m in messages] == [("no-frame", True)]


def test_stopping_rejects_the_parts_in_transit_at_their_deadlines_and_drops_ready() -> None:
    line, messages = _line()
    base = time.monotonic()
    for i in range(5):
        line.on_result(_result(i + 1, time.time(), "ok"))
        time.sleep(0.05)
    time.sleep(0.3)
    ready = line.outputs.factory.pin(READY)  # type: ignore[union-attr]
    assert ready.state  # frames arriving, spool writable
    _edge(line)
    stopping = time.monotonic()
    line.stop()  # the frame loop has stopped: the part in transit has no verdict
    assert time.monotonic() - stopping >= 0.25  # it waited for the part's deadline
    assert [(m["verdict"], m["rejected"]) for m in messages] == [("late", True)]
    assert len(_highs(line, REJECT, base)) == 1 and not ready.state


def test_the_daemon_takes_mqtt_triggers_and_publishes_one_part_message_each(tiny: Path, broker,
                                                                            tmp_path: Path) -> None:
    sub = Collector(broker.url, "linewatch/line-mqtt/#")
    port = free_port()
    # What this test is about is the MQTT side, so its timing is loose: a part's frames are those within 300 ms of
    # its trigger, and the reject gate is 1.5 s downstream. With the default +-50 ms, emulated arm64 on a slow build
    # machine (make pi-check) left parts without a good/defect verdict; which one it gave was not recorded, so the
    # assertions below now print each part's verdict and decision time.
    proc = start_daemon(tiny, broker.url, "line-mqtt", tmp_path, "--line", "mqtt", "--reject-pin", "27",
                        "--reject-delay-ms", "1500", "--set", "line.pin_factory=mock", "--set", "line.window_ms=600",
                        "--stats-interval", "1", "--metrics", f"127.0.0.1:{port}", "--ha-discovery")
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 5, 60), proc.stderr
        for n in range(6):
            sub.client.publish("linewatch/line-mqtt/cmd/trigger", json.dumps({"id": n, "part": f"P{n}"}), qos=1)
            time.sleep(0.15)
        assert sub.wait_for(lambda s: len(s.on("/part")) == 6 and len(s.on("/cmd/trigger/reply")) == 6, 30)
        assert sub.wait_for(lambda s: any((st.get("line") or {}).get("parts") == 6 for st in s.on("/stats")), 10)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            metrics = {s.name: s for s in text_string_to_metric_families(reply.read().decode())}
        assert sub.wait_for(lambda s: any(st.get("parts") == 6 for st in s.on("/state")), 10)
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    parts = [PartMessage.model_validate(p, strict=True) for p in sub.on("/part")]
    assert [p.external_id for p in parts] == [f"P{n}" for n in range(6)]
    verdicts = [(p.verdict, p.rejected, p.decision_ms) for p in parts]
    assert all(p.verdict in ("good", "defect") and p.rejected == (p.verdict == "defect") for p in parts), verdicts
    assert all(p.frame_id and p.decision_ms is not None and p.decision_ms < 1500 for p in parts), verdicts
    stats = [Stats.model_validate(s, strict=True) for s in sub.on("/stats")]
    assert stats[-1].line is not None and stats[-1].line.parts == 6
    # Prometheus reads the same counts, parsed with prometheus_client's own parser
    parts = {s.labels["verdict"]: s.value for s in metrics["linewatch_parts"].samples if s.name.endswith("_total")}
    assert sum(parts.values()) == 6 and parts["good"] == sum(p.verdict == "good" for p in parts_seen(sub))
    assert [s.value for s in metrics["linewatch_frames"].samples if s.name.endswith("_total")][0] > 0
    decision = {s.name: s.value for s in metrics["linewatch_part_decision_seconds"].samples}
    assert decision["linewatch_part_decision_seconds_count"] == 6
    assert all(s.labels["device_id"] == "line-mqtt" for m in metrics.values() for s in m.samples)  # one label set
    assert metrics["linewatch_stage_latency_seconds"].type == "summary"  # quantiles, _count and _sum, not a gauge
    assert metrics["linewatch_info"].samples[0].labels["version"] == __version__
    assert metrics["linewatch_model_info"].samples[0].labels["sha256"] == artifact.load(tiny).sha256
    state = sub.on("/state")[-1]
    assert state["parts"] == 6 and state["last_verdict"] in ("good", "defect") and 0 <= state["yield"] <= 1


def parts_seen(sub: Collector) -> list[PartMessage]:
    return [PartMessage.model_validate(p) for p in sub.on("/part")]


def test_a_reject_delay_shorter_than_the_device_can_decide_is_refused_at_start(tiny: Path) -> None:
    proc = linewatch("run", "--model", str(tiny), "--source", "conveyor:1", "--fps", "25", "--broker",
                     "mqtt://127.0.0.1:1", "--line", "mqtt", "--reject-pin", "27", "--reject-delay-ms", "20",
                     "--set", "line.reject_pulse_ms=10", "--set", "line.pin_factory=mock", check=False)
    assert proc.returncode == 2 and "line.reject_delay_ms 20 is shorter" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    proc = linewatch("run", "--model", str(tiny), "--source", "conveyor:1", "--broker", "mqtt://127.0.0.1:1",
                     "--line", "gpio", "--reject-pin", "27", "--set", "line.trigger_pin=27", "--set",
                     "line.pin_factory=mock", check=False)
    assert proc.returncode == 2 and "used twice" in proc.stderr, proc.stderr


def test_the_line_demo_pushes_off_every_part_not_known_good_on_time_and_fails_safe(tiny: Path,
                                                                                  tmp_path: Path) -> None:
    """`linewatch demo --line` on simulated pins, with a camera loss mid-run, then with inference stalled."""
    summary = tmp_path / "line.json"
    linewatch("demo", "--line", "--model", str(tiny), "--parts", "60", "--rate", "5", "--camera-loss-s", "2",
              "--workdir", str(tmp_path / "demo"), "--summary", str(summary))
    s = json.loads(summary.read_text())
    assert s["parts"] == 60 and s["mqtt_parts"] == 60 and s["one_message_per_part"], s
    assert s["not_good_but_passed"] == 0 and s["good_but_rejected"] == 0 and s["reject_pulses"] == s["rejected"]
    blind = s["verdicts"]["no-frame"] + s["late"]
    assert blind >= 4, s  # the parts that passed while the camera was lost (2 s, 7 parts): all pushed off
    assert s["defects_caught"] >= 0.7 * s["defects_true"] and s["double_triggers"] == 0
    assert s["timing_error_ms"]["max"] <= 25, s["timing_error_ms"]  # make bench-line measures it unloaded
    linewatch("demo", "--line", "--model", str(tiny), "--parts", "15", "--rate", "5", "--stall-ms", "600",
              "--workdir", str(tmp_path / "stalled"), "--summary", str(summary))
    s = json.loads(summary.read_text())
    assert s["late"] == 15 and s["rejected"] == 15 and s["mqtt_parts"] == 15, s  # none passes
