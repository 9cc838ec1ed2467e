"""One rule of what a prediction means for the part (``ModelArtifact.verdict``), and every consumer follows it:
the published result, the setup page, the line's part verdict, the events (and so Home Assistant's defect sensor,
which follows them), and the training metrics' defect roll-up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from linewatch.edge.device.config import LineSection
from linewatch.edge.device.events import EventTracker
from linewatch.edge.device.line import LineController
from linewatch.edge.device.pipeline import Frame, Result
from linewatch.edge.device.results import ResultEncoder
from linewatch.edge.device.setup import latest_view
from linewatch.edge.errors import ModelError
from linewatch.edge.model import artifact
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import Engine, Prediction
from linewatch.train.metrics import classification_metrics
from tests.helpers import linewatch

LINE_CLASSES = ["crack", "empty", "ok", "scratch", "stain"]  # the tiny model's outputs, in order


def _plain(tiny: Path, folder: Path, labels: list[str]) -> tuple[Path, Path]:
    """The tiny model as a plain .tflite made elsewhere (no card) and a labels file."""
    plain, names = folder / "plain.tflite", folder / "labels.txt"
    plain.write_bytes(artifact.load(tiny).flatbuffer)
    names.write_text("\n".join(labels) + "\n")
    return plain, names


def _model(case: str, tiny: Path, tiny_anomaly: Path, folder: Path) -> ModelArtifact:
    if case == "a card naming its good classes":
        return artifact.load(tiny)
    if case == "no card: a labels file, good by the usual names":
        model = artifact.load(*_plain(tiny, folder, LINE_CLASSES))
        assert not model.has_card and model.card.good_labels == ["empty", "ok"]  # the default, recorded in the card
        return model
    return artifact.load(tiny_anomaly)


def _prediction(model: ModelArtifact, outcome: str) -> Prediction:
    """A confident prediction of ``outcome``."""
    if model.card.task == "anomaly":
        threshold = model.card.anomaly.threshold if model.card.anomaly else 1.0
        score = 3.0 * threshold if outcome == "anomaly" else 0.2 * threshold
        odds = score / (score + threshold)
        return Prediction(np.array([odds, 1 - odds], np.float32), model.outcomes, score)
    scores = np.full(len(model.outcomes), 0.01, np.float32)
    scores[model.outcomes.index(outcome)] = 0.96
    return Prediction(scores, model.outcomes)


@pytest.mark.parametrize("case", ["a card naming its good classes", "no card: a labels file, good by the usual names",
                                  "an anomaly model"])
def test_every_consumer_follows_the_models_verdict(case: str, tiny: Path, tiny_anomaly: Path, tmp_path: Path) -> None:
    model = _model(case, tiny, tiny_anomaly, tmp_path)
    line = LineController(LineSection(mode="mqtt", reject_pin=27, pin_factory="mock"), publish=lambda *a: 0,
                          device_id="dev", spool_writable=lambda: True)
    encode = ResultEncoder("dev", model, top_k=2)
    verdicts = {}
    for n, outcome in enumerate(model.outcomes, start=1):
        prediction = _prediction(model, outcome)
        assert prediction.label == outcome
        verdict = verdicts[outcome] = model.verdict(prediction.label, prediction.anomalous)
        result = Result(Frame(n, time.time(), np.zeros((4, 4, 3), np.uint8)), prediction, model)
        assert json.loads(encode(result, n))["defect"] == (verdict != "good"), outcome  # the result message
        assert latest_view(result)["defect"] == (verdict != "good"), outcome  # the setup page
        assert line._judge(result) == verdict, outcome  # the part's verdict, so the reject gate
        tracker = EventTracker(model.outcomes, model.good_outcomes, dict.fromkeys(model.outcomes, 0.5), k=1, n=1)
        alarms = tracker.update(dict(zip(prediction.labels, prediction.scores.tolist())), n)
        assert [a.label for a in alarms] == ([] if verdict == "good" else [outcome]), outcome  # events, HA's sensor
        if model.card.task == "classify":  # training's roll-up counts the same parts as defects
            onehot = prediction.scores[None, :]
            rollup = classification_metrics(np.array([n - 1]), onehot, model.labels, model.card.good_labels)
            assert rollup["defect"]["defects"] == (verdict != "good"), outcome
    assert "good" in verdicts.values() and set(verdicts.values()) - {"good"}  # both kinds were judged
    assert model.good_outcomes == [o for o, v in verdicts.items() if v == "good"]


def test_a_model_that_names_no_good_class_is_refused_at_load(tiny: Path, tmp_path: Path) -> None:
    """Nothing could pass such a model: every part would be rejected. One line, exit 4, before anything runs."""
    plain, labels = _plain(tiny, tmp_path, ["a", "b", "c", "d", "e"])
    model = artifact.load(plain, labels)
    Engine(model)  # it loads and runs: timing or evaluating it needs no verdict
    with pytest.raises(ModelError, match="names no good class"):
        model.require_good_outcome()  # the device's load (make_engine) asks
    proc = linewatch("run", "--model", str(plain), "--labels", str(labels), "--source", "conveyor:1", "--device-id",
                     "no-good", "--broker", "mqtt://127.0.0.1:1", "--max-frames", "1", check=False)
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("INFO: ")]  # LiteRT's own note
    assert proc.returncode == 4 and len(lines) == 1 and "names no good class" in lines[0], proc.stderr
