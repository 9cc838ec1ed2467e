"""What is inside a ``.tflite``: every op with its tensor types, and what a Coral Edge TPU can run.

Used by ``linewatch convert`` to refuse float ops left in an int8 model, and by
``linewatch inspect`` on the workstation or the Pi.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from linewatch.edge.errors import ModelError
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.engine import find_runtime

# Ops the Edge TPU compiler can map (Coral's supported-operations table), by TFLite builtin name.
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6",
    "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH",
    "TRANSPOSE", "TRANSPOSE_CONV",
})
FLOAT_TYPES = ("float32", "float16", "float64")


@dataclass(frozen=True)
class Op:
    """One op of the graph with the types of its tensors."""

    index: int
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def is_float(self) -> bool:
        """Computes in floating point (a float input or output on the compute path)."""
        return any(t in FLOAT_TYPES for t in self.inputs + self.outputs)

    @property
    def edgetpu(self) -> bool:
        return self.name in EDGETPU_OPS


def _interpreter(model: ModelArtifact) -> Any:
    runtime = find_runtime()
    resolver = getattr(runtime, "OpResolverType", None)
    kwargs = {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if resolver else {}
    try:
        interpreter = runtime.Interpreter(model_content=model.flatbuffer, **kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"{model.path} cannot be loaded by the interpreter ({str(exc).splitlines()[0]}): the file "
                         "is damaged or not a TFLite model, copy or convert it again") from None
    return interpreter


def ops(model: ModelArtifact) -> list[Op]:
    """Every op in execution order, with the dtypes of its inputs and outputs."""
    interpreter = _interpreter(model)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    return [Op(o["index"], o["op_name"], tuple(dtypes[i] for i in o["inputs"] if i >= 0),
               tuple(dtypes[i] for i in o["outputs"] if i >= 0))
            for o in interpreter._get_ops_details()]  # the only op listing the runtime offers


def io_details(model: ModelArtifact) -> dict[str, dict[str, Any]]:
    """Shape, dtype and quantization (scale, zero point) of the input and the output."""
    interpreter = _interpreter(model)

    def describe(d: dict[str, Any]) -> dict[str, Any]:
        scale, zero = d["quantization"]
        return {"shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                "scale": float(scale), "zero_point": int(zero)}

    return {"input": describe(interpreter.get_input_details()[0]),
            "output": describe(interpreter.get_output_details()[0])}


def summary(op_list: list[Op]) -> list[dict[str, Any]]:
    """Ops grouped by name and types: how many, float or not, Edge TPU or not."""
    groups: dict[tuple, dict[str, Any]] = {}
    for op in op_list:
        key = (op.name, op.inputs, op.outputs)
        entry = groups.setdefault(key, {"op": op.name, "inputs": list(op.inputs), "outputs": list(op.outputs),
                                        "count": 0, "float": op.is_float, "edgetpu": op.edgetpu})
        entry["count"] += 1
    return list(groups.values())
