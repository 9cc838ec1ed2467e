"""Train a classifier from labeled photos and write a run folder.

A run folder holds everything later steps need: ``model.keras``, ``labels.txt``,
``model_card.json`` (how to feed the model), ``splits.json`` (the exact test images),
``metrics.json`` and ``report.html`` with its plots. ``linewatch convert`` reads it.

Training is interruptible and resumable: every epoch writes ``checkpoint.keras`` and
``checkpoint.json``, the best weights so far are kept in ``best.weights.h5``, and Ctrl-C
finishes the run with the best model so far instead of throwing the work away.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.edge.errors import DataError, UsageError
from linewatch.edge.files import write_atomic
from linewatch.edge.model.card import InputSpec, ModelCard
from linewatch.train import data
from linewatch.train.augment import build_augmenter
from linewatch.train.config import TrainConfig
from linewatch.train.metrics import classification_metrics, describe, good_labels

logger = logging.getLogger(__name__)

CHECKPOINT, CHECKPOINT_STATE, BEST_WEIGHTS = "checkpoint.keras", "checkpoint.json", "best.weights.h5"


@dataclass
class _State:
    """What survives between epochs, and between a run and its ``--resume``."""

    epoch: int = 0
    stage: int = 0  # index into the stages: train, then fine-tune
    stage_start: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    wait: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)


def _tf_dataset(x: np.ndarray, y: np.ndarray, batch: int, seed: int, augmenter=None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if augmenter is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch)
    if augmenter is not None:
        ds = ds.map(lambda images, labels: (augmenter(images), labels), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def class_weights(y: np.ndarray, n: int, mode: str = "auto") -> dict[int, float] | None:
    """Inverse-frequency weights: always with ``on``, with ``auto`` when largest/smallest > 1.5."""
    counts = np.bincount(y, minlength=n).astype(float)
    if mode == "off" or counts.min() == 0 or (mode == "auto" and counts.max() / counts.min() <= 1.5):
        return None
    return {i: float(counts.sum() / (n * c)) for i, c in enumerate(counts)}


def predict_scores(model: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Float scores of a Keras model on prepared uint8 images."""
    return model.predict(x.astype(np.float32), batch_size=batch, verbose=0)


def _replace(path: Path, save: Callable[[Path], Any]) -> None:
    """``save(tmp)`` beside ``path``, then rename it over ``path``: never a half-written checkpoint.

    Keras picks the format by the file name's ending, so the temporary name keeps it.
    """
    tmp = path.with_name(f".partial.{path.name}")
    save(tmp)
    os.replace(tmp, path)


def _make_checkpointer(out: Path, state: _State, patience: int):
    """A callback that keeps the best weights, stops early, and checkpoints every epoch."""
    import keras

    class Checkpointer(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            for key, value in logs.items():
                state.history.setdefault(key, []).append(float(value))
            state.epoch = epoch + 1
            val_loss = float(logs.get("val_loss", math.inf))
            if val_loss < state.best_val_loss - 1e-4:
                state.best_val_loss, state.best_epoch, state.wait = val_loss, epoch + 1, 0
                _replace(out / BEST_WEIGHTS, self.model.save_weights)
            else:
                state.wait += 1
                if state.wait >= patience:
                    print(f"early stop: no better validation loss for {patience} epochs; "
                          f"best was epoch {state.best_epoch}", flush=True)
                    self.model.stop_training = True
            # Ctrl-C may land in the middle of a save: each file is replaced whole, the state last.
            _replace(out / CHECKPOINT, self.model.save)
            write_atomic(out / CHECKPOINT_STATE, json.dumps(asdict(state)))

    return Checkpointer()


def _compile(model: Any, learning_rate: float, steps: int) -> None:
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps), alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def _build(cfg: TrainConfig, classes: int, height: int, width: int) -> Any:
    from linewatch.train.model import build_cnn, build_mobilenetv2

    if cfg.architecture == "cnn":
        return build_cnn(classes, height, width, cfg.width)
    try:
        model = build_mobilenetv2(classes, height, width, cfg.width, cfg.weights)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if cfg.weights:  # stage one trains the new head on a frozen backbone
        model.get_layer("backbone").trainable = False
    return model


