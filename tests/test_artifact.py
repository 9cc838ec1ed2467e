"""The self-describing model file: card round-trip, foreign models, damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from linewatch.edge.errors import ModelError
from linewatch.edge.model import artifact
from linewatch.edge.model.card import CARD_VERSION
from linewatch.edge.model.engine import Engine
from tests.conftest import TrainedModel
from tests.helpers import linewatch


def test_card_and_labels_travel_inside_the_model(trained: TrainedModel) -> None:
    model = artifact.load(trained.model)
    labels = (trained.run / "labels.txt").read_text().split()
    assert model.labels == labels
    assert model.card.input is not None
    run_card = json.loads((trained.run / "model_card.json").read_text())
    assert model.card.input.model_dump(mode="json") == run_card["input"]
    assert model.card.parity["accepted"] is True
    assert model.sha256 == artifact.sha256(model.flatbuffer)
    assert model.card.model_size == len(model.flatbuffer) < trained.model.stat().st_size
    assert model.card.card_version == CARD_VERSION


def test_committed_device_models_carry_a_current_card(tiny: Path, tiny_uint8: Path) -> None:
    """The device tier's models: regenerate them (tests/fixtures/make_tiny_model.py) when the card changes."""
    for path in (tiny, tiny_uint8):
        model = artifact.load(path)
        assert model.has_card and model.card.card_version == CARD_VERSION
        assert model.labels == ["crack", "empty", "ok", "scratch", "stain"] and model.card.parity["accepted"]
        assert path.stat().st_size < 64 * 1024


def test_model_without_card_runs_with_a_labels_file(tiny: Path, holdout: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.tflite"
    model = artifact.load(tiny)
    plain.write_bytes(model.flatbuffer)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(model.labels) + "\n")
    with pytest.raises(ModelError, match="--labels"):
        Engine(artifact.load(plain))
    engine = Engine(artifact.load(plain, labels))
    image = cv2.imread(str(next((holdout / "empty").glob("*.jpg"))))
    assert engine.predict(image).label == "empty"


def test_wrong_number_of_labels_is_refused(tiny: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("ok\nbad\n")
    with pytest.raises(ModelError, match="outputs 5 classes but 2 labels"):
        Engine(artifact.load(tiny, labels))


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_model_is_refused_in_one_line(tiny: Path, holdout: Path, tmp_path: Path, keep: float) -> None:
    data = tiny.read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: int(len(data) * keep)])
    proc = linewatch("run", "--model", str(cut), "--source", str(holdout), "--device-id", "x",
                     "--broker", "mqtt://127.0.0.1:9", "--once", check=False)
    assert proc.returncode == 4, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("linewatch run: error:") and str(cut) in error
    assert "Traceback" not in proc.stderr


def test_altered_model_bytes_fail_the_checksum(tiny: Path, tmp_path: Path) -> None:
    data = bytearray(tiny.read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        artifact.load(bad)


def test_not_a_model_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "photo.tflite"
    junk.write_bytes(b"\xff\xd8\xff\xe0 this is a jpeg")
    with pytest.raises(ModelError, match="not a TFLite model"):
        artifact.load(junk)
    with pytest.raises(ModelError, match="does not exist"):
        artifact.load(tmp_path / "missing.tflite")
