"""The self-describing model file: a TFLite flatbuffer with a zip of its card and labels after it.

TFLite metadata stores associated files the same way (a zip after the flatbuffer), so the
interpreter loads the file as it is. The card (``card.ModelCard``) says how to feed the model
and what its outputs mean, and it pins the model bytes with their sha256 so a truncated or
altered file is refused rather than run.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from linewatch.edge.errors import ModelError
from linewatch.edge.model.card import ModelCard

CARD_NAME = "model_card.json"
LABELS_NAME = "labels.txt"
TFLITE_IDENTIFIER = b"TFL3"
ANOMALY_OUTCOMES = ("anomaly", "normal")  # an anomaly model's labels: anomaly first, so a tie flags the frame
GOOD_NAMES = ("ok", "good", "pass", "empty", "normal")  # the classes taken as good when nothing says which are
Verdict = Literal["good", "defect", "anomaly"]  # what a prediction means for the part in front of the camera


def default_good_labels(labels: list[str]) -> list[str]:
    """The classes that are not defects, by their usual names: what training records, and what a model whose
    card names none (a plain .tflite and a labels file) gets at load."""
    return [label for label in labels if label.lower() in GOOD_NAMES]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ModelArtifact:
    """A loaded model: its flatbuffer bytes, its card and its labels.

    A plain ``.tflite`` made elsewhere has no card of its own (``has_card`` is False): it
    gets a default one named after the file.
    """

    path: Path
    flatbuffer: bytes
    card: ModelCard
    labels: list[str]
    has_card: bool = True

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def sha256(self) -> str:
        return self.card.model_sha256 or sha256(self.flatbuffer)

    @property
    def outcomes(self) -> list[str]:
        """What a prediction's label can be: the classes, or for an anomaly model ``anomaly`` and ``normal``.

        (An anomaly model's own ``labels`` are the good classes it was trained on.)
        """
        return list(ANOMALY_OUTCOMES) if self.card.task == "anomaly" else self.labels

    @property
    def good_outcomes(self) -> list[str]:
        """The outcomes that are not defects."""
        return [outcome for outcome in self.outcomes if self.verdict(outcome) == "good"]

    def require_good_outcome(self) -> None:
        """A device refuses a model none of whose outcomes is good: every part would be rejected. (Timing, tuning and
        evaluating a model need no verdict, so only the device asks.)"""
        if not self.good_outcomes:
            raise ModelError(f"{self.path} names no good class, so every frame would be a defect: name the good "
                             f"classes' folders {' or '.join(GOOD_NAMES)} and train again, or give those names in "
                             "the labels file")

    def verdict(self, label: str, anomalous: bool | None = None) -> Verdict:
        """The one rule of what a prediction means: results, events, the setup page, the line, the metrics and Home
        Assistant all ask here. An anomaly model's frame is ``anomaly`` when it reached its threshold
        (``anomalous``; else its label says); a classifier's is ``good`` for a good label, else ``defect``."""
        if self.card.task == "anomaly":
            return "anomaly" if (label == ANOMALY_OUTCOMES[0] if anomalous is None else anomalous) else "good"
        return "good" if label in self.card.good_labels else "defect"


def pack(flatbuffer: bytes, card: ModelCard, labels: list[str]) -> bytes:
    """The bytes of a self-describing ``.tflite``: the model, then a zip holding card and labels."""
    if flatbuffer[4:8] != TFLITE_IDENTIFIER:
        raise ModelError("the converter did not produce a TFLite flatbuffer (no TFL3 identifier)")
    card = card.model_copy(update={"labels": list(labels), "model_size": len(flatbuffer),
                                   "model_sha256": sha256(flatbuffer)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(CARD_NAME, card.to_json())
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


def read_card(path: Path) -> ModelCard:
    """A run folder's ``model_card.json``."""
    try:
        return ModelCard.model_validate_json(path.read_text())
    except OSError as exc:
        raise ModelError(f"cannot read model card {path}: {exc.strerror}") from None
    except ValidationError as exc:
        raise ModelError(f"model card {path} is not valid ({exc.errors()[0]['msg']}): train the model again") \
            from None


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
    card: ModelCard | None = None
    flatbuffer = data
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            card = ModelCard.model_validate_json(zf.read(CARD_NAME))
    except zipfile.BadZipFile:
        pass  # a plain .tflite made elsewhere, or one whose card was cut off: checked below
    except (KeyError, ValueError):
        raise ModelError(f"{path} carries a broken model card: convert the model again") from None
    if card is not None:
        size = card.model_size or -1
        flatbuffer = data[:size]
        if size <= 0 or sha256(flatbuffer) != card.model_sha256:
            raise ModelError(f"{path} does not match the sha256 in its card: the file is damaged, copy it again")
    elif _looks_truncated(data):
        raise ModelError(f"{path} is truncated: copy the model again")
    labels = read_labels(Path(labels_path)) if labels_path else list(card.labels if card else [])
    has_card = card is not None
    card = card or ModelCard(name=path.stem, labels=labels)
    if card.task == "classify" and not card.good_labels:  # the card records the default it runs with
        card = card.model_copy(update={"good_labels": default_good_labels(labels)})
    return ModelArtifact(path=path, flatbuffer=flatbuffer, card=card, labels=labels, has_card=has_card)


def _looks_truncated(data: bytes) -> bool:
    """A file that began as a linewatch artifact but lost its end (and so its zip directory)."""
    return b"PK\x03\x04" in data[-65536:] and b"PK\x05\x06" not in data[-65536:]
