"""Conversion: full-integer ops, the comparison report, uint8 I/O, and the parity gate catching a broken calibration."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.convert.config import ConvertConfig
from linewatch.convert.quantize import calibration_sample, convert
from linewatch.edge.errors import GateError
from linewatch.edge.model import artifact, audit
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import read_image
from linewatch.train import data
from tests.conftest import TrainedModel
from tests.helpers import linewatch

pytestmark = pytest.mark.workstation


def _holdout_accuracy(engine: Engine, holdout: Path) -> tuple[float, list[str]]:
    paths = sorted(holdout.rglob("*.jpg"))
    labels = [engine.predict(read_image(str(p))).label for p in paths]
    return float(np.mean([p.parent.name == label for p, label in zip(paths, labels)])), labels


def test_every_op_is_integer_and_edgetpu_mappable(trained: TrainedModel) -> None:
    ops = audit.ops(artifact.load(trained.model))
    assert ops and not any(op.is_float for op in ops)
    assert all(op.edgetpu for op in ops)
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= {op.name for op in ops}
    report = trained.report
    assert report["edgetpu_unsupported_ops"] == [] and report["failures"] == []
    assert stat.S_IMODE(trained.model.stat().st_mode) == 0o644  # a service user reads a copy made with its mode


def test_report_compares_every_quantization(trained: TrainedModel) -> None:
    rows = {r["quantization"]: r for r in trained.report["quantizations"]}
    assert set(rows) == {"int8", "float16", "dynamic", "float32"}
    assert rows["int8"]["bytes"] * 3 < rows["float32"]["bytes"]
    assert rows["float16"]["bytes"] < rows["float32"]["bytes"]
    for row in rows.values():
        for latency in row["latency_ms"].values():
            assert 0 < latency["p50"] <= latency["p99"]
        assert row["accuracy"] >= 0.85
    assert rows["int8"]["accuracy"] == trained.parity["quantized_accuracy"]


def test_float_ops_are_seen_by_the_audit(trained: TrainedModel, tmp_path: Path) -> None:
    out = tmp_path / "float.tflite"
    convert(trained.run, out, ConvertConfig(quantization="float32", compare=False))
    ops = audit.ops(artifact.load(out))
    assert all(op.is_float for op in ops if op.name == "CONV_2D")
    assert audit.io_details(artifact.load(out))["input"]["dtype"] == "float32"


def test_uint8_io_for_the_edge_tpu_loads_and_classifies(trained: TrainedModel, uint8_model: Path,
                                                         holdout: Path) -> None:
    out = uint8_model
    u8 = Engine(artifact.load(out))
    i8 = Engine(artifact.load(trained.model))
    io = artifact.load(out).card.io
    assert io["input"]["dtype"] == "uint8" and io["output"]["dtype"] == "uint8"
    assert io["input"]["zero_point"] == 0  # raw pixels pass through unchanged
    u8_accuracy, u8_labels = _holdout_accuracy(u8, holdout)
    i8_accuracy, i8_labels = _holdout_accuracy(i8, holdout)
    assert u8_accuracy >= 0.9 and i8_accuracy >= 0.9
    assert np.mean([a == b for a, b in zip(u8_labels, i8_labels)]) >= 0.95


def test_gate_rejects_a_double_normalized_calibration(trained: TrainedModel, tmp_path: Path) -> None:
    """The classic mistake: calibration images scaled to 0..1 although the model rescales itself."""
    card = json.loads((trained.run / "model_card.json").read_text())
    labels = (trained.run / "labels.txt").read_text().split()
    sample = calibration_sample(data.load_splits(trained.run / "splits.json")["train"], 100, seed=0)
    images, _, _, _ = data.load_images(sample, labels, card["input"]["height"], card["input"]["width"])
    broken = (images / 255.0).astype(np.float32)

    out = tmp_path / "broken.tflite"
    with pytest.raises(GateError, match="accuracy dropped"):
        convert(trained.run, out, ConvertConfig(compare=False), calibration_images=broken)
    assert not out.exists()
    rejected = artifact.load(tmp_path / "broken.rejected.tflite")
    assert rejected.card.rejected and not rejected.card.parity["accepted"]


def test_model_that_is_not_a_classifier_is_refused(trained: TrainedModel, tmp_path: Path) -> None:
    import keras

    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    inputs = keras.Input((96, 128, 3))
    keras.Model(inputs, keras.layers.Conv2D(5, 3)(inputs)).save(run / "model.keras")
    proc = linewatch("convert", str(run), "-o", str(tmp_path / "m.tflite"), check=False)
    assert proc.returncode == 4 and "class scores" in proc.stderr.strip().splitlines()[-1]


def test_inspect_shows_card_ops_and_quantization(trained: TrainedModel, tmp_path: Path) -> None:
    text = linewatch("inspect", str(trained.model)).stdout
    assert '"labels"' in text and "CONV_2D" in text and "int8, scale" in text
    info = json.loads(linewatch("inspect", str(trained.model), "--json").stdout)
    assert info["io"]["input"]["dtype"] == "int8"
    assert info["card"]["model_sha256"] == artifact.sha256(artifact.load(trained.model).flatbuffer)
    plain = tmp_path / "plain.tflite"
    plain.write_bytes(artifact.load(trained.model).flatbuffer)
    bare = json.loads(linewatch("inspect", str(plain), "--json").stdout)
    assert bare["card"] is None and bare["io"]["input"]["dtype"] == "int8"


def test_a_model_that_fails_the_parity_gate_exits_5(trained: TrainedModel, tmp_path: Path) -> None:
    """Calibrated on one grey picture (a wrong folder, say), the int8 ranges are useless: the gate says so."""
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((96, 128, 3), 128, np.uint8))
    splits = json.loads((run / "splits.json").read_text())
    splits["train"] = [{"path": str(grey), "label": entry["label"]} for entry in splits["train"]]
    (run / "splits.json").write_text(json.dumps(splits))
    out = tmp_path / "m.tflite"
    proc = linewatch("convert", str(run), "-o", str(out), "--no-compare", check=False)
    assert proc.returncode == 5, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("linewatch convert: error:") and "dropped" in line and "Traceback" not in proc.stderr
    assert not out.exists() and out.with_suffix(".rejected.tflite").is_file()


def test_a_cnn_keeps_per_channel_scales_and_per_tensor_is_smaller(trained: TrainedModel, tmp_path: Path) -> None:
    assert trained.report["weight_scales"] == {"kept": "per-channel", "rejected_by_gate": {}}
    out = tmp_path / "pt.tflite"
    report = convert(trained.run, out, ConvertConfig(weight_scales="per-tensor", compare=False, max_drop=100,
                                                     max_class_drop=100))
    assert report["weight_scales"]["kept"] == "per-tensor" and artifact.load(out).card.per_tensor
    per_channel = next(r for r in trained.report["quantizations"] if r["quantization"] == "int8")
    assert report["quantizations"][0]["bytes"] < per_channel["bytes"]


def test_a_mobilenet_tries_per_tensor_first_and_keeps_what_the_gate_passes(tmp_path: Path) -> None:
    from linewatch.edge.simulator import write_dataset

    write_dataset(tmp_path / "d", per_class=10, seed=3)
    run = tmp_path / "run"
    linewatch("train", str(tmp_path / "d"), "-o", str(run), "--architecture", "mobilenetv2", "--width", "0.35",
              "--size", "32", "--epochs", "2")
    proc = linewatch("convert", str(run), "-o", str(tmp_path / "m.tflite"), "--no-compare", "--max-drop", "100",
                     "--max-class-drop", "100", check=False)
    # Per-tensor is tried first; with a gate this loose it passes and is kept, and the card says so.
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first = proc.stdout.index("per-tensor weight scales")
    scales = json.loads((tmp_path / "m.report.json").read_text())["weight_scales"]
    assert scales == {"kept": "per-tensor", "rejected_by_gate": {}}
    assert "kept per-tensor weight scales" in proc.stdout[first:]
    assert artifact.load(tmp_path / "m.tflite").card.per_tensor
    # With no accuracy drop allowed the choice is the gate's to make: whichever is kept is named, and a
    # rejected per-tensor conversion says why.
    strict = linewatch("convert", str(run), "-o", str(tmp_path / "s.tflite"), "--no-compare", "--max-drop", "0",
                       "--max-class-drop", "0", check=False)
    kept = re.search(r"kept (per-\w+) weight scales", strict.stdout)
    assert kept, strict.stdout
    if kept.group(1) == "per-channel":
        assert "per-tensor scales rejected by the gate" in strict.stdout
