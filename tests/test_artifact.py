"""The self-describing model file: card round-trip, foreign models, damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from linewatch.edge.errors import ModelError
from linewatch.edge.model import artifact
from linewatch.edge.model.card import CARD_VERSION, ModelCard
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


def _bad_model(kind: str, tiny: Path, folder: Path) -> Path:
    """A model file gone wrong in one way a device meets: copying, editing by hand, the wrong file."""
    data = tiny.read_bytes()
    model = artifact.load(tiny)
    path = folder / f"{kind}.tflite"
    if kind == "missing":
        return path
    if kind == "not-tflite":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + data[:200])
    elif kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "altered":
        altered = bytearray(data)
        altered[len(altered) // 3] ^= 0xFF
        path.write_bytes(bytes(altered))
    elif kind == "card-of-another-size":
        card = model.card.model_copy(update={"input": model.card.input.model_copy(update={"height": 64})})
        path.write_bytes(artifact.pack(model.flatbuffer, card, model.labels))
    elif kind == "card-with-other-labels":
        path.write_bytes(artifact.pack(model.flatbuffer, model.card, ["ok", "bad"]))
    return path


@pytest.mark.parametrize("kind,needle", [
    ("missing", "does not exist"), ("not-tflite", "not a TFLite model"), ("truncated", "truncated"),
    ("altered", "sha256"), ("card-of-another-size", "card says 64x96"),
    ("card-with-other-labels", "outputs 5 classes but 2 labels")])
def test_each_kind_of_bad_model_exits_4_in_one_line(kind: str, needle: str, tiny: Path, holdout: Path,
                                                    tmp_path: Path) -> None:
    bad = _bad_model(kind, tiny, tmp_path)
    for command in (("classify", str(bad), str(holdout / "ok")),
                    ("run", "--model", str(bad), "--source", str(holdout), "--device-id", "x", "--broker",
                     "mqtt://127.0.0.1:9", "--once")):
        proc = linewatch(*command, check=False)
        assert proc.returncode == 4, proc.stderr
        error = proc.stderr.strip().splitlines()[-1]
        assert error.startswith(f"linewatch {command[0]}: error:") and str(bad) in error and needle in error, error
        assert "Traceback" not in proc.stderr


def test_a_card_appended_twice_still_pins_the_same_model(tiny: Path, holdout: Path, tmp_path: Path) -> None:
    """Appending the card zip again (a deploy script run twice) changes nothing the card pins: it runs as before."""
    data = tiny.read_bytes()
    model = artifact.load(tiny)
    twice = tmp_path / "twice.tflite"
    twice.write_bytes(data + artifact.pack(model.flatbuffer, model.card, model.labels)[len(model.flatbuffer):])
    again = artifact.load(twice)
    assert again.sha256 == model.sha256 and again.flatbuffer == model.flatbuffer
    first = linewatch("classify", str(tiny), str(holdout / "ok"), "--json").stdout
    assert linewatch("classify", str(twice), str(holdout / "ok"), "--json").stdout == first


@pytest.mark.workstation
@pytest.mark.parametrize("kind,needle", [("float", "is a float model"), ("not-an-image", "HxWx3 image")])
def test_a_model_the_device_cannot_run_exits_4(kind: str, needle: str, holdout: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    shape = (72, 96, 3) if kind == "float" else (10,)
    keras = tf.keras.Sequential([tf.keras.Input(shape), tf.keras.layers.Flatten(), tf.keras.layers.Dense(5)])
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(keras).convert()
    labels = ["crack", "empty", "ok", "scratch", "stain"]
    path = tmp_path / f"{kind}.tflite"
    path.write_bytes(artifact.pack(flatbuffer, ModelCard(name=kind, labels=labels), labels))
    proc = linewatch("run", "--model", str(path), "--source", str(holdout), "--device-id", "x",
                     "--broker", "mqtt://127.0.0.1:9", "--once", check=False)
    assert proc.returncode == 4, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("linewatch run: error:") and str(path) in error and needle in error, error
