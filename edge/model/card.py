"""The model card: how to feed a model and what its outputs mean, as one typed contract.

Written by ``linewatch train`` (the run folder's ``model_card.json``), completed by
``linewatch convert`` (quantization, parity, the sha256 of the model bytes) and read by the
engine, the daemon, the payloads and ``evaluate``. Every reader uses this model, so a default
lives here and nowhere else. ``card_version`` is bumped on a breaking change; keys a newer
linewatch adds are kept (``extra="allow"``) so an older device can still load the file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from linewatch.edge.model.images import ResizeMode

CARD_VERSION = 1


class InputSpec(BaseModel):
    """The model's input: raw 0..255 pixels of this size and channel order, resized this way."""

    model_config = ConfigDict(extra="allow")

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: int = 3
    color_order: Literal["RGB", "BGR"] = "RGB"
    resize_mode: ResizeMode = "stretch"
    range: tuple[int, int] = (0, 255)


class AnomalySpec(BaseModel):
    """How an anomaly model's output becomes a score: the largest cell of its heat map, over ``score_scale``.

    A score of 1.0 is the raw score that ``false_alarm`` of held-out good images pass; ``threshold``
    (1.0 unless moved) is where a frame counts as anomalous.
    """

    model_config = ConfigDict(extra="allow")

    method: str
    score_scale: float = Field(gt=0)
    threshold: float = Field(default=1.0, gt=0)
    false_alarm: float = Field(gt=0, lt=1)


class ModelCard(BaseModel):
    """Everything known about a model besides its weights."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    card_version: int = CARD_VERSION
    name: str = "model"
    task: Literal["classify", "anomaly"] = "classify"
    anomaly: AnomalySpec | None = Field(default=None, description="for task anomaly: how its heat map is scored")
    version: str = "unknown"
    created: str | None = None
    architecture: str | None = None
    input: InputSpec | None = None  # None only for a plain .tflite made elsewhere: read from the interpreter
    labels: list[str] = Field(default_factory=list)
    good_labels: list[str] = Field(default_factory=list, description="classes that are not defects (ok, empty…)")
    thresholds: dict[str, float] = Field(default_factory=dict, description="per-class event thresholds")
    dataset: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    # Added by convert:
    quantization: str | None = None
    per_tensor: bool = False  # int8 weights with one scale per tensor (the file is smaller)
    io: dict[str, Any] = Field(default_factory=dict)
    calibration_images: int = 0
    parity: dict[str, Any] = Field(default_factory=dict)
    rejected: list[str] = Field(default_factory=list)
    delegate: str | None = Field(default=None, description="edgetpu for a model compiled for the Edge TPU")
    # Added when packed into the .tflite:
    model_size: int | None = None
    model_sha256: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)
