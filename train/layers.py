"""The Keras layers linewatch adds, and the one way to load a saved model that may hold them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="linewatch")
class UnitLength(layers.Layer):
    """Each vector scaled to length 1.

    Written so that the TFLite converter fuses it into one int8 ``L2_NORMALIZATION``: Keras's own
    ``UnitNormalization`` leaves float ``SQUARE`` and ``RSQRT`` ops that an int8 model cannot run.
    """

    def call(self, inputs: Any) -> Any:
        return inputs * ops.rsqrt(ops.maximum(ops.sum(ops.square(inputs), axis=-1, keepdims=True), 1e-12))


def load_model(path: Path | str) -> Any:
    """A saved ``.keras`` model (a keras.Model: keras's own annotations say it may be a function, or None)."""
    return keras.models.load_model(path)


@keras.saving.register_keras_serializable(package="linewatch")
class NearestDistance(layers.Layer):
    """The squared distance from each unit vector to the nearest row of a fixed memory, at most ``ceiling``.

    int8 decides how: ``L2_NORMALIZATION`` returns vectors a few percent longer or shorter than 1,
    and each op's output has 256 steps over the range calibration saw.

    - ``by="differences"`` sums squared differences: a length error moves a distance only in
      proportion to itself. Right for long dense vectors (a whole photo), whose differences are
      all small: their steps are fine.
    - ``by="products"`` takes 1 + |x|^2 - 2 x.m from dot products, |x|^2 measured on the same
      int8 vector, so its length error cancels. Right for short sparse vectors (a network's
      features): one large element would make a difference's steps too coarse for the rest.

    The ceiling keeps the steps for the distances that matter: the farthest all read as it.
    """

    def __init__(self, rows: int, dims: int, ceiling: float, by: str = "differences", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rows, self.dims, self.ceiling, self.by = rows, dims, ceiling, by
        self.memory = self.add_weight(shape=(rows, dims), initializer="zeros", trainable=False, name="memory")

    def call(self, inputs: Any) -> Any:  # (batch, [positions,] dims) to (batch, [positions,] 1)
        if self.by == "differences":
            squared = ops.sum(ops.square(ops.expand_dims(inputs, -2) - self.memory), axis=-1)
            return ops.minimum(ops.min(squared, axis=-1, keepdims=True), self.ceiling)
        closest: Any = ops.max(ops.matmul(inputs, ops.transpose(self.memory)), axis=-1, keepdims=True)
        length: Any = ops.sum(inputs * inputs, axis=-1, keepdims=True)  # keras's types: maybe None
        return ops.minimum(ops.relu(length + 1.0 - 2.0 * closest), self.ceiling)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rows": self.rows, "dims": self.dims, "ceiling": self.ceiling, "by": self.by}
