"""Anomaly detection from good photos only: training, the int8 gate, scoring with classify, and the daemon.

The device's side on the committed tiny anomaly model (no TensorFlow) is in test_anomaly_device.py;
here the session's freshly trained one goes through the daemon to a real mosquitto.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
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
    # The default combines the scar network and the memory: each part is measured alone beside the whole,
    # and on marks on a part the whole does about as well as the scar network (the memory adds little noise).
    assert card["anomaly"]["method"] == "combined" and set(metrics["parts"]) == {"scars", "memory"}
    assert test["auroc"] >= metrics["parts"]["scars"]["auroc"] - 0.03, metrics["parts"]


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
    # seed, and a good frame in three may pass it in int8: the scar network's one, and the memory's (docs/anomaly.md,
    # known limitations). The event, 3 flagged of 5, is what must open once and only once.
    assert sum(flagged[6:12]) >= 5 and sum(flagged[:6] + flagged[12:]) <= 4, flagged
    assert [e["class"] for e in sub.on("/event") if e["type"] == "start"] == ["anomaly"], sub.on("/event")
    proc = linewatch("evaluate", str(model), str(run.parent / "no-photos-needed"), check=False)
    assert proc.returncode == 2 and "is an anomaly model" in proc.stderr and "Traceback" not in proc.stderr


def _parts_in_a_fixture(folder: Path, shape: str, count: int, rng: np.random.Generator) -> None:
    """Photos of one kind of part held in a fixture: always about the same place, size and light."""
    (folder / shape).mkdir(parents=True)
    for i in range(count):
        photo = np.full((48, 48, 3), rng.uniform(60, 90), np.float32)
        centre, size, shade = rng.integers(22, 27, 2), int(rng.integers(11, 15)), rng.uniform(170, 230)
        if shape == "round":
            cv2.circle(photo, (int(centre[0]), int(centre[1])), size, (shade, shade, shade), -1)
        else:
            cv2.rectangle(photo, (int(centre[0] - size), int(centre[1] - size)),
                          (int(centre[0] + size), int(centre[1] + size)), (shade, shade, shade), -1)
        cv2.imwrite(str(folder / shape / f"{i:03d}.png"), np.clip(photo + rng.normal(0, 6, photo.shape), 0, 255))


def test_the_memory_flags_a_whole_other_part_and_keeps_its_ranking_in_int8(tmp_path: Path) -> None:
    """A square part where a round one belongs: no mark to find, the whole part is wrong. No network is trained.

    Its int8 model is calibrated with a black frame too: without it the memory's distance had the range of
    the good photos only, every anomaly tied at the top, and the rank correlation fell below the gate's.
    """
    from linewatch.convert.quantize import convert
    from linewatch.train.config import TrainConfig
    from linewatch.train.trainer import train

    rng = np.random.default_rng(0)
    _parts_in_a_fixture(tmp_path / "data", "round", 80, rng)
    _parts_in_a_fixture(tmp_path / "data", "square", 40, rng)
    run, model = tmp_path / "run", tmp_path / "memory.tflite"
    test = train(TrainConfig(data=str(tmp_path / "data"), out=str(run), task="anomaly", good=("round",),
                             anomaly_method="memory", report=False), quiet=True)["test"]
    assert test["auroc"] >= 0.95 and test["detection_rate"] >= 0.8, test
    parity = convert(run, model)["parity"]
    assert parity["accepted"] and parity["float_auroc"] - parity["quantized_auroc"] <= 0.01, parity
    assert parity["rank_correlation"] >= 0.9, parity
    engine = Engine(artifact.load(str(model)))
    square = engine.predict(read_image(str(next((tmp_path / "data" / "square").glob("*.png")))))
    assert square.heat_map is not None and square.heat_map.shape == (1, 1)  # one number: there is no "where"
    assert square.anomalous and square.anomaly_score is not None and square.anomaly_score > 1.0


def test_features_need_local_weights_and_give_a_heat_map_per_cell_in_int8(tmp_path: Path) -> None:
    """PatchCore's idea on a local MobileNetV2 file: here an untrained one stands in for ImageNet's."""
    import keras

    from linewatch.convert.quantize import convert
    from linewatch.train.config import TrainConfig
    from linewatch.train.model import mobilenetv2_backbone
    from linewatch.train.trainer import train

    rng = np.random.default_rng(1)
    _parts_in_a_fixture(tmp_path / "data", "round", 120, rng)
    _parts_in_a_fixture(tmp_path / "data", "square", 60, rng)
    proc = linewatch("train", str(tmp_path / "data"), "-o", str(tmp_path / "none"), "--task", "anomaly",
                     "--good", "round", "--anomaly-method", "features", check=False)
    assert proc.returncode == 2 and "give --weights FILE" in proc.stderr and "Traceback" not in proc.stderr
    keras.utils.set_random_seed(0)
    weights = tmp_path / "standin.weights.h5"
    mobilenetv2_backbone(48, 48, 0.35).save_weights(weights)
    run, model = tmp_path / "run", tmp_path / "features.tflite"
    test = train(TrainConfig(data=str(tmp_path / "data"), out=str(run), task="anomaly", good=("round",),
                             anomaly_method="features", weights=str(weights), width=0.35, report=False),
                 quiet=True)["test"]
    assert test["auroc"] >= 0.75, test  # untrained features: better than chance is all they promise
    card = json.loads((run / "model_card.json").read_text())
    assert card["training"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    parity = convert(run, model)["parity"]
    assert parity["accepted"] and parity["float_auroc"] - parity["quantized_auroc"] <= 0.01, parity
    square = Engine(artifact.load(str(model))).predict(read_image(str(next((tmp_path / "data" / "square").glob("*")))))
    assert square.heat_map is not None and square.heat_map.shape == (6, 6)  # one cell per 8x8 pixels: where


def test_synthetic_defects_change_a_part_of_the_photo_and_the_threshold_keeps_its_false_alarm_rate() -> None:
    rng = np.random.default_rng(0)
    photo = np.full((96, 128, 3), 128, np.uint8)
    changed = [(synthetic_defect(photo, rng) != photo).any(axis=2).mean() for _ in range(60)]
    assert all(0 < share < 0.5 for share in changed)  # somewhere, never everywhere
    good = rng.normal(size=1000)
    for rate in (0.01, 0.05):
        assert (good >= threshold_for(good, rate)).mean() <= rate
    assert auroc(np.array([0.1, 0.2]), np.array([0.3])) == 1.0 and auroc(np.array([1.0]), np.array([1.0])) == 0.5
