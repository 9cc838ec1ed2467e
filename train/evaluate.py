"""``linewatch evaluate``: the same metrics and report for a ``.keras`` model and a ``.tflite``.

Comparing the two on the same images is how a quality engineer checks what the Pi will do
against what training promised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge import artifact
from edge.errors import DataError, ModelError
from train import data
from train.metrics import classification_metrics


def _images(source: Path) -> tuple[list[data.Item], str]:
    """A run folder's test split, a pre-split dataset's test split, or every image of a dataset."""
    if (source / "splits.json").is_file():
        return data.load_splits(source / "splits.json")["test"], f"test split of {source}"
    dataset = data.scan(source)
    if dataset.presplit is not None:
        return dataset.presplit["test"], f"test split of {source}"
    return dataset.items, f"all images of {source}"


def _keras_scorer(path: Path) -> tuple[Any, dict[str, Any], list[str]]:
    import keras

    from train.trainer import predict_scores

    card_path = path.parent / "model_card.json"
    if not card_path.is_file():
        raise ModelError(f"{path} has no model_card.json beside it: evaluate the model.keras of a run folder")
    try:
        model = keras.models.load_model(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {path} ({str(exc).splitlines()[0]}): is it a complete .keras file?") from None
    return (lambda x: predict_scores(model, x)), json.loads(card_path.read_text()), \
        artifact.read_labels(path.parent / "labels.txt")


def _tflite_scorer(path: Path, labels: str | None) -> tuple[Any, dict[str, Any], list[str]]:
    from edge.engine import Engine

    engine = Engine(artifact.load(path, labels))
    card = dict(engine.model.card)
    card.setdefault("input", {"height": engine.height, "width": engine.width, "resize_mode": engine.resize_mode})
    return (lambda x: np.stack([engine.predict_pixels(image).scores for image in x])), card, engine.model.labels


def evaluate(model_path: str | Path, source: str | Path, out: str | Path | None = None,
             labels: str | None = None) -> dict[str, Any]:
    """Score ``model_path`` on labeled images; writes ``metrics.json`` and ``report.html`` into ``out``."""
    from train.report import write_report

    model_path, source = Path(model_path), Path(source)
    if not model_path.is_file():
        raise ModelError(f"model {model_path} does not exist")
    if model_path.suffix == ".keras":
        score, card, classes = _keras_scorer(model_path)
    else:
        score, card, classes = _tflite_scorer(model_path, labels)
    items, what = _images(source)
    unknown = sorted({label for _, label in items} - set(classes))
    if unknown:
        raise DataError(f"{source} has classes the model does not know: {', '.join(unknown)}")
    inp = card["input"]
    x, y, _, skipped = data.load_images(items, classes, inp["height"], inp["width"], inp.get("resize_mode", "stretch"))
    if not len(x):
        raise DataError(f"no readable images in {what}")
    scores = score(x)
    metrics = classification_metrics(y, scores, classes, card.get("good_labels"))
    out = Path(out) if out else model_path.parent / f"evaluation-{model_path.stem}"
    report = write_report(out, f"linewatch evaluation: {model_path.name}", metrics, classes, x, y, scores,
                          skipped=[{"path": p, "reason": r} for p, r in skipped],
                          summary=f"{model_path} on the {what}")
    result = {"model": str(model_path), "data": what, "test": metrics,
              "skipped": [{"path": p, "reason": r} for p, r in skipped], "report": str(report)}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result
