"""Architectures. Normalization lives inside the model, so the device feeds raw pixels.

Every layer is one that full-integer quantization handles well: convolutions with batch
norm (folded at export) and ReLU, pooling, one dense layer, softmax.
"""

from __future__ import annotations

import keras
from keras import layers


def build_cnn(num_classes: int, height: int, width: int, width_multiplier: float = 1.0) -> keras.Model:
    """A small CNN from scratch, fast on two CPU cores and on a Pi.

    Global max pooling sits beside average pooling because defects are small: a scratch
    lights up a few positions of the last feature map, which an average would wash out.
    """
    def filters(n: int) -> int:
        return max(8, int(n * width_multiplier))

    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="normalize")(inputs)
    for i, n in enumerate((16, 32, 64, 96)):
        x = layers.Conv2D(filters(n), 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        if i < 3:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Concatenate(name="pool")([layers.GlobalMaxPooling2D()(x), layers.GlobalAveragePooling2D()(x)])
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="linewatch_cnn")
