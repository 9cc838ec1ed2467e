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
from linewatch.edge.model.artifact import GOOD_NAMES, default_good_labels
from linewatch.edge.model.card import InputSpec, ModelCard
from linewatch.train import data, retrain
from linewatch.train.augment import build_augmenter
from linewatch.train.config import TrainConfig
from linewatch.train.console import EpochProgress
from linewatch.train.metrics import classification_metrics, describe

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
    smooth_val_loss: float = math.inf  # an exponential average: one lucky or unlucky epoch moves it little
    best_smooth: float = math.inf
    wait: int = 0
    drops: int = 0  # learning-rate drops in this stage
    learning_rate: float = 0.0
    done: bool = False  # the stage has converged (or run out of time)
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


def card_training(cfg: TrainConfig) -> dict[str, Any]:
    """The model card's ``training``: the settings, and the sha256 of a weights file the run started from."""
    import hashlib

    if not cfg.weights:
        return cfg.model_dump(mode="json")
    with Path(cfg.weights).open("rb") as f:
        return {**cfg.model_dump(mode="json"), "weights_sha256": hashlib.file_digest(f, "sha256").hexdigest()}


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


SMOOTHING = 0.6  # weight of the past in the smoothed validation loss
DROP_FACTOR = 0.2  # each plateau multiplies the learning rate by this


def _say(text: str) -> None:
    print(text, flush=True)


def _silent(text: str) -> None:
    pass


EpochHook = Callable[[int, dict[str, float]], bool]


def _make_checkpointer(out: Path, state: _State, cfg: TrainConfig, deadline: float, progress: EpochProgress,
                       say: Callable[[str], None], on_epoch: EpochHook | None):
    """A callback that keeps the best weights, follows plateaus, and checkpoints every epoch.

    The schedule follows the epochs actually run: the learning rate stays up while the
    smoothed validation loss improves, drops by ``DROP_FACTOR`` after ``patience`` epochs
    without a better one, and training stops after ``lr_drops`` drops (converged), at the
    epoch ceiling, or at the time budget. The best epoch is judged on the raw validation loss.
    """
    import keras

    started = time.monotonic()  # history["seconds"]: when each epoch ended, from the start (or the resume)

    class Checkpointer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            progress.begin_epoch()

        def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
            progress.step(state.epoch + 1, batch + 1)

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            assert self.model is not None  # keras sets it before the first epoch
            for key, value in logs.items():
                state.history.setdefault(key, []).append(float(value))
            state.history.setdefault("learning_rate", []).append(state.learning_rate)
            state.history.setdefault("seconds", []).append(round(time.monotonic() - started, 2))
            state.epoch = epoch + 1
            val_loss = float(logs.get("val_loss", math.inf))
            if val_loss < state.best_val_loss:
                state.best_val_loss, state.best_epoch = val_loss, epoch + 1
                _replace(out / BEST_WEIGHTS, self.model.save_weights)
            progress.end_epoch(epoch + 1, logs, state.best_epoch, state.learning_rate)
            if not math.isfinite(val_loss):
                val_loss = math.inf
            state.smooth_val_loss = (val_loss if not math.isfinite(state.smooth_val_loss)
                                     else SMOOTHING * state.smooth_val_loss + (1 - SMOOTHING) * val_loss)
            if state.smooth_val_loss < state.best_smooth * (1 - 1e-3):
                state.best_smooth, state.wait = state.smooth_val_loss, 0
            else:
                state.wait += 1
            if state.wait >= cfg.patience:
                if state.drops < cfg.lr_drops:
                    state.drops, state.wait = state.drops + 1, 0
                    state.learning_rate *= DROP_FACTOR
                    self.model.optimizer.learning_rate.assign(state.learning_rate)
                    say(f"plateau: learning rate down to {state.learning_rate:g}")
                else:
                    state.done = True
                    say(f"converged: no better validation loss after {cfg.lr_drops} learning-rate drops")
            if time.monotonic() > deadline:
                state.done = True
                say(f"time budget of {cfg.minutes:g} min reached: keeping the best epoch so far")
            if on_epoch is not None and on_epoch(epoch + 1, logs):
                state.done = True
            self.model.stop_training = state.done
            # Ctrl-C may land in the middle of a save: each file is replaced whole, the state last.
            _replace(out / CHECKPOINT, self.model.save)
            write_atomic(out / CHECKPOINT_STATE, json.dumps(asdict(state)))

    return Checkpointer()


