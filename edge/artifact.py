"""The self-describing model file: a TFLite flatbuffer with a zip of its card and labels after it.

TFLite metadata stores associated files the same way (a zip after the flatbuffer), so the
interpreter loads the file as it is. The card says how to feed the model (size, colour order,
resize mode) and what its outputs mean (labels, thresholds), and it pins the model bytes with
their sha256 so a truncated or altered file is refused rather than run.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import ModelError

CARD_NAME = "model_card.json"
LABELS_NAME = "labels.txt"
TFLITE_IDENTIFIER = b"TFL3"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ModelArtifact:
    """A loaded model: its flatbuffer bytes, its card (may be empty) and its labels."""

    path: Path
    flatbuffer: bytes
    card: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.stem))

    @property
    def version(self) -> str:
        return str(self.card.get("version", "unknown"))

    @property
    def sha256(self) -> str:
        return str(self.card.get("model_sha256") or sha256(self.flatbuffer))


def pack(flatbuffer: bytes, card: dict[str, Any], labels: list[str]) -> bytes:
    """The bytes of a self-describing ``.tflite``: the model, then a zip holding card and labels."""
    if flatbuffer[4:8] != TFLITE_IDENTIFIER:
        raise ModelError("the converter did not produce a TFLite flatbuffer (no TFL3 identifier)")
    card = {**card, "labels": list(labels), "model_size": len(flatbuffer),
            "model_sha256": sha256(flatbuffer)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CARD_NAME, json.dumps(card, indent=2, sort_keys=True))
        zf.writestr(LABELS_NAME, "\n".join(labels) + "\n")
    return flatbuffer + buf.getvalue()


def read_labels(path: Path) -> list[str]:
    """Labels from a text file, one per line in output order, blank lines ignored."""
    try:
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ModelError(f"cannot read labels file {path}: {exc.strerror}") from None
    if not labels:
        raise ModelError(f"labels file {path} is empty: write one class name per line")
    return labels


def load(path: Path | str, labels_path: Path | str | None = None) -> ModelArtifact:
    """Read a ``.tflite``, with its card when it has one; labels from ``labels_path`` win."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model file {path} does not exist: pass the .tflite made by 'linewatch convert'") from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(f"{path} is not a TFLite model (no TFL3 identifier): is it the right file?")
    card: dict[str, Any] = {}
    flatbuffer = data
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            card = json.loads(zf.read(CARD_NAME))
    except zipfile.BadZipFile:
        pass  # a plain .tflite made elsewhere, or one whose card was cut off: checked below
    except (KeyError, ValueError):
        raise ModelError(f"{path} carries a broken model card: convert the model again") from None
    if card:
        size = int(card.get("model_size", -1))
        flatbuffer = data[:size]
        if size <= 0 or sha256(flatbuffer) != card.get("model_sha256"):
            raise ModelError(f"{path} does not match the sha256 in its card: the file is damaged, copy it again")
    elif _looks_truncated(data):
        raise ModelError(f"{path} is truncated: copy the model again")
    labels = read_labels(Path(labels_path)) if labels_path else list(card.get("labels", []))
    return ModelArtifact(path=path, flatbuffer=flatbuffer, card=card, labels=labels)


def _looks_truncated(data: bytes) -> bool:
    """A file that began as a linewatch artifact but lost its end (and so its zip directory)."""
    return b"PK\x03\x04" in data[-65536:] and b"PK\x05\x06" not in data[-65536:]
