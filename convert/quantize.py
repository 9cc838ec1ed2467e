"""Full-integer post-training quantization, with a parity gate against the float model.

Most edge projects lose accuracy here without noticing: calibration images prepared
differently from training, too few of them, or float ops left behind. So calibration
uses a class-stratified sample of the run's own training split prepared by the same code
as training, and the result is checked on the run's own test split before it is written.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge import artifact
from edge.engine import Engine
from edge.errors import DataError, GateError, ModelError
from train import data
from train.metrics import classification_metrics
from train.trainer import predict_scores

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "float32")


def calibration_sample(items: list[tuple[str, str]], count: int, seed: int) -> list[tuple[str, str]]:
    """Up to ``count`` images, the same share from every class, shuffled; never the first N files."""
    by_class: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    rng = random.Random(seed)
    per_class = max(1, count // max(1, len(by_class)))
    sample: list[tuple[str, str]] = []
    for members in by_class.values():
        sample += rng.sample(members, min(per_class, len(members)))
    rng.shuffle(sample)
    return sample[:count]


def _read_run(run_dir: Path) -> tuple[dict[str, Any], list[str]]:
    if not (run_dir / "model.keras").is_file():
        raise DataError(f"{run_dir} is not a run folder (no model.keras): pass the -o folder of 'linewatch train'")
    card = json.loads((run_dir / "model_card.json").read_text())
    return card, artifact.read_labels(run_dir / "labels.txt")


def convert(run_dir: Path | str, out: Path | str, quantization: str = "int8", io_type: str = "int8",
            calibration: int = 300, max_drop: float = 1.0) -> dict[str, Any]:
    """Convert a run folder's model, check it against the float model, write the artifact.

    Raises ``GateError`` (after writing nothing) when accuracy drops more than ``max_drop``
    points or any class's recall more than 3 points.
    """
    import keras
    import tensorflow as tf

    run_dir, out = Path(run_dir), Path(out)
    card, labels = _read_run(run_dir)
    inp = card["input"]
    h, w, mode = inp["height"], inp["width"], inp["resize_mode"]
    splits = data.load_splits(run_dir / "splits.json")
    model = keras.models.load_model(run_dir / "model.keras")
    if len(model.outputs) != 1 or model.outputs[0].shape[-1] != len(labels):
        raise ModelError(f"{run_dir}/model.keras does not output one vector of {len(labels)} class scores")

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        # The SavedModel route is the robust one with Keras 3.
        model.export(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantization == "int8":
            sample = calibration_sample(splits["train"], calibration, seed=card["training"]["seed"])
            x_cal, _, _, _ = data.load_images(sample, labels, h, w, mode)
            print(f"calibrating on {len(x_cal)} training images ({len(x_cal) // len(labels)} per class)", flush=True)

            def representative():
                for image in x_cal:
                    yield [image[None].astype(np.float32)]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8 if io_type == "int8" else tf.uint8
            converter.inference_output_type = converter.inference_input_type
        flatbuffer = converter.convert()
    convert_seconds = round(time.monotonic() - started, 1)

    x_test, y_test, _, _ = data.load_images(splits["test"], labels, h, w, mode)
    float_scores = predict_scores(model, x_test)
    full_card = {**card, "quantization": quantization, "io_type": io_type if quantization == "int8" else "float32",
                 "calibration_images": calibration if quantization == "int8" else 0}
    packed = artifact.pack(flatbuffer, full_card, labels)
    with tempfile.NamedTemporaryFile(suffix=".tflite") as tmp_model:
        tmp_model.write(packed)
        tmp_model.flush()
        engine = Engine(artifact.load(tmp_model.name))
        quant_scores = np.stack([engine.predict_pixels(image).scores for image in x_test])
    parity = parity_report(y_test, float_scores, quant_scores, labels)
    parity["convert_seconds"] = convert_seconds
    failures = gate(parity, max_drop)
    parity["accepted"] = not failures
    full_card["parity"] = {k: v for k, v in parity.items() if k != "per_class_recall"}
    out.parent.mkdir(parents=True, exist_ok=True)
    if failures:
        rejected = out.with_suffix(".rejected.tflite")
        rejected.write_bytes(artifact.pack(flatbuffer, full_card, labels))
        raise GateError("; ".join(failures) + f" (kept as {rejected} for inspection). Try more calibration "
                        "images (--calibration), another width, or quantization-aware training")
    out.write_bytes(artifact.pack(flatbuffer, full_card, labels))
    out.with_suffix(".parity.json").write_text(json.dumps(parity, indent=1))
    return parity


def parity_report(y: np.ndarray, float_scores: np.ndarray, quant_scores: np.ndarray,
                  labels: list[str]) -> dict[str, Any]:
    """Accuracy of each model, their top-1 agreement, and per-class recall of each."""
    f = classification_metrics(y, float_scores, labels)
    q = classification_metrics(y, quant_scores, labels)
    return {
        "float_accuracy": f["accuracy"],
        "quantized_accuracy": q["accuracy"],
        "agreement": float((float_scores.argmax(1) == quant_scores.argmax(1)).mean()) if len(y) else 0.0,
        "test_images": int(len(y)),
        "per_class_recall": {c: {"float": f["per_class"][c]["recall"], "quantized": q["per_class"][c]["recall"],
                                 "support": f["per_class"][c]["support"]} for c in labels},
    }


def gate(parity: dict[str, Any], max_drop: float, max_class_drop: float = 3.0) -> list[str]:
    """The reasons a converted model is rejected; empty when it passes.

    A class with few test images may lose one of them without failing the gate: in a class
    of 12 images one changed answer is 8 points, which says nothing about quantization.
    """
    failures = []
    drop = 100 * (parity["float_accuracy"] - parity["quantized_accuracy"])
    if drop > max_drop:
        failures.append(f"accuracy dropped {drop:.1f} points (limit {max_drop})")
    for label, r in parity["per_class_recall"].items():
        class_drop = 100 * (r["float"] - r["quantized"])
        limit = max(max_class_drop, 100 / r["support"] + 1e-9) if r["support"] else max_class_drop
        if class_drop > limit:
            failures.append(f"recall of '{label}' dropped {class_drop:.1f} points (limit {limit:.1f})")
    return failures
