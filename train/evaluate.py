"""``linewatch evaluate``: the same metrics and report for a ``.keras`` model and a ``.tflite``.

Comparing the two on the same images is how a quality engineer checks what the Pi will do
against what training promised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.edge.errors import DataError, ModelError, UsageError
from linewatch.edge.model import artifact
from linewatch.edge.model.card import InputSpec, ModelCard
from linewatch.train import data
from linewatch.train.metrics import classification_metrics


def _images(source: Path) -> tuple[list[data.Item], str]:
    """A run folder's test split, a pre-split dataset's test split, or every image of a dataset."""
    if (source / "splits.json").is_file():
        return data.load_splits(source / "splits.json")["test"], f"test split of {source}"
    dataset = data.scan(source)
    if dataset.presplit is not None:
        return dataset.presplit["test"], f"test split of {source}"
    return dataset.items, f"all images of {source}"


def _keras_scorer(path: Path) -> tuple[Any, ModelCard, InputSpec, list[str]]:
    from linewatch.train.layers import load_model
    from linewatch.train.trainer import predict_scores

    card_path = path.parent / "model_card.json"
    if not card_path.is_file():
        raise ModelError(f"{path} has no model_card.json beside it: evaluate the model.keras of a run folder")
    try:
        model = load_model(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {path} ({str(exc).splitlines()[0]}): is it a complete .keras file?") from None
    card = artifact.read_card(card_path)
    if card.input is None:
        raise ModelError(f"{card_path} does not say the model's input size: train it again")
    return (lambda x: predict_scores(model, x)), card, card.input, artifact.read_labels(path.parent / "labels.txt")


def _tflite_scorer(path: Path, labels: str | None) -> tuple[Any, ModelCard, InputSpec, list[str]]:
    from linewatch.edge.model.engine import Engine

    engine = Engine(artifact.load(path, labels))
    return (lambda x: np.stack([engine.predict_pixels(image).scores for image in x])), engine.model.card, \
        engine.input, engine.model.labels


def evaluate(model_path: str | Path, source: str | Path, out: str | Path | None = None,
             labels: str | None = None) -> dict[str, Any]:
    """Score ``model_path`` on labeled images; writes ``metrics.json`` and ``report.html`` into ``out``."""
    from linewatch.train.report import write_report

    model_path, source = Path(model_path), Path(source)
    if not model_path.is_file():
        raise ModelError(f"model {model_path} does not exist")
    if model_path.suffix == ".keras":
        score, card, spec, classes = _keras_scorer(model_path)
    else:
        score, card, spec, classes = _tflite_scorer(model_path, labels)
    if card.task == "anomaly":
        raise UsageError(f"{model_path} is an anomaly model: its run folder's metrics.json and report.html hold its "
                         "AUROC; score photos with 'linewatch classify'")
    items, what = _images(source)
    unknown = sorted({label for _, label in items} - set(classes))
    if unknown:
        raise DataError(f"{source} has classes the model does not know: {', '.join(unknown)}")
    x, y, _, skipped = data.load_images(items, classes, spec.height, spec.width, spec.resize_mode)
    if not len(x):
        raise DataError(f"no readable images in {what}")
    scores = score(x)
    metrics = classification_metrics(y, scores, classes, card.good_labels if card.good_labels else None)
    out = Path(out) if out else model_path.parent / f"evaluation-{model_path.stem}"
    report = write_report(out, f"linewatch evaluation: {model_path.name}", metrics, classes, x, y, scores,
                          skipped=[{"path": p, "reason": r} for p, r in skipped],
                          summary=f"{model_path} on the {what}")
    result = {"model": str(model_path), "data": what, "test": metrics,
              "skipped": [{"path": p, "reason": r} for p, r in skipped], "report": str(report)}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
