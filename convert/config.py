"""What a conversion is asked to do: every setting once, with its default, flag and description."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QUANTIZATIONS = ("int8", "float16", "dynamic", "float32")


class ConvertConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantization: Literal["int8", "float16", "dynamic", "float32"] = Field(
        default="int8", description="int8: full-integer, for XNNPACK and the Edge TPU",
        json_schema_extra={"flag": "--quantization"})
    io: Literal["int8", "uint8"] = Field(default="int8",
                                         description="input/output type: int8 for the CPU, uint8 for the "
                                                     "Edge TPU", json_schema_extra={"flag": "--io"})
    calibration: int = Field(default=300, ge=1, description="calibration images, stratified by class",
                             json_schema_extra={"flag": "--calibration"})
    max_drop: float = Field(default=1.0, ge=0, description="accuracy points the converted model may lose",
                            json_schema_extra={"flag": "--max-drop"})
    max_class_drop: float = Field(default=3.0, ge=0, description="recall points one class may lose (or one image, in a "
                                                                 "class of fewer than 34 test images)",
                                  json_schema_extra={"flag": "--max-class-drop"})
    allow_float_ops: bool = Field(default=False, description="warn instead of failing on float ops in an int8 model",
                                  json_schema_extra={"flag": "--allow-float-ops"})
    weight_scales: Literal["auto", "per-channel", "per-tensor"] = Field(
        default="auto", description="int8 weight scales: per-tensor is a smaller file at an accuracy cost; auto tries "
                                    "per-tensor first for MobileNet-class models and keeps it only if the gate passes",
        json_schema_extra={"flag": "--weight-scales"})
    compare: bool = Field(default=True,
                          description="also convert to the other quantizations for a table of size, accuracy "
                                      "and latency", json_schema_extra={
                              "flag": "--no-compare", "negate": True,
                              "flag_help": "skip converting to the other quantizations for the table"})
