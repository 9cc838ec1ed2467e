"""Architectures. Normalization lives inside the model, so the device feeds raw pixels.

Every layer is one that full-integer quantization handles well: convolutions with batch
norm (folded at export) and ReLU/ReLU6, pooling, one dense layer, softmax.
"""

from __future__ import annotations

import keras
from keras import layers

ARCHITECTURES = ("cnn", "mobilenetv2")


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


def published_weights_name(alpha: float, size: int = 224) -> str:
    """The name of Keras' ImageNet "no top" MobileNetV2 file for ``alpha`` (docs/training.md says where it lives)."""
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{size}_no_top.h5"


def mobilenetv2_backbone(height: int, width: int, width_multiplier: float = 1.0,
                         weights: str | None = None) -> keras.Model:
    """MobileNetV2 without its top, named ``backbone``, with ``weights`` from a local file (random without).

    ``weights`` is for example the ImageNet "no top" file for the same alpha: nothing is
    downloaded at run time. Raises ValueError, naming the file to use, when they do not fit.
    """
    if min(height, width) < 32:
        raise ValueError("mobilenetv2 needs an input of at least 32x32: use --size 32 or larger")
    backbone = keras.applications.MobileNetV2(input_shape=(height, width, 3), alpha=width_multiplier,
                                              include_top=False, weights=None,  # pyright: ignore[reportArgumentType]
                                              pooling="avg")  # weights=None: random (keras's types say a str)
    backbone.name = "backbone"
    if weights:
        try:
            backbone.load_weights(weights)
        except (ValueError, OSError, KeyError) as exc:
            raise ValueError(f"{weights} does not fit MobileNetV2 at --width {width_multiplier:g} "
                             f"({str(exc).splitlines()[0][:120]}): use the published no-top file of the same width, "
                             f"{published_weights_name(width_multiplier)}") from None
    return backbone


def build_mobilenetv2(num_classes: int, height: int, width: int, width_multiplier: float = 1.0,
                      weights: str | None = None) -> keras.Model:
    """MobileNetV2 with a ``width_multiplier`` (alpha) and a new classification head.

    Without ``weights`` the backbone trains from scratch. The backbone is the layer named
    ``backbone``, so it can be frozen and partly unfrozen for fine-tuning.
    """
    backbone = mobilenetv2_backbone(height, width, width_multiplier, weights)
    if not weights:
        # Keras builds it with momentum 0.999, tuned for ImageNet-sized epochs: on a few hundred
        # photos the moving statistics would lag for dozens of epochs and validation would stall.
        for layer in backbone.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = 0.9
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = backbone(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="scores")(x)
    return keras.Model(inputs, outputs, name="linewatch_mobilenetv2")


def set_fine_tuning(model: keras.Model, fraction: float) -> None:
    """Unfreeze the top ``fraction`` of the backbone's layers; batch norm stays frozen."""
    backbone = model.get_layer("backbone")
    backbone.trainable = True
    cut = int(len(backbone.layers) * (1 - fraction))
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
