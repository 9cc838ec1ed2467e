"""Training-time augmentation, applied in the tf.data pipeline and never exported with the model.

Flips are off by default: they are harmless for parts on a belt but turn a 6 into a 9 or
a left-hand bracket into a right-hand one. Switch them on with ``--augment ...,flip``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

AUGMENTATIONS = ("flip", "rotate", "zoom", "color", "noise")
DEFAULT_AUGMENT = ("rotate", "zoom", "color", "noise")


def parse_augment(text: str) -> tuple[str, ...]:
    """``rotate,zoom`` → ("rotate", "zoom"); ``none`` → ()."""
    if text.strip().lower() in ("", "none", "off"):
        return ()
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(unknown)}: choose from {', '.join(AUGMENTATIONS)} or none")
    return names


def build_augmenter(names: Sequence[str], strength: float, seed: int) -> Callable | None:
    """A function of a float image batch (0..255) that returns an augmented batch, or None."""
    if not names or strength <= 0:
        return None
    import keras
    import tensorflow as tf
    from keras import layers

    steps: list[keras.layers.Layer] = []
    if "flip" in names:
        steps.append(layers.RandomFlip("horizontal_and_vertical", seed=seed))
    if "rotate" in names:
        steps.append(layers.RandomRotation(0.08 * strength, fill_mode="reflect", seed=seed))
    if "zoom" in names:
        steps.append(layers.RandomZoom(0.3 * strength, fill_mode="reflect", seed=seed))
    if "color" in names:
        steps.append(layers.RandomBrightness(0.3 * strength, value_range=(0, 255), seed=seed))
        steps.append(layers.RandomContrast(0.3 * strength, value_range=(0, 255), seed=seed))
    noise = 8.0 * strength if "noise" in names else 0.0
    pipeline = keras.Sequential(steps) if steps else None

    def augment(images):
        images = tf.cast(images, tf.float32)
        if pipeline is not None:
            images = pipeline(images, training=True)
        if noise:
            images = images + tf.random.normal(tf.shape(images), stddev=noise)
        return tf.clip_by_value(images, 0.0, 255.0)

    return augment
