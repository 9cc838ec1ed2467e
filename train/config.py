"""What a training run is asked to do: every setting once, with its default, flag and description.

``linewatch train``'s options are generated from this model (``linewatch.edge.options``); the
run folder records it in ``train_config.json`` and the model card, and ``--resume`` reads it back.
Importing it does not import TensorFlow, so ``--help`` stays instant.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from linewatch.edge.model.images import ResizeMode
from linewatch.train.augment import DEFAULT_AUGMENT, parse_augment


def parse_size(text: str) -> tuple[int, int]:
    """``96`` or ``96x128`` (height x width) as (height, width)."""
    h, _, w = text.lower().partition("x")
    try:
        height, width = int(h), int(w or h)
    except ValueError:
        raise ValueError(f"'{text}' is not a size: use N or HxW, e.g. 96x128") from None
    if not (16 <= height <= 1024 and 16 <= width <= 1024):
        raise ValueError(f"size {text} is out of range: 16 to 1024 pixels a side")
    return height, width


def _flag(name: str) -> dict[str, Any]:
    return {"flag": name}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: str = Field(description="DATA/<class>/*.jpg, DATA/{train,val,test}/<class>/, or a CSV of path,label")
    out: str = Field(description="run folder to write (model, labels, card, metrics, report)")
    epochs: int = Field(default=150, ge=1, description="most epochs; training usually converges sooner",
                        json_schema_extra=_flag("--epochs"))
    minutes: float = Field(default=10, gt=0, description="time budget: the best epoch so far is kept when it runs out",
                           json_schema_extra=_flag("--minutes"))
    size: tuple[int, int] | None = Field(default=None,
                                         description="model input, N or HxW (default: from the photos, long "
                                                     "side 48 to 128)", json_schema_extra=_flag("--size"))
    resize_mode: ResizeMode = Field(default="stretch", description="how photos are brought to the input size",
                                    json_schema_extra=_flag("--resize-mode"))
    batch_size: int = Field(default=32,
                            ge=1, description="images per training step", json_schema_extra=_flag("--batch-size"))
    learning_rate: float = Field(default=2e-3, gt=0, description="starting learning rate, lowered on each plateau",
                                 json_schema_extra=_flag("--learning-rate"))
    patience: int = Field(default=5, ge=1, description="epochs without a better smoothed validation loss before the "
                                                       "learning rate drops", json_schema_extra=_flag("--patience"))
    lr_drops: int = Field(default=2,
                          ge=0, description="learning-rate drops (x0.2 each) before training stops as converged",
                          json_schema_extra=_flag("--lr-drops"))
    architecture: Literal["cnn", "mobilenetv2"] = Field(default="cnn",
                                                        description="cnn: small, from scratch; mobilenetv2: "
                                                                    "with --width and --weights",
                                                        json_schema_extra=_flag("--architecture"))
    width: float = Field(default=1.0, gt=0, description="width multiplier (alpha for mobilenetv2)",
                         json_schema_extra=_flag("--width"))
    weights: str | None = Field(default=None,
                                description="local backbone weights file for mobilenetv2 and --anomaly-method features "
                                            "(never downloaded)",
                                json_schema_extra=_flag("--weights"))
    fine_tune_epochs: int = Field(default=10, ge=0, description="second stage with --weights: the top of the backbone",
                                  json_schema_extra=_flag("--fine-tune-epochs"))
    fine_tune_fraction: float = Field(default=0.3, gt=0, le=1, description="share of the backbone's layers unfrozen")
    augment: tuple[str, ...] = Field(default=DEFAULT_AUGMENT,
                                     description="comma list of flip,rotate,zoom,color,noise, or "
                                                 "none", json_schema_extra=_flag("--augment"))
    augment_strength: float = Field(default=0.5, ge=0, le=1, description="0 (none) to 1 (strong)",
                                    json_schema_extra=_flag("--augment-strength"))
    class_weights: Literal["auto", "on", "off"] = Field(
        default="auto", description="weight rare classes up (auto: when the largest class is >1.5x the smallest)",
        json_schema_extra=_flag("--class-weights"))
    task: Literal["classify", "anomaly"] = Field(
        default="classify",
        description="classify: one label per photo; anomaly: learn the good photos only and score how far a photo "
                    "departs from them", json_schema_extra=_flag("--task"))
    good: tuple[str, ...] = Field(default=("ok",),
                                  description="with --task anomaly: the good class folders, comma-separated; "
                                              "the others are never trained on, only tested",
                                  json_schema_extra=_flag("--good"))
    false_alarm: float = Field(default=0.01,
                               gt=0, lt=0.5, description="with --task anomaly: share of held-out good photos "
                                                         "allowed over the threshold",
                               json_schema_extra=_flag("--false-alarm"))
    anomaly_method: Literal["combined", "scars", "memory", "autoencoder", "features"] = Field(
        default="combined",
        description="with --task anomaly: combined, the larger of scars and memory in units of their own "
                    "thresholds; scars, a network that finds synthetic scars, blobs and pasted patches on good "
                    "photos (marks on a part); memory, the distance to the nearest good photo (a whole other "
                    "object); autoencoder, reconstruction error; features, with --weights, each cell's "
                    "pretrained features against the nearest good cell. docs/anomaly.md compares them",
        json_schema_extra=_flag("--anomaly-method"))
    from_run: str | None = Field(default=None,
                                 description="go on from this run folder: its weights, input size and architecture; "
                                             "its photos stay in their splits, new classes grow the head, and the "
                                             "report compares the two runs on the same test photos",
                                 json_schema_extra=_flag("--from"))
    seed: int = Field(default=0, description="the split, the initial weights and the augmentation",
                      json_schema_extra=_flag("--seed"))
    report: bool = Field(default=True, description="write report.html and its plots")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value

    @field_validator("good", mode="before")
    @classmethod
    def _good(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        if not value:
            raise ValueError("name at least one good class folder, e.g. --good ok")
        return value

    @field_validator("augment", mode="before")
    @classmethod
    def _augment(cls, value: Any) -> Any:
        return parse_augment(value) if isinstance(value, str) else value
