"""Anomaly detection from good photos only: training, the int8 gate, scoring with classify, and the daemon's refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from linewatch.convert.anomaly import MIN_RANK_CORRELATION
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import read_image
from linewatch.train.anomaly import auroc, synthetic_defect, threshold_for
from tests.conftest import TrainedModel
from tests.helpers import linewatch

pytestmark = pytest.mark.workstation


@pytest.fixture(scope="session")
def anomaly_model(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The session's photos, learned from their good parts and empty belt only, converted to int8: (run, model)."""
    base = tmp_path_factory.mktemp("anomaly")
    run, model = base / "run", base / "anomaly.tflite"
    linewatch("train", str(trained.data), "-o", str(run), "--task", "anomaly", "--good", "ok,empty", "--epochs", "20")
    linewatch("convert", str(run), "-o", str(model))
    return run, model


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
    good = np.array([engine.anomaly(read_image(str(p)))[0] for label in ("ok", "empty")
                     for p in sorted((holdout / label).glob("*.jpg"))])
    bad = np.array([engine.anomaly(read_image(str(p)))[0] for label in ("crack", "scratch", "stain")
                    for p in sorted((holdout / label).glob("*.jpg"))])
    assert auroc(good, bad) >= 0.75, (good, bad)  # photos of another seed, never seen
    score, heat = engine.anomaly(read_image(str(next((holdout / "scratch").glob("*.jpg")))))
    assert heat.ndim == 2 and heat.shape[0] < engine.height and score == pytest.approx(
        float(heat.max()) / engine.model.card.anomaly.score_scale)  # type: ignore[union-attr]

    rows = [json.loads(line) for line in linewatch("classify", str(model_path), str(holdout / "ok"),
                                                   str(holdout / "stain"), "--json").stdout.splitlines()]
    assert len(rows) == 24 and all(set(r) == {"path", "anomaly_score", "anomalous"} for r in rows)
    flagged = {Path(r["path"]).parent.name: 0 for r in rows}
    for r in rows:
        flagged[Path(r["path"]).parent.name] += r["anomalous"]
    assert flagged["stain"] > flagged["ok"], rows


def test_the_daemon_and_evaluate_refuse_an_anomaly_model_in_one_line(anomaly_model: tuple[Path, Path]) -> None:
    run, model = anomaly_model
    proc = linewatch("run", "--model", str(model), "--source", "conveyor:1", "--broker", "mqtt://127.0.0.1:1",
                     "--max-frames", "1", check=False)
    assert proc.returncode == 4 and "is an anomaly model" in proc.stderr and "Traceback" not in proc.stderr
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
