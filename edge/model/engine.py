"""Int8 image classification with the LiteRT interpreter.

The runtime is found in the order a Pi is likely to have it: ``ai_edge_litert`` (LiteRT),
then ``tflite_runtime`` (its frozen old name), then ``tensorflow.lite`` (a workstation).
Inputs are quantized and outputs dequantized with each tensor's own scale and zero point.
``invoke()`` takes a block of frames: on the CPU the interpreter's input is resized to the
block (one call, and XNNPACK's larger matrix products, for what would be many), so a fast
finite source pays the per-call cost once a block.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import cv2
import numpy as np

from linewatch.edge.errors import ModelError
from linewatch.edge.model.artifact import ModelArtifact
from linewatch.edge.model.card import InputSpec
from linewatch.edge.model.images import prepare

logger = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


def find_runtime(candidates: tuple[str, ...] = RUNTIMES) -> ModuleType:
    """The first importable interpreter module, or an error that says what to install."""
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        logger.debug("using interpreter from %s", name)
        return module
    raise ModelError("no TFLite runtime found: pip install ai-edge-litert")


def heat_map_peaks(maps: np.ndarray) -> np.ndarray:
    """Anomaly scores of a block of heat maps: each one's largest cell (a defect is somewhere, not everywhere)."""
    return maps.reshape(len(maps), -1).max(axis=1)