def fit_keeping_best(fit: Callable[[], Any], model: Any, out: Path, state: _State,
                     say: Callable[[str], None]) -> bool:
    """Run ``fit`` (Ctrl-C ends it with the best epoch so far) and load the best epoch's weights into ``model``.

    True when interrupted; a run stopped before its first epoch ended has nothing to keep.
    """
    interrupted = False
    try:
        fit()
    except KeyboardInterrupt:
        interrupted = True
        say(f"\ninterrupted: keeping the best model so far (epoch {state.best_epoch})")
    if not (out / BEST_WEIGHTS).is_file():
        raise DataError("training stopped before the first epoch ended: nothing to keep")
    model.load_weights(out / BEST_WEIGHTS)
    return interrupted


def _compile(model: Any, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])


def build_model(cfg: TrainConfig, classes: int, height: int, width: int) -> Any:
    """The untrained model a configuration asks for (a search times it before training it)."""
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


def train(cfg: TrainConfig, resume: bool = False, on_epoch: EpochHook | None = None,
          quiet: bool = False) -> dict[str, Any]:
    """Run one training (or resume one) and write the run folder; returns the metrics.

    ``on_epoch(epoch, logs)`` returning True ends the run after that epoch (a search pruning a
    poor candidate); ``quiet`` leaves only the live bar on a terminal, for such a search.
    """
    import keras
    import tensorflow as tf

    from linewatch.train.layers import load_model
    from linewatch.train.model import set_fine_tuning

    say = _silent if quiet else _say
    if cfg.task == "anomaly":
        if resume:
            raise UsageError("--resume is for classifiers: train an anomaly model again (it takes minutes)")
        if cfg.from_run:
            raise UsageError("--from goes on from a classifier: --task anomaly trains from the good photos alone")
        from linewatch.train.anomaly import train_anomaly

        return train_anomaly(cfg, say)
    started = time.monotonic()
    out = Path(cfg.out)
    resuming = resume and (out / CHECKPOINT_STATE).is_file()
    if resume and not resuming:
        raise DataError(f"nothing to resume in {out}: no {CHECKPOINT_STATE} there; train without --resume")
    if resuming:
        cfg = _load_config(out)  # the run goes on as it was started
    previous = retrain.load_previous(Path(cfg.from_run)) if cfg.from_run else None
    if previous is not None:
        retrain.adopt(cfg, previous)
    out.mkdir(parents=True, exist_ok=True)

    dataset = data.scan(cfg.data)
    if previous is not None:
        dataset.classes = retrain.classes(previous, dataset)
    if resuming:
        splits = data.load_splits(out / "splits.json")
    elif previous is not None and dataset.presplit is None:
        splits = retrain.carry_splits(previous, dataset.items, cfg.seed)
    else:
        splits = data.split(dataset, cfg.seed)
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
    # Only what was read counts: splits.json, the summary, the card's counts and fingerprint, the report.
    dataset = dataset.used([item for items in splits.values() for item in items], skipped)
    data.save_splits(out / "splits.json", splits, dataset.classes, cfg.seed)
    say(dataset.summary())
    if not default_good_labels(dataset.classes):
        say(f"warning: no class is named {', '.join(GOOD_NAMES)}, so none is good: the metrics have no defect "
            "roll-up and a device refuses the model (every part would be a defect)")
    say(f"input {height}x{width} ({cfg.resize_mode}), {cfg.architecture} width {cfg.width}, "
        f"{len(arrays['train'][0])} train / {len(arrays['val'][0])} val / {len(arrays['test'][0])} test images")

    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()  # the same seed and data give the same model
    state = _State()
    model: Any  # a keras.Model: keras's own annotations say load_model may return a function, or None
    if resuming:
        state = _State(**json.loads((out / CHECKPOINT_STATE).read_text()))
        model = load_model(out / CHECKPOINT)
        say(f"resuming after epoch {state.epoch} (best so far: epoch {state.best_epoch})")
    elif previous is not None:
        model = retrain.start_model(previous, len(dataset.classes))
        say(f"starting from {previous.run}'s weights")
    else:
        model = build_model(cfg, len(dataset.classes), height, width)
    weights = class_weights(arrays["train"][1], len(dataset.classes), cfg.class_weights)
    if weights:
        say("class weights: " + ", ".join(f"{dataset.classes[i]} {w:.2f}" for i, w in weights.items()))
    train_ds = _tf_dataset(*arrays["train"], cfg.batch_size, cfg.seed,
                           build_augmenter(cfg.augment, cfg.augment_strength, cfg.seed))
    val_ds = _tf_dataset(*arrays["val"], cfg.batch_size, cfg.seed)
    deadline = started + cfg.minutes * 60
    steps = math.ceil(len(arrays["train"][0]) / cfg.batch_size)
    fine_tune = cfg.architecture == "mobilenetv2" and bool(cfg.weights) and cfg.fine_tune_epochs > 0
    stages = [("train", cfg.epochs, cfg.learning_rate)]
    if fine_tune:
        stages.append(("fine-tune", cfg.fine_tune_epochs, cfg.learning_rate / 10))

    def run_stages() -> None:
        for index, (stage, stage_epochs, learning_rate) in enumerate(stages):
            if index < state.stage:
                continue
            if index > state.stage or not resuming:  # entering the stage; a resumed one keeps its optimizer
                state.stage, state.stage_start, state.wait = index, state.epoch, 0
                state.learning_rate, state.drops, state.done = learning_rate, 0, False
                state.best_smooth = state.smooth_val_loss = math.inf
                if stage == "fine-tune":
                    say(f"fine-tuning the top {cfg.fine_tune_fraction:.0%} of the backbone at learning rate "
                        f"{learning_rate:g}")
                    model.load_weights(out / BEST_WEIGHTS)
                    set_fine_tuning(model, cfg.fine_tune_fraction)
                _compile(model, learning_rate)
            elif resuming:
                model.optimizer.learning_rate.assign(state.learning_rate)
            if not state.done:  # a resumed stage may have converged already
                model.fit(train_ds, validation_data=val_ds, initial_epoch=state.epoch,
                          epochs=state.stage_start + stage_epochs, class_weight=weights, verbose=0,
                          shuffle=False,  # the dataset shuffles itself
                          callbacks=[_make_checkpointer(out, state, cfg, deadline, EpochProgress(
                              state.stage_start + stage_epochs, steps, deadline,
                              prefix="fine-tune " if stage == "fine-tune" else "", lines=not quiet), say, on_epoch)])

    interrupted = fit_keeping_best(run_stages, model, out, state, say)
    model.save(out / "model.keras")
    (out / "labels.txt").write_text("\n".join(dataset.classes) + "\n")

    x_test, y_test = arrays["test"]
    scores = predict_scores(model, x_test)
    metrics: dict[str, Any] = {"test": classification_metrics(y_test, scores, dataset.classes),
               "history": state.history,
               "best_epoch": state.best_epoch,
               "interrupted": interrupted,
               "skipped": [{"path": p, "reason": r} for p, r in dataset.skipped],
               "train_seconds": round(time.monotonic() - started, 1)}
    if previous is not None:
        old_scores = predict_scores(load_model(previous.run / "model.keras"), x_test)
        metrics["compare"] = retrain.compare(previous, dataset.classes, splits["test"], y_test, scores, old_scores)
        say(retrain.describe(metrics["compare"]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    now = datetime.now(UTC)
    card = ModelCard(
        name=out.name or "linewatch-model", version=now.strftime("%Y%m%d%H%M%S"),
        created=now.isoformat(timespec="seconds"), architecture=cfg.architecture,
        input=InputSpec(height=height, width=width, resize_mode=cfg.resize_mode),
        labels=dataset.classes, good_labels=default_good_labels(dataset.classes),
        thresholds={c: 0.5 for c in dataset.classes},
        dataset={"fingerprint": dataset.fingerprint(), "counts": dataset.counts()},
        training=card_training(cfg),
        metrics={"test_accuracy": metrics["test"]["accuracy"],
                 "defect_miss_rate": metrics["test"]["defect"]["miss_rate"],
                 "false_alarm_rate": metrics["test"]["defect"]["false_alarm_rate"]})
    (out / "model_card.json").write_text(card.to_json())
    if cfg.report:
        from linewatch.train.report import write_report

        write_report(out, f"linewatch training report: {out.name}", metrics["test"], dataset.classes, x_test,
                     y_test, scores, history=state.history, skipped=metrics["skipped"], summary=dataset.summary(),
                     extra=retrain.comparison_html(metrics["compare"]) if previous is not None else "")
    say(f"test {describe(metrics['test'])}; run folder {out} ({metrics['train_seconds']} s)")
    return metrics


def write_run_report(run: Path) -> Path:
    """``report.html`` and its plots for a run folder trained with ``report=False`` (a search's winner)."""
    from linewatch.train.layers import load_model
    from linewatch.train.report import write_report

    card = ModelCard.model_validate_json((run / "model_card.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert card.input is not None  # the trainer always writes it
    x, y, _, _ = data.load_images(data.load_splits(run / "splits.json")["test"], card.labels, card.input.height,
                                  card.input.width, card.input.resize_mode)
    scores = predict_scores(load_model(run / "model.keras"), x)
    return write_report(run, f"linewatch training report: {run.name}", metrics["test"], card.labels, x, y, scores,
                        history=metrics["history"], skipped=metrics["skipped"])

