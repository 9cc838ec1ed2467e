"""Anomaly detection learned from good photos only: for defects nobody has photographed yet.

Nothing pretrained can be downloaded, so every method but ``features`` learns from scratch on a
few hundred good photos, and each gives a heat map (where) whose largest cell is the score (how much):

- ``scars``: a small fully convolutional network learns to find synthetic defects (scars, blobs,
  patches cut from elsewhere in the photo) drawn on good photos, one cell of its map per 8x8
  pixels. What it learns is "this does not belong on a good part", which a real scratch, crack
  or stain also is; a whole other object has no such mark.
- ``memory``: the distance to the nearest good photo, for a whole other object (another digit,
  the wrong part, an empty belt); a mark of a few pixels hardly moves it. One cell.
- ``combined`` (the default): both, each in units of its own threshold, the larger counting.
- ``autoencoder``: squeezes a good photo through a bottleneck and rebuilds it; the heat map
  is the reconstruction error, averaged over cells.
- ``features`` (with ``--weights``, a local MobileNetV2 file): each cell's pretrained features
  against the nearest good cell, as PatchCore does.

docs/anomaly.md compares them. The threshold is set on held-out good photos at
``--false-alarm``, and scores are scaled so that 1.0 is that threshold.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.edge.errors import DataError, UsageError
from linewatch.edge.model.card import AnomalySpec, InputSpec, ModelCard
from linewatch.edge.model.engine import heat_map_peaks
from linewatch.train import data
from linewatch.train.config import TrainConfig
from linewatch.train.console import EpochProgress

CELL = 8  # pixels a side of one heat-map cell (the scar detector pools three times)


def _colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """Any colour, but grey half the time: scratches and cracks are darker or lighter, rarely coloured."""
    if rng.random() < 0.5:
        grey = float(rng.uniform(0, 255))
        return grey, grey, grey
    blue, green, red = (float(c) for c in rng.uniform(0, 255, 3))
    return blue, green, red


def synthetic_defect(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A good photo (HxWx3, 0..255) with one made-up defect: a scar, a blob, or a patch from elsewhere."""
    out = image.astype(np.float32).copy()
    h, w = out.shape[:2]
    kind = rng.integers(3)
    if kind == 0:  # a scar: a stroke of any colour and length, more or less see-through
        over = out.copy()
        x0, y0 = int(rng.integers(w)), int(rng.integers(h))
        length, angle = rng.uniform(0.05, 0.4) * max(h, w), rng.uniform(0, math.pi)
        end = (int(x0 + length * math.cos(angle)), int(y0 + length * math.sin(angle)))
        cv2.line(over, (x0, y0), end, _colour(rng), int(rng.integers(1, max(2, h // 32) + 1)))
        alpha = rng.uniform(0.5, 1.0)
        out = alpha * over + (1 - alpha) * out
    elif kind == 1:  # a blob, more or less see-through
        over = out.copy()
        axes = (int(rng.integers(2, max(3, w // 6))), int(rng.integers(2, max(3, h // 6))))
        cv2.ellipse(over, (int(rng.integers(w)), int(rng.integers(h))), axes, float(rng.uniform(0, 180)), 0, 360,
                    _colour(rng), -1)
        alpha = rng.uniform(0.4, 1.0)
        out = alpha * over + (1 - alpha) * out
    else:  # a patch of the photo itself, flipped and relit, pasted elsewhere
        ph, pw = int(rng.integers(max(2, h // 8), max(3, h // 3))), int(rng.integers(max(2, w // 8), max(3, w // 3)))
        y0, x0, y1, x1 = rng.integers(h - ph), rng.integers(w - pw), rng.integers(h - ph), rng.integers(w - pw)
        patch = out[y0 : y0 + ph, x0 : x0 + pw][::-1] * rng.uniform(0.6, 1.4)
        out[y1 : y1 + ph, x1 : x1 + pw] = patch
    return np.clip(out, 0, 255)


def build_scar_detector(height: int, width: int, width_mult: float) -> tuple[Any, Any]:
    """(the image-level classifier it is trained as, the heat-map model it runs as), sharing weights."""
    import keras
    from keras import layers

    inputs = keras.Input((height, width, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64, 96):
        x = layers.Conv2D(max(8, round(filters * width_mult)), 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)  # no batch normalization: a few hundred steps leave its averages unsettled
    for dilation in (1, 2, 4):  # context: is this mark on the part, or the belt's own seam?
        x = layers.Conv2D(max(8, round(96 * width_mult)), 3, padding="same", dilation_rate=dilation,
                          activation="relu")(x)
    logits = layers.Conv2D(1, 1, name="cell_logits")(x)
    trained = keras.Model(inputs, layers.GlobalMaxPooling2D()(logits), name="scar_detector")
    heat = keras.Model(inputs, layers.Activation("sigmoid", name="heat_map")(logits), name="anomaly")
    return trained, heat


def build_autoencoder(height: int, width: int, width_mult: float) -> tuple[Any, Any]:
    """(the reconstructing model it is trained as, the error-map model it runs as), sharing weights."""
    import keras
    from keras import layers

    inputs = keras.Input((height, width, 3))
    normalized = layers.Rescaling(1 / 255)(inputs)
    x = normalized
    for filters in (32, 64, 64):
        x = layers.Conv2D(max(8, round(filters * width_mult)), 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(4, 1, activation="relu")(x)  # the bottleneck: 4 numbers per 8x8 pixels
    for filters in (64, 64, 32):
        x = layers.Conv2DTranspose(max(8, round(filters * width_mult)), 3, strides=2, padding="same",
                                   activation="relu")(x)
    rebuilt = layers.Conv2D(3, 3, padding="same", activation="sigmoid")(x)
    trained = keras.Model(inputs, rebuilt, name="autoencoder")
    error = layers.Subtract()([normalized, rebuilt])
    error = layers.Multiply()([error, error])
    error = layers.AveragePooling2D(CELL)(error)
    mean = keras.initializers.Constant(1 / 3)  # of the three colour channels' errors
    heat_map = layers.Conv2D(1, 1, use_bias=False, trainable=False, name="heat_map",
                             kernel_initializer=mean)  # pyright: ignore[reportArgumentType] (keras's types: a str)
    heat = keras.Model(inputs, heat_map(error), name="anomaly")
    return trained, heat


MEMORY_METHODS = ("memory", "combined", "features")  # the methods whose model holds good photos
MEMORY_SIDE = 32  # the memory compares photos at about this many pixels a side: the shape, not the grain
MEMORY_PHOTOS = 1000  # good photos it keeps at most (a row each of a constant in the converted model)
FEATURE_LAYER = "block_6_expand_relu"  # MobileNetV2's first map at 1/8 of the photo: texture, and where
FEATURE_ROWS = 1000  # cells of good photos the feature memory keeps: each costs every cell of a frame a distance


def _gaussian_kernel(sigma: float = 1.0, size: int = 5) -> np.ndarray:
    """A blur kernel for each of three channels (size x size x 3 x 1)."""
    line = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    kernel = np.outer(line, line) / np.outer(line, line).sum()
    return np.repeat(kernel[:, :, None, None], 3, axis=2).astype(np.float32)


def build_memory(x_good: np.ndarray, rng: np.random.Generator) -> tuple[Any, np.ndarray]:
    """The nearest good photo: the distance to the closest of ``x_good``, each blurred, shrunk and scaled.

    Returns the model and the score of each kept photo against the others (leave one out): good
    scores the memory gives without any held-out photo.

    One number per photo (a heat map of one cell), for anomalies that are a whole other object, not
    a mark on the right one; photos are compared pixel by pixel, so the part must sit about where
    it sat in the good ones. Blurring first lets a stroke a pixel off still match; taking away the
    photo's mean and scaling to unit length make it blind to the light and to the background's
    share of the photo. The memory is a constant of the model, and its distances are int8 ops
    (``NearestDistance`` says how they keep their precision).
    """
    import keras
    from keras import layers

    from linewatch.train.layers import UnitLength

    height, width = x_good.shape[1:3]
    pool = math.ceil(math.sqrt(height * width / MEMORY_SIDE**2))
    inputs = keras.Input((height, width, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    blur = layers.Conv2D(1, 5, padding="same", use_bias=False, trainable=False, name="grey_blur")
    x = blur(x)
    blur.set_weights([_gaussian_kernel() / 3])
    if pool > 1:
        x = layers.AveragePooling2D(pool)(x)
    x = layers.Subtract()([x, layers.GlobalAveragePooling2D(keepdims=True)(x)])  # the part, not the light
    x = UnitLength()(layers.Flatten()(x))
    kept = x_good[rng.permutation(len(x_good))[:MEMORY_PHOTOS]].astype(np.float32)
    encoder: Any = keras.Model(inputs, x)  # keras's types want verbose a str
    features = np.asarray(encoder.predict(kept, batch_size=64, verbose=0))
    distance, alone = nearest_of(features, x, "differences")
    return keras.Model(inputs, layers.Reshape((1, 1, 1), name="heat_map")(distance), name="memory"), alone


def build_feature_memory(x_good: np.ndarray, weights: str, width_mult: float, rng: np.random.Generator) -> Any:
    """PatchCore's idea on a local backbone: each cell's features against the nearest of the good photos' cells.

    The features are MobileNetV2's (``weights``, a local file) at 1/8 of the photo, each cell
    averaged with its neighbours; the memory is a random sample of the good photos' cells (the
    paper picks a greedy coreset). The heat map is the distance per cell: where, at the features'
    own resolution.
    """
    import keras
    from keras import layers

    from linewatch.train.layers import UnitLength
    from linewatch.train.model import mobilenetv2_backbone

    height, width = x_good.shape[1:3]
    try:
        backbone = mobilenetv2_backbone(height, width, width_mult, weights)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    inputs = keras.Input((height, width, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.Model(backbone.inputs, backbone.get_layer(FEATURE_LAYER).output, name="features")(x)
    x = layers.AveragePooling2D(3, strides=1, padding="same")(x)
    rows, cols, channels = x.shape[1:]
    x = UnitLength()(layers.Reshape((rows * cols, channels))(x))  # int8 keeps a distance's steps on a unit scale
    encoder: Any = keras.Model(inputs, x)
    cells = np.asarray(encoder.predict(x_good.astype(np.float32), batch_size=64, verbose=0)).reshape(-1, channels)
    kept = cells[rng.permutation(len(cells))[:FEATURE_ROWS]]
    distance, _ = nearest_of(kept, x, "products")
    return keras.Model(inputs, layers.Reshape((rows, cols, 1), name="heat_map")(distance), name="features")


def nearest_of(rows: np.ndarray, x: Any, by: str) -> tuple[Any, np.ndarray]:
    """The squared distance from ``x`` to the nearest of ``rows`` (a constant of the model), as a tensor.

    Past twice the largest distance from a row to its nearest other row, every distance reads as
    that; ``by`` is how int8 computes it (``NearestDistance``). Also returns each row's distance to
    its nearest other row.
    """
    from linewatch.train.layers import NearestDistance

    squares = (rows**2).sum(axis=1)
    between = squares[:, None] + squares[None, :] - 2 * rows @ rows.T
    np.fill_diagonal(between, np.inf)
    memory = NearestDistance(len(rows), rows.shape[1], float(2 * between.min(axis=1).max()), by, name="memory")
    distance = memory(x)
    memory.set_weights([rows.astype(np.float32)])
    return distance, between.min(axis=1)


def combine(parts: list[tuple[Any, np.ndarray]], x_val: np.ndarray, false_alarm: float) -> Any:
    """Several heat-map models as one: each in units of its own threshold, the largest counts.

    Each part comes with the good scores it already knows (the memory's photos scored leave one
    out; none for a network), and its threshold is set on those and its scores of ``x_val``. In
    those units a good photo stays below 1 in every part, so a part that cannot tell this kind of
    anomaly from a good photo adds little noise, while a part that can flags it alone. The more
    good scores, the surer the threshold: set on 45 held-out photos alone, the memory's let 2 of 12
    good photos of another seed through, against 1 (at 1.01) with its 212 photos' own scores.
    """
    import keras
    from keras import layers

    inputs = keras.Input(x_val.shape[1:])
    scaled = []
    for part, known in parts:
        threshold = threshold_for(np.concatenate([known, heat_map_peaks(heat_maps(part, x_val))]), false_alarm)
        scaled.append(layers.Rescaling(1 / threshold, name=f"{part.name}_in_threshold_units")(part(inputs)))
    return keras.Model(inputs, layers.Maximum(name="heat_map")(scaled), name="combined")


def heat_maps(model: Any, x: np.ndarray) -> np.ndarray:
    """The heat map of every image (N x h x w), as the model computes it."""
    return np.asarray(model.predict(x, batch_size=64, verbose=0))[..., 0]


def ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    order = values.argsort(kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(values[order])) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranked = np.empty(len(values))
    ranked[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranked


def auroc(good: np.ndarray, bad: np.ndarray) -> float:
    """Area under the ROC curve: the chance a bad image scores above a good one (ties count half)."""
    if not len(good) or not len(bad):
        return float("nan")
    ranked = ranks(np.concatenate([good, bad]))
    return float((ranked[len(good):].sum() - len(bad) * (len(bad) + 1) / 2) / (len(good) * len(bad)))


def roc_curve(good: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False-alarm rate and detection rate at every threshold, from strictest to loosest."""
    thresholds = np.unique(np.concatenate([good, bad]))[::-1]
    false_alarm = np.array([0.0] + [(good >= t).mean() for t in thresholds])
    detected = np.array([0.0] + [(bad >= t).mean() for t in thresholds])
    return false_alarm, detected


def threshold_for(good: np.ndarray, false_alarm: float) -> float:
    """The raw score that at most ``false_alarm`` of these good images pass (just above the next one down)."""
    ranked = np.sort(good)[::-1]
    allowed = int(math.floor(false_alarm * len(ranked)))
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else float(ranked[-1])


def evaluate_scores(good: np.ndarray, bad_by_class: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """AUROC overall and per anomalous class, and what the threshold does on these images."""
    bad = np.concatenate(list(bad_by_class.values())) if bad_by_class else np.zeros(0)
    return {
        "auroc": round(auroc(good, bad), 4),
        "per_class": {label: {"auroc": round(auroc(good, scores), 4),
                              "detection_rate": round(float((scores >= threshold).mean()), 4),
                              "support": len(scores)} for label, scores in bad_by_class.items()},
        "false_alarm_rate": round(float((good >= threshold).mean()), 4),
        "detection_rate": round(float((bad >= threshold).mean()), 4) if len(bad) else None,
        "good": len(good), "anomalous": len(bad),
    }


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same part a little shifted, flipped and relit, as it comes down the belt."""
    h, w = image.shape[:2]
    out = np.roll(image, (int(rng.integers(-h // 16, h // 16 + 1)), int(rng.integers(-w // 16, w // 16 + 1))),
                  axis=(0, 1))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return np.clip(out.astype(np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12), 0, 255)


def _scarred_pairs(x: np.ndarray, rng: np.random.Generator, jitter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each good image (jittered) next to itself with a synthetic defect: labels 0, 1, 0, 1...

    Both of a pair land in the same batch, so telling them apart cannot come from knowing the
    photo: only the defect differs. Without that the network learns the 200 photos by heart.
    """
    clean = np.stack([_jitter(image, rng) if jitter else image.astype(np.float32) for image in x])
    pairs = np.empty((2 * len(x), *x.shape[1:]), np.float32)
    pairs[0::2], pairs[1::2] = clean, np.stack([synthetic_defect(image, rng) for image in clean])
    return pairs, np.tile([0.0, 1.0], len(x))[:, None]


def fit_network(method: str, cfg: TrainConfig, x_train: np.ndarray, x_val: np.ndarray, out: Path, deadline: float,
                say: Any) -> tuple[Any, dict[str, list[float]], int, bool]:
    """Train the scar network or the autoencoder on good photos: (heat-map model, history, best epoch, interrupted)."""
    import keras
    import tensorflow as tf

    from linewatch.train.trainer import _make_checkpointer, _State, fit_keeping_best

    height, width = x_train.shape[1:3]
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    scars = method == "scars"
    trained, heat = (build_scar_detector if scars else build_autoencoder)(height, width, cfg.width)
    batch = max(2, cfg.batch_size // 2 * 2) if scars else cfg.batch_size  # the scar network's: whole pairs
    if scars:
        loss: Any = keras.losses.BinaryCrossentropy(from_logits=True)
        val_set = _scarred_pairs(x_val, np.random.default_rng(cfg.seed + 1), jitter=False)
        steps = math.ceil(4 * len(x_train) / batch)  # each photo twice, each with its scarred twin
    else:
        loss = "mse"
        val_set = (x_val.astype(np.float32), x_val / 255.0)
        steps = math.ceil(len(x_train) / batch)
    # The scar network has no batch normalization: at the classifier's learning rate one large step could
    # kill every unit for good (the loss back at ln 2 and staying there; one seed in three on the line).
    # Half the rate and clipped gradients keep it learning.
    rate = cfg.learning_rate / 2 if scars else cfg.learning_rate
    state = _State(learning_rate=rate)
    shown = [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)] if scars else []
    trained.compile(optimizer=keras.optimizers.Adam(rate, clipnorm=1.0 if scars else None), loss=loss, metrics=shown)
    checkpointer = _make_checkpointer(out, state, cfg, deadline, EpochProgress(cfg.epochs, steps, deadline), say,
                                      None)

    def fit() -> None:
        if not scars:
            train_set = tf.data.Dataset.from_tensor_slices((x_train.astype(np.float32), x_train / 255.0)) \
                .shuffle(len(x_train), seed=cfg.seed).batch(batch)
            trained.fit(train_set, epochs=cfg.epochs, verbose=0, validation_data=val_set, callbacks=[checkpointer])
            return
        # Fresh defects (and jitter) every epoch, so the network learns defects, not these defects. One fit
        # per epoch on arrays made for it: a keras PyDataset doing the same took about twice as long.
        rng = np.random.default_rng(cfg.seed)
        for epoch in range(cfg.epochs):
            x, y = _scarred_pairs(x_train[rng.permutation(np.tile(np.arange(len(x_train)), 2))], rng)
            trained.fit(x, y, batch_size=batch, shuffle=False, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
                        validation_data=val_set, callbacks=[checkpointer])
            if state.done:
                break

    interrupted = fit_keeping_best(fit, trained, out, state, say)
    return heat, state.history, state.best_epoch, interrupted


def train_anomaly(cfg: TrainConfig, say: Any = print) -> dict[str, Any]:
    """Train on the good classes of ``cfg.data`` and write a run folder ``linewatch convert`` takes."""
    from linewatch.train.trainer import card_training

    started = time.monotonic()
    if cfg.anomaly_method == "features" and not cfg.weights:
        raise UsageError("--anomaly-method features compares pretrained features: give --weights FILE, a local "
                         "MobileNetV2 no-top file of the same --width (docs/anomaly.md)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data.scan(cfg.data)
    unknown = [g for g in cfg.good if g not in dataset.classes]
    if unknown:
        raise DataError(f"--good names {', '.join(unknown)} but {dataset.root} has only "
                        f"{', '.join(dataset.classes)}: name the good class folders")
    splits = data.split(dataset, cfg.seed)
    height, width = cfg.size or data.auto_size(splits["train"])
    cfg.size = (height, width)
    (out / "train_config.json").write_text(cfg.model_dump_json(indent=1))
    arrays, skipped = {}, list(dataset.skipped)
    for name, items in splits.items():
        x, y, splits[name], bad = data.load_images(items, dataset.classes, height, width, cfg.resize_mode)
        arrays[name], skipped = (x, y), skipped + bad
    dataset = dataset.used([item for items in splits.values() for item in items], skipped)
    data.save_splits(out / "splits.json", splits, dataset.classes, cfg.seed)
    good_index = [dataset.classes.index(g) for g in cfg.good]

    def good_of(name: str) -> np.ndarray:
        x, y = arrays[name]
        return x[np.isin(y, good_index)]

    x_train, x_val = good_of("train"), good_of("val")
    if len(x_train) < 10 or len(x_val) < 3:
        raise DataError(f"{len(x_train)} training and {len(x_val)} validation photos of {', '.join(cfg.good)}: "
                        "an anomaly model needs some tens of good photos at least")
    say(dataset.summary())
    say(f"anomaly ({cfg.anomaly_method}) at {height}x{width}: trained on {len(x_train)} good photos "
        f"({', '.join(cfg.good)}), threshold from {len(x_val)} held-out ones; other classes only tested")

    rng = np.random.default_rng(cfg.seed)
    deadline = started + cfg.minutes * 60
    history: dict[str, list[float]] = {}
    best_epoch, interrupted = 0, False
    parts: dict[str, Any] = {}  # of a combined model: each part alone, measured beside the whole
    if cfg.anomaly_method == "memory":
        heat, _ = build_memory(x_train, rng)
    elif cfg.anomaly_method == "features":
        heat = build_feature_memory(x_train, cfg.weights or "", cfg.width, rng)
    else:
        network = "autoencoder" if cfg.anomaly_method == "autoencoder" else "scars"
        heat, history, best_epoch, interrupted = fit_network(network, cfg, x_train, x_val, out, deadline, say)
        if cfg.anomaly_method == "combined":
            memory, alone = build_memory(x_train, rng)
            parts = {network: heat, "memory": memory}
            heat = combine([(heat, np.zeros(0)), (memory, alone)], x_val, cfg.false_alarm)
    heat.save(out / "model.keras")

    val_scores = heat_map_peaks(heat_maps(heat, x_val))
    scale = threshold_for(val_scores, cfg.false_alarm)
    x_test, y_test = arrays["test"]
    test_scores = heat_map_peaks(heat_maps(heat, x_test)) / scale
    is_good = np.isin(y_test, good_index)
    bad_by_class = {label: test_scores[y_test == i] for i, label in enumerate(dataset.classes)
                    if i not in good_index and (y_test == i).any()}
    metrics: dict[str, Any] = {"task": "anomaly", "test": evaluate_scores(test_scores[is_good], bad_by_class, 1.0),
               "history": history, "best_epoch": best_epoch, "interrupted": interrupted,
               "skipped": [{"path": p, "reason": r} for p, r in dataset.skipped],
               "train_seconds": round(time.monotonic() - started, 1)}
    if parts:
        peaks = {name: heat_map_peaks(heat_maps(part, x_test)) for name, part in parts.items()}
        metrics["parts"] = {name: {"auroc": round(auroc(p[is_good], p[~is_good]), 4)} for name, p in peaks.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "labels.txt").write_text("\n".join(cfg.good) + "\n")
    now = datetime.now(UTC)
    card = ModelCard(
        name=out.name or "linewatch-anomaly", version=now.strftime("%Y%m%d%H%M%S"),
        created=now.isoformat(timespec="seconds"), architecture=cfg.anomaly_method, task="anomaly",
        anomaly=AnomalySpec(method=cfg.anomaly_method, score_scale=scale, false_alarm=cfg.false_alarm),
        input=InputSpec(height=height, width=width, resize_mode=cfg.resize_mode),
        labels=list(cfg.good), good_labels=list(cfg.good),
        dataset={"fingerprint": dataset.fingerprint(), "counts": dataset.counts()},
        training=card_training(cfg),
        metrics={"test_auroc": metrics["test"]["auroc"], "false_alarm_rate": metrics["test"]["false_alarm_rate"],
                 "detection_rate": metrics["test"]["detection_rate"]})
    (out / "model_card.json").write_text(card.to_json())
    if cfg.report:
        from linewatch.train.report import write_anomaly_report

        order = np.argsort(-test_scores)[:8]
        write_anomaly_report(out, f"linewatch anomaly report: {out.name}", metrics["test"], test_scores[is_good],
                             bad_by_class, x_test[order], heat_maps(heat, x_test[order]), test_scores[order],
                             [dataset.classes[i] for i in y_test[order]], history=history,
                             summary=dataset.summary())
    say(f"test AUROC {metrics['test']['auroc']:.4f}, false alarms {metrics['test']['false_alarm_rate']:.2%}, "
        f"detected {metrics['test']['detection_rate'] or 0:.2%} at the threshold; run folder {out} "
        f"({metrics['train_seconds']} s)")
    return metrics
