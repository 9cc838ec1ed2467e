"""An anomaly model on the device: results and events over a real mosquitto, heat-map snapshots,
``cmd/threshold``, Home Assistant, ``classify --json`` and ``--review-dir``.

They run the committed ``tiny_anomaly.tflite`` (learned from good parts and the empty belt only,
tests/fixtures/make_tiny_model.py) with LiteRT: no TensorFlow, so on a Pi too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.edge.comms.payloads import Event, Reply, Result
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import read_image
from tests.helpers import Collector, linewatch, start_daemon, stop_daemon, summary

BAD = ("crack", "scratch", "stain")


def _scores(model: Path, paths: list[Path]) -> dict[Path, float]:
    engine = Engine(artifact.load(model))
    return {p: engine.predict(read_image(str(p))).anomaly_score for p in paths}  # type: ignore[misc]


def test_the_daemon_publishes_anomaly_scores_events_and_heat_map_snapshots(tiny_anomaly: Path, holdout: Path,
                                                                           broker, tmp_path: Path) -> None:
    """Quiet good parts, a run of anomalous ones, quiet again: one event, its snapshot shows the heat map."""
    paths = sorted(p for label in ("ok", "empty", *BAD) for p in (holdout / label).glob("*.jpg"))
    scores = _scores(tiny_anomaly, paths)
    ranked = sorted(paths, key=scores.__getitem__)
    low, high = ranked[:12], ranked[-6:]
    threshold = (scores[low[-1]] + scores[high[0]]) / 2  # set in the config: between the two groups
    assert scores[low[-1]] < threshold < scores[high[0]], scores
    line = tmp_path / "line"
    line.mkdir()
    for i, path in enumerate([*low[:6], *high, *low[6:]]):
        shutil.copy(path, line / f"{i:03d}.jpg")
    sub = Collector(broker.url, "linewatch/anomaly-dev/#")
    try:
        proc = linewatch("run", "--model", str(tiny_anomaly), "--source", str(line), "--device-id", "anomaly-dev",
                         "--broker", broker.url, "--once", "--json", "--set", f"events.thresholds.anomaly={threshold}",
                         "--state-dir", str(tmp_path / "state"))
        assert summary(proc.stdout)["frames"] == 18
        assert sub.wait_for(lambda s: len(s.on("/result")) == 18 and len(s.on("/event")) == 2, 30), sub.messages
    finally:
        sub.close()
    results, events = sub.on("/result"), sub.on("/event")
    for payload in results:
        Result.model_validate(payload, strict=True)
    for payload in events:
        Event.model_validate(payload, strict=True)
    expected = [scores[p] for p in [*low[:6], *high, *low[6:]]]
    assert [r["anomaly_score"] for r in results] == pytest.approx(expected, abs=1e-4)  # the device = classify
    assert [r["anomalous"] for r in results] == [False] * 6 + [True] * 6 + [False] * 6
    for r in results:  # the label and its score say the same: the anomaly's share is 0.5 at the threshold
        assert r["label"] == ("anomaly" if r["anomalous"] else "normal") and r["defect"] == r["anomalous"]
        share = {s["label"]: s["score"] for s in r["top"]}["anomaly"]
        assert share == pytest.approx(r["anomaly_score"] / (r["anomaly_score"] + threshold), abs=1e-3)
    start, end = events
    assert (start["type"], end["type"], start["class"], start["event_id"]) == ("start", "end", "anomaly",
                                                                              end["event_id"])
    assert start["frame_id"] == 9 and end["frames"] == 4  # k = 3 of n = 5: the third anomalous frame starts it
    snapshot = cv2.imread(str(tmp_path / "state" / "snapshots" / start["snapshot"]))
    frame = read_image(str(line / "008.jpg"))
    assert snapshot.shape == frame.shape  # the whole frame (no region of interest), with the heat map over it
    assert float(np.abs(snapshot.astype(int) - frame.astype(int)).mean()) > 20


def test_anomaly_threshold_moves_live_and_home_assistant_gets_an_anomaly_sensor(tiny_anomaly: Path, broker,
                                                                              tmp_path: Path) -> None:
    sub = Collector(broker.url, "#")
    proc = start_daemon(tiny_anomaly, broker.url, "anomaly-live", tmp_path, "--ha-discovery")
    try:
        assert sub.wait_for(lambda s: len(s.on("anomaly-live/result")) >= 5, 60), proc.stderr
        for n, body in enumerate([{"class": "anomaly", "value": 0}, {"class": "anomaly", "value": "high"},
                                  {"class": "scratch", "value": 0.5}, {"class": "anomaly", "value": 1e6}]):
            sub.client.publish("linewatch/anomaly-live/cmd/threshold", json.dumps({"id": n, **body}), qos=1)
        assert sub.wait_for(lambda s: len(s.on("anomaly-live/cmd/threshold/reply")) == 4, 30)
        replies = {r["id"]: Reply.model_validate(r, strict=True) for r in sub.on("anomaly-live/cmd/threshold/reply")}
        assert [replies[n].ok for n in range(4)] == [False, False, False, True], replies
        assert "above 0" in (replies[0].error or "") and "not one of anomaly, normal" in (replies[2].error or "")
        count = len(sub.on("anomaly-live/result"))
        assert sub.wait_for(lambda s: len(s.on("anomaly-live/result")) >= count + 30, 60)
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    after = sub.on("anomaly-live/result")[count + 10:]  # frames classified after the reply, well after
    assert after and not any(r["anomalous"] for r in after) and {r["label"] for r in after} == {"normal"}
    configs = {m.topic: m.payload for m in sub.messages if m.topic.endswith("/config") and m.payload}
    sensor = configs["homeassistant/binary_sensor/linewatch_anomaly-live/anomaly/config"]
    assert sensor["value_template"] == "{{ 'ON' if value_json.anomaly else 'OFF' }}"
    assert sensor["state_topic"] == "linewatch/anomaly-live/state"  # an open anomaly event, not a frame


def test_classify_prints_anomaly_scores_and_keeps_the_most_anomalous_to_review(tiny_anomaly: Path, holdout: Path,
                                                                             tmp_path: Path) -> None:
    folders = [str(holdout / label) for label in ("ok", "stain")]
    proc = linewatch("classify", str(tiny_anomaly), *folders, "--json", "--review-dir", str(tmp_path / "review"),
                     "--review-count", "5")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == 24 and all({"path", "label", "score", "top", "anomaly_score", "anomalous"} == set(r)
                                   for r in rows)
    assert all(r["anomalous"] == (r["label"] == "anomaly") for r in rows)
    kept = sorted((tmp_path / "review").glob("*/*.jpg"), key=lambda p: p.name)
    assert len(kept) == 5 and "kept 5 image(s)" in proc.stderr
    worst = sorted(rows, key=lambda r: -r["anomaly_score"])[:5]
    assert [float(p.name.split("_")[1]) for p in kept] == pytest.approx([r["anomaly_score"] for r in worst], abs=1e-3)
    assert [p.parent.name for p in kept] == [r["label"] for r in worst]
    text = linewatch("classify", str(tiny_anomaly), folders[1]).stdout.splitlines()
    assert text[0].split() == ["label", "score", "anomaly", "path"] and len(text) == 13
