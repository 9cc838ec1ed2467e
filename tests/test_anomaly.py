"""Anomaly detection from good photos only: training, the int8 gate, scoring with classify, and the daemon.

The device's side on the committed tiny anomaly model (no TensorFlow) is in test_anomaly_device.py;
here the session's freshly trained one goes through the daemon to a real mosquitto.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from linewatch.convert.anomaly import MIN_RANK_CORRELATION
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import read_image
from linewatch.train.anomaly import auroc, synthetic_defect, threshold_for
from tests.helpers import Collector, linewatch

pytestmark = pytest.mark.workstation


def test_anomaly_training_learns_good_parts_only_and_reports_auroc(anomaly_model: tuple[Path, Path]) -> None:
    run, _ = anomaly_model
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["task"] == "anomaly" and test["auroc"] >= 0.8, test  # scratch, crack and stain: never seen
    assert set(test["per_class"]) == {"crack", "scratch", "stain"}
    assert test["false_alarm_rate"] <= 0.1 and test["good"] > 0 and test["anomalous"] > test["good"]
    card = json.loads((run / "model_card.json").read_text())
    assert card["task"] == "anomaly" and card["labels"] == ["ok", "empty"] and card["anomaly"]["threshold"] == 1.0
    assert card["anomaly"]["score_scale"] > 0 and card["anomaly"]["false_alarm"] == 0.01
    for name in ("report.html", "scores.png", "roc.png", "heat_maps.png", "model.keras"):
        assert (run / name).stat().st_size > 0, name


def test_int8_anomaly_model_passes_the_auroc_gate_and_scores_photos(anomaly_model: tuple[Path, Path],
                                                                   holdout: Path) -> None:
    run, model_path = anomaly_model
    report = json.loads(model_path.with_suffix(".report.json").read_text())
    parity = report["parity"]
    assert parity["accepted"] and parity["float_auroc"] - parity["quantized_auroc"] <= 0.01
    assert parity["rank_correlation"] >= MIN_RANK_CORRELATION and not report["failures"]
    engine = Engine(artifact.load(str(model_path)))
    assert engine.task == "anomaly" and engine.integer
    good = np.array([engine.predict(read_image(str(p))).anomaly_score for label in ("ok", "empty")
                     for p in sorted((holdout / label).glob("*.jpg"))])
    bad = np.array([engine.predict(read_image(str(p))).anomaly_score for label in ("crack", "scratch", "stain")
                    for p in sorted((holdout / label).glob("*.jpg"))])
    assert auroc(good, bad) >= 0.75, (good, bad)  # photos of another seed, never seen
    prediction = engine.predict(read_image(str(next((holdout / "scratch").glob("*.jpg")))))
    heat = prediction.heat_map
    assert heat is not None and heat.ndim == 2 and heat.shape[0] < engine.height
    assert prediction.anomaly_score == pytest.approx(
        float(heat.max()) / engine.model.card.anomaly.score_scale)  # type: ignore[union-attr]

    rows = [json.loads(line) for line in linewatch("classify", str(model_path), str(holdout / "ok"),
                                                   str(holdout / "stain"), "--json").stdout.splitlines()]
    assert len(rows) == 24 and all({"path", "anomaly_score", "anomalous"} <= set(r) for r in rows)
    flagged = {Path(r["path"]).parent.name: 0 for r in rows}
    for r in rows:
        flagged[Path(r["path"]).parent.name] += r["anomalous"]
    assert flagged["stain"] > flagged["ok"], rows


def test_the_daemon_flags_unseen_defects_with_the_trained_model_and_evaluate_refuses_it(
        anomaly_model: tuple[Path, Path], holdout: Path, broker, tmp_path: Path) -> None:
    """Good parts, then cracks it never saw, then good parts, through the daemon to mosquitto: one event."""
    run, model = anomaly_model
    line = tmp_path / "line"
    line.mkdir()
    order = [*sorted((holdout / "ok").glob("*.jpg"))[:6], *sorted((holdout / "crack").glob("*.jpg"))[:6],
             *sorted((holdout / "ok").glob("*.jpg"))[6:]]
    for i, path in enumerate(order):
        shutil.copy(path, line / f"{i:03d}.jpg")
    sub = Collector(broker.url, "linewatch/trained-anomaly/#")
    try:
        linewatch("run", "--model", str(model), "--source", str(line), "--device-id", "trained-anomaly",
                  "--broker", broker.url, "--once", "--set", "events.k=3", "--set", "events.n=5")
        assert sub.wait_for(lambda s: len(s.on("/result")) == len(order), 30)
    finally:
        sub.close()
    flagged = [r["anomalous"] for r in sub.on("/result")]
    # The threshold is set for 1% false alarms on held-out photos of the training seed; these are of another
    # seed, and a good frame in six may pass it. The event, 3 flagged of 5, is what must open once and only once.
    assert sum(flagged[6:12]) >= 5 and sum(flagged[:6] + flagged[12:]) <= 2, flagged
    assert [e["class"] for e in sub.on("/event") if e["type"] == "start"] == ["anomaly"], sub.on("/event")
    proc = linewatch("evaluate", str(model), str(run.parent / "no-photos-needed"), check=False)
    assert proc.returncode == 2 and "is an anomaly model" in proc.stderr and "Traceback" not in proc.stderr


def test_synthetic_defects_change_a_part_of_the_photo_and_the_threshold_keeps_its_false_alarm_rate() -> None:
    rng = np.random.default_rng(0)
    photo = np.full((96, 128, 3), 128, np.uint8)
    changed = [(synthetic_defect(photo, rng) != photo).any(axis=2).mean() for _ in range(60)]
    assert all(0 < share < 0.5 for share in changed)  # somewhere, never everywhere
    good = rng.normal(size=1000)
    for rate in (0.01, 0.05):
        assert (good >= threshold_for(good, rate)).mean() <= rate
    assert auroc(np.array([0.1, 0.2]), np.array([0.3])) == 1.0 and auroc(np.array([1.0]), np.array([1.0])) == 0.5
