"""Train a classifier from a folder of labeled photos and write a run folder.

A run folder holds everything later steps need: ``model.keras``, ``labels.txt``,
``model_card.json`` (how to feed the model), ``splits.json`` (the exact test images) and
``metrics.json``. ``linewatch convert`` reads it; nothing else has to be passed along.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import DataError
from train import data
from train.metrics import classification_metrics, good_labels

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """What a training run is asked to do; recorded in the model card."""

    data: str
    out: str
    epochs: int = 30
    height: int = 96
    width: int = 128
    resize_mode: str = "stretch"
    batch_size: int = 32
    learning_rate: float = 2e-3
    patience: int = 8
    width_multiplier: float = 1.0
    seed: int = 0


def _tf_dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int, augment: bool):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if augment:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch)
    if augment:
        def flip(images, labels):
            images = tf.cast(images, tf.float32)
            images = tf.image.random_flip_left_right(images)
            images = tf.image.random_flip_up_down(images)
            return images, labels
        ds = ds.map(flip, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _class_weights(y: np.ndarray, n: int) -> dict[int, float] | None:
    """Inverse-frequency weights when the classes are unbalanced (largest over smallest > 1.5)."""
    counts = np.bincount(y, minlength=n).astype(float)
    if counts.min() == 0 or counts.max() / counts.min() <= 1.5:
        return None
    return {i: float(counts.sum() / (n * c)) for i, c in enumerate(counts)}


def predict_scores(model: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Float scores of a Keras model on prepared uint8 images."""
    return model.predict(x.astype(np.float32), batch_size=batch, verbose=0)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run one training and write the run folder; returns the metrics."""
    import keras
    import tensorflow as tf

    from train.model import build_cnn

    started = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data.scan(cfg.data)
    counts = dataset.counts()
    print(f"dataset {dataset.root}: {len(dataset.items)} images, "
          + ", ".join(f"{c} {n}" for c, n in counts.items())
          + f" (largest/smallest {max(counts.values()) / max(1, min(counts.values())):.1f}x)", flush=True)
    splits = data.stratified_split(dataset.items, cfg.seed)
    data.save_splits(out / "splits.json", splits, dataset.classes, cfg.seed)

    arrays = {}
    skipped: list[tuple[str, str]] = []
    for name, items in splits.items():
        x, y, bad = data.load_images(items, dataset.classes, cfg.height, cfg.width, cfg.resize_mode)
        arrays[name] = (x, y)
        skipped += bad
    if len(arrays["train"][0]) == 0:
        raise DataError(f"no readable training images under {dataset.root}")

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()  # the same seed and data give the same model
    model = build_cnn(len(dataset.classes), cfg.height, cfg.width, cfg.width_multiplier)
    steps = max(1, int(np.ceil(len(arrays["train"][0]) / cfg.batch_size))) * cfg.epochs
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    weights = _class_weights(arrays["train"][1], len(dataset.classes))
    history = model.fit(
        _tf_dataset(*arrays["train"], cfg.batch_size, cfg.seed, augment=True),
        validation_data=_tf_dataset(*arrays["val"], cfg.batch_size, cfg.seed, augment=False),
        epochs=cfg.epochs, class_weight=weights, verbose=2, shuffle=False,  # the dataset shuffles itself
        callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                                 restore_best_weights=True)],
    )
    model.save(out / "model.keras")
    (out / "labels.txt").write_text("\n".join(dataset.classes) + "\n")

    x_test, y_test = arrays["test"]
    metrics = {"test": classification_metrics(y_test, predict_scores(model, x_test), dataset.classes),
               "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
               "skipped": [{"path": p, "reason": r} for p, r in skipped],
               "train_seconds": round(time.monotonic() - started, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    card = {
        "name": out.name or "linewatch-model",
        "version": datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "architecture": "cnn",
        "input": {"height": cfg.height, "width": cfg.width, "channels": 3, "color_order": "RGB",
                  "resize_mode": cfg.resize_mode, "range": [0, 255]},
        "labels": dataset.classes,
        "good_labels": good_labels(dataset.classes),
        "thresholds": {c: 0.5 for c in dataset.classes},
        "dataset": {"fingerprint": dataset.fingerprint(), "counts": counts},
        "training": asdict(cfg),
        "metrics": {"test_accuracy": metrics["test"]["accuracy"],
                    "defect_miss_rate": metrics["test"]["defect"]["miss_rate"]},
    }
    (out / "model_card.json").write_text(json.dumps(card, indent=2))
    test = metrics["test"]
    print(f"test accuracy {test['accuracy']:.4f} on {test['count']} images, defect miss rate "
          f"{test['defect']['miss_rate']:.4f}, false alarms {test['defect']['false_alarm_rate']:.4f}; "
          f"run folder {out} ({metrics['train_seconds']} s)", flush=True)
    return metrics
