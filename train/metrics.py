"""Classification metrics from scores, the same for a Keras model and a ``.tflite``.

Plant engineers care less about accuracy than about two numbers: how many defective
parts were called good (miss rate) and how many good parts raised an alarm (false alarms).
"""

from __future__ import annotations

from typing import Any

import numpy as np

GOOD_LABELS = ("ok", "good", "pass", "empty", "normal")


def good_labels(classes: list[str]) -> list[str]:
    """The classes that are not defects, by their usual names."""
    return [c for c in classes if c.lower() in GOOD_LABELS]


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, classes: list[str],
                           good: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix and the defect roll-up."""
    y_pred = scores.argmax(axis=1)
    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        tp = cm[i, i]
        support = cm[i].sum()
        predicted = cm[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(support)}
    top2 = np.argsort(-scores, axis=1)[:, :2]
    good = good_labels(classes) if good is None else good
    is_good = np.isin(np.array(classes)[y_true], good)
    called_good = np.isin(np.array(classes)[y_pred], good)
    defects = (~is_good).sum()
    return {
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "top2_accuracy": float((top2 == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0,
        "count": int(len(y_true)),
        "per_class": per_class,
        "macro": {k: float(np.mean([m[k] for m in per_class.values()])) for k in ("precision", "recall", "f1")},
        "confusion_matrix": cm.tolist(),
        "defect": {
            "good_labels": good,
            "miss_rate": float((called_good & ~is_good).sum() / defects) if defects else 0.0,
            "false_alarm_rate": float((~called_good & is_good).sum() / is_good.sum()) if is_good.sum() else 0.0,
        },
    }