def _load_config(out: Path) -> TrainConfig:
    return TrainConfig.model_validate_json((out / "train_config.json").read_text())


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run one training (or resume one) and write the run folder; returns the metrics."""
    import keras
    import tensorflow as tf

    from linewatch.train.model import set_fine_tuning

    started = time.monotonic()
    out = Path(cfg.out)
    resuming = resume and (out / CHECKPOINT_STATE).is_file()
    if resume and not resuming:
        raise DataError(f"nothing to resume in {out}: no {CHECKPOINT_STATE} there; train without --resume")
    if resuming:
        cfg = _load_config(out)  # the run goes on as it was started
    out.mkdir(parents=True, exist_ok=True)

    dataset = data.scan(cfg.data)
    print(dataset.summary(), flush=True)
    splits = data.load_splits(out / "splits.json") if resuming else data.split(dataset, cfg.seed)
    height, width = cfg.size or data.auto_size(splits["train"])
    cfg.size = (height, width)
    (out / "train_config.json").write_text(cfg.model_dump_json(indent=1))

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped = list(dataset.skipped)
    for name, items in splits.items():
        x, y, splits[name], bad = data.load_images(items, dataset.classes, height, width, cfg.resize_mode)
        arrays[name] = (x, y)
        skipped += bad
    for index, label in enumerate(dataset.classes):
        if not (arrays["train"][1] == index).any():
            raise DataError(f"class '{label}' has no readable training image: check its photos under {dataset.root}")
    if len(arrays["val"][0]) == 0:
        raise DataError(f"no readable validation images under {dataset.root}")
    # Only what was read goes into splits.json: evaluation and conversion count exactly these test images.
    data.save_splits(out / "splits.json", splits, dataset.classes, cfg.seed)
    print(f"input {height}x{width} ({cfg.resize_mode}), {cfg.architecture} width {cfg.width}, "
          f"{len(arrays['train'][0])} train / {len(arrays['val'][0])} val / {len(arrays['test'][0])} test images",
          flush=True)

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()  # the same seed and data give the same model
    state = _State()
    if resuming:
        state = _State(**json.loads((out / CHECKPOINT_STATE).read_text()))
        model = keras.models.load_model(out / CHECKPOINT)
        print(f"resuming after epoch {state.epoch} (best so far: epoch {state.best_epoch})", flush=True)
    else:
        model = _build(cfg, len(dataset.classes), height, width)
    weights = class_weights(arrays["train"][1], len(dataset.classes), cfg.class_weights)
    if weights:
        print("class weights: " + ", ".join(f"{dataset.classes[i]} {w:.2f}" for i, w in weights.items()), flush=True)
    train_ds = _tf_dataset(*arrays["train"], cfg.batch_size, cfg.seed,
                           build_augmenter(cfg.augment, cfg.augment_strength, cfg.seed))
    val_ds = _tf_dataset(*arrays["val"], cfg.batch_size, cfg.seed)
    steps_per_epoch = math.ceil(len(arrays["train"][0]) / cfg.batch_size)
    fine_tune = cfg.architecture == "mobilenetv2" and bool(cfg.weights) and cfg.fine_tune_epochs > 0
    stages = [("train", cfg.epochs, cfg.learning_rate)]
    if fine_tune:
        stages.append(("fine-tune", cfg.fine_tune_epochs, cfg.learning_rate / 10))

    interrupted = False
    try:
        for index, (stage, stage_epochs, learning_rate) in enumerate(stages):
            if index < state.stage:
                continue
            if index > state.stage or not resuming:  # entering the stage; a resumed one keeps its optimizer
                state.stage, state.stage_start, state.wait = index, state.epoch, 0
                if stage == "fine-tune":
                    print(f"fine-tuning the top {cfg.fine_tune_fraction:.0%} of the backbone at learning rate "
                          f"{learning_rate:g}", flush=True)
                    model.load_weights(out / BEST_WEIGHTS)
                    set_fine_tuning(model, cfg.fine_tune_fraction)
                _compile(model, learning_rate, steps_per_epoch * stage_epochs)
            if state.wait < cfg.patience:  # a resumed stage may have stopped early already
                model.fit(train_ds, validation_data=val_ds, initial_epoch=state.epoch,
                          epochs=state.stage_start + stage_epochs, class_weight=weights, verbose=2,
                          shuffle=False,  # the dataset shuffles itself
                          callbacks=[_make_checkpointer(out, state, cfg.patience)])
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: keeping the best model so far (epoch {state.best_epoch})", flush=True)
    if not (out / BEST_WEIGHTS).is_file():
        raise DataError("training stopped before the first epoch ended: nothing to keep")
    model.load_weights(out / BEST_WEIGHTS)
    model.save(out / "model.keras")
    (out / "labels.txt").write_text("\n".join(dataset.classes) + "\n")

    x_test, y_test = arrays["test"]
    scores = predict_scores(model, x_test)
    metrics = {"test": classification_metrics(y_test, scores, dataset.classes),
               "history": state.history,
               "best_epoch": state.best_epoch,
               "interrupted": interrupted,
               "skipped": [{"path": p, "reason": r} for p, r in skipped],
               "train_seconds": round(time.monotonic() - started, 1)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    now = datetime.now(UTC)
    card = ModelCard(
        name=out.name or "linewatch-model", version=now.strftime("%Y%m%d%H%M%S"),
        created=now.isoformat(timespec="seconds"), architecture=cfg.architecture,
        input=InputSpec(height=height, width=width, resize_mode=cfg.resize_mode),
        labels=dataset.classes, good_labels=good_labels(dataset.classes),
        thresholds={c: 0.5 for c in dataset.classes},
        dataset={"fingerprint": dataset.fingerprint(), "counts": dataset.counts()},
        training=cfg.model_dump(mode="json"),
        metrics={"test_accuracy": metrics["test"]["accuracy"],
                 "defect_miss_rate": metrics["test"]["defect"]["miss_rate"],
                 "false_alarm_rate": metrics["test"]["defect"]["false_alarm_rate"]})
    (out / "model_card.json").write_text(card.to_json())
    if cfg.report:
        from linewatch.train.report import write_report

        write_report(out, f"linewatch training report: {out.name}", metrics["test"], dataset.classes, x_test,
                     y_test, scores, history=state.history, skipped=metrics["skipped"], summary=dataset.summary())
    print(f"test {describe(metrics['test'])}; run folder {out} ({metrics['train_seconds']} s)", flush=True)
    return metrics