def best_first(scores: list[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, best first; ties keep label order (a stable sort, as argmax)."""
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:k]


@dataclass(slots=True)  # one a frame: slotted, not frozen (pipeline.Frame says why)
class Prediction:
    """Scores for every label, best first in ``top``.

    An anomaly model's labels are ``ModelArtifact.outcomes`` (anomaly, normal), scored
    s / (s + threshold) and its complement, so the label flips where the anomaly score
    passes the threshold; ``anomaly_score`` and ``heat_map`` are its own output.
    """

    scores: np.ndarray
    labels: list[str]
    anomaly_score: float | None = None  # 1.0 = the threshold chosen at training; None for a classifier
    heat_map: np.ndarray | None = None  # h x w, over the prepared frame

    @property
    def anomalous(self) -> bool | None:
        """For an anomaly model, whether the score reached the threshold; None for a classifier."""
        return None if self.anomaly_score is None else self.index == 0

    @property
    def index(self) -> int:
        return int(np.argmax(self.scores))

    @property
    def label(self) -> str:
        return self.labels[self.index]

    @property
    def score(self) -> float:
        return float(self.scores[self.index])

    def top(self, k: int) -> list[tuple[str, float]]:
        values = self.scores.tolist()
        return [(self.labels[i], values[i]) for i in best_first(values, k)]


def default_threads() -> int:
    """One interpreter thread a core, less one on 3 cores or more (a Pi 4 or 5), left to capture and MQTT.

    On 2 cores that would halve the interpreter; there it gets both (benchmarks/results.md has
    both). The interpreter's own default is a single thread.
    """
    cores = os.cpu_count() or 1
    return cores - 1 if cores >= 3 else cores


EDGETPU_LIBRARY = "libedgetpu.so.1"


def load_delegate(runtime: ModuleType, spec: str) -> Any:
    """A delegate by name (``edgetpu``) or by library path; an error says what to install."""
    library = EDGETPU_LIBRARY if spec == "edgetpu" else spec
    loader = getattr(runtime, "load_delegate", None) or runtime.experimental.load_delegate
    try:
        # Open the library first: a Delegate that fails to load prints a traceback from its __del__.
        ctypes.CDLL(library)
        return loader(library)
    except (ValueError, OSError, RuntimeError) as exc:
        hint = "install the Edge TPU runtime (apt install libedgetpu1-std)" if library == EDGETPU_LIBRARY \
            else "check the path"
        raise ModelError(f"cannot load delegate {library} ({str(exc).splitlines()[0]}): {hint}") from None


class Engine:
    """One interpreter for one model; ``predict`` takes a BGR frame as cameras give it.

    ``delegate`` is ``edgetpu`` or a delegate library path; a model compiled for the Edge TPU
    (its card says so) asks for the Edge TPU by itself. With ``cpu_fallback`` a delegate that
    cannot be loaded is logged and the model runs on the CPU instead.
    """

    def __init__(self, model: ModelArtifact, num_threads: int | None = None, delegate: str | None = None,
                 cpu_fallback: bool = False) -> None:
        runtime = find_runtime()
        self.model = model
        self.num_threads = num_threads or default_threads()
        delegate = delegate or model.card.delegate
        delegates = []
        if delegate:
            try:
                delegates.append(load_delegate(runtime, delegate))
            except ModelError as exc:
                if not cpu_fallback:
                    raise
                logger.warning("%s; running on the CPU instead", exc)
        self.delegate = delegate if delegates else None
        try:
            self.interpreter: Any = runtime.Interpreter(model_content=model.flatbuffer, num_threads=self.num_threads,
                                                        experimental_delegates=delegates or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{model.path} cannot be loaded by the interpreter ({str(exc).splitlines()[0]}): "
                             "the file may be truncated, copy it again") from None
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4 or inp[0]["shape"][3] != 3:
            raise ModelError(f"{model.path} does not take one HxWx3 image: it is not an image classifier")
        self.task = model.card.task
        if self.task == "anomaly":
            if len(out) != 1 or len(out[0]["shape"]) != 4 or out[0]["shape"][3] != 1 or model.card.anomaly is None:
                raise ModelError(f"{model.path}: its card says anomaly model, but it does not output one heat map "
                                 "with a score scale: convert its run folder again")
        elif len(out) != 1 or len(out[0]["shape"]) != 2:
            raise ModelError(f"{model.path} does not output one class vector: it is not a classifier")
        self._in, self._out = inp[0], out[0]
        self.height, self.width = int(inp[0]["shape"][1]), int(inp[0]["shape"][2])
        if not model.labels:
            raise ModelError(f"{model.path} has no model card with labels: pass --labels FILE")
        classes = int(out[0]["shape"][1])
        if self.task == "classify" and len(model.labels) != classes:
            raise ModelError(f"{model.path} outputs {classes} classes but {len(model.labels)} labels were given")
        # A plain .tflite made elsewhere says nothing of its input: the interpreter's size, the defaults.
        self.input = model.card.input or InputSpec(height=self.height, width=self.width)
        if (self.input.height, self.input.width) != (self.height, self.width):
            raise ModelError(f"{model.path}: its card says {self.input.height}x{self.input.width} pixels but the model "
                             f"takes {self.height}x{self.width}: the card belongs to another model, convert it again")
        self.labels = model.outcomes
        # Where a frame counts as anomalous, in score units: the card's, moved live by cmd/threshold.
        self.anomaly_threshold = model.card.anomaly.threshold if model.card.anomaly is not None else 1.0
        self._lut = self._quantization_table()
        self._flip_top_bit = self._lut.dtype == np.int8 and bool(
            np.array_equal(self._lut.view(np.uint8), np.arange(256, dtype=np.uint8) ^ 0x80))
        self._batch = 1  # the interpreter's input is allocated for this many frames
        # Delegates (the Edge TPU) compile for one input shape: there, a block is invoked frame by frame.
        self.batching = self.delegate is None

    @property
    def integer(self) -> bool:
        """A full-integer model (int8 or uint8 input), as ``linewatch convert`` makes for the device."""
        return bool(self._in["dtype"] != np.float32)

    def _quantization_table(self) -> np.ndarray:
        """Every 0..255 pixel value in the input tensor's type, with its own scale and zero point."""
        dtype = self._in["dtype"]
        values = np.arange(256, dtype=np.float32)
        if dtype == np.float32:
            return values
        scale, zero = self._in["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(values / scale + zero), info.min, info.max).astype(dtype)

    def prepare(self, bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The frame as the model wants it: size, resize mode and colour order from its card (into ``out``)."""
        return prepare(bgr, self.height, self.width, self.input.resize_mode, self.input.color_order, out)

    def quantize(self, pixels: np.ndarray, in_place: bool = False) -> np.ndarray:
        """Raw 0..255 pixels, one image (HxWx3) or a block (NxHxWx3), into a block of the input tensor's type.

        A table look-up: exact, and cheap on a Pi. The int8 table is looked up as uint8, since
        ``cv2.LUT`` maps bytes to bytes. Where the table is the usual int8 one (scale 1, zero
        point -128: each byte with its top bit flipped) a vectorized XOR gives the same bytes
        about 20 times faster than the look-up, which goes byte by byte. ``in_place`` writes
        over ``pixels`` where the tensor's type is a byte too (the pipeline's blocks): writing a
        block's worth of fresh memory cost more than the XOR itself (``linewatch bench``).
        """
        block = pixels if pixels.ndim == 4 else pixels[None]
        table = self._lut
        out = block if in_place and table.itemsize == 1 else None
        if self._flip_top_bit:
            return np.bitwise_xor(block, 0x80, out=out).view(np.int8)
        flat = block.reshape(-1, block.shape[2], block.shape[3])  # cv2.LUT takes at most three dimensions
        into = None if out is None else flat
        if table.dtype == np.int8:
            return cv2.LUT(flat, table.view(np.uint8), dst=into).view(np.int8).reshape(block.shape)
        return cv2.LUT(flat, table, dst=into).reshape(block.shape)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """Output tensor to float scores with its own scale and zero point."""
        if raw.dtype == np.float32:
            return raw.astype(np.float32)
        scale, zero = self._out["quantization"]
        return (raw.astype(np.float32) - zero) * scale

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Run the interpreter on a quantized block (NxHxWx3); the raw output rows (NxC).

        The input is resized when N changes (tens of microseconds once the arena has grown); a
        model that cannot take a batch is invoked frame by frame, and said so once.
        """
        count = len(tensor)
        if count != self._batch and self.batching:
            try:
                self.interpreter.resize_tensor_input(self._in["index"], [count, self.height, self.width, 3])
                self.interpreter.allocate_tensors()
                self._batch = count
            except (ValueError, RuntimeError) as exc:
                logger.info("%s takes one frame at a time (%s): invoking blocks frame by frame",
                            self.model.path, str(exc).splitlines()[0])
                self.batching = False
                self.interpreter.resize_tensor_input(self._in["index"], [1, self.height, self.width, 3])
                self.interpreter.allocate_tensors()
                self._batch = 1
        if count == self._batch:
            self.interpreter.set_tensor(self._in["index"], tensor)
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self._out["index"])
        return np.concatenate([self.invoke(tensor[i : i + 1]) for i in range(count)])

    def predictions(self, raw: np.ndarray) -> list[Prediction]:
        """The interpreter's raw output block, one ``Prediction`` a frame."""
        if self.task != "anomaly":
            return [Prediction(row, self.labels) for row in self.dequantize(raw)]
        heat, scores = self.anomaly_scores(raw)
        odds = scores / (scores + self.anomaly_threshold)  # 0.5 at the threshold: the label flips there
        return [Prediction(np.array([p, 1 - p], np.float32), self.labels, s, h)
                for p, s, h in zip(odds.tolist(), scores.tolist(), heat)]

    def predict_pixels(self, pixels: np.ndarray) -> Prediction:
        """Classify (or score) an image already prepared to the model's size and colour order."""
        return self.predictions(self.invoke(self.quantize(pixels)))[0]

    def predict(self, bgr: np.ndarray) -> Prediction:
        """Classify (or score) a BGR frame of any size."""
        return self.predict_pixels(self.prepare(bgr))

    def anomaly_scores(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An anomaly model's raw output block as heat maps (N x h x w) and scores, 1.0 at the card's scale."""
        spec = self.model.card.anomaly
        assert spec is not None  # checked when the engine was made
        heat = self.dequantize(raw)[..., 0]
        return heat, np.maximum(heat_map_peaks(heat), 0.0) / spec.score_scale
