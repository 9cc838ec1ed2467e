"""Classification metrics from scores, the same for a Keras model and a ``.tflite``.

Plant engineers care less about accuracy than about two numbers: how many defective
parts were called good (miss rate) and how many good parts raised an alarm (false alarms).
The schema of what ``classification_metrics`` returns is in docs/metrics.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from linewatch.edge.model.artifact import default_good_labels


def describe(metrics: dict[str, Any]) -> str:
    """The one line people read: accuracy, and the defect roll-up when there is one."""
    text = f"accuracy {metrics['accuracy']:.4f} on {metrics['count']} images"
    d = metrics["defect"]
    if d["miss_rate"] is not None:
        text += f", defect miss rate {d['miss_rate']:.4f}, false alarms {d['false_alarm_rate']:.4f}"
    return text


def pr_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision and recall at every threshold for one class (one-vs-rest), and average precision."""
    order = np.argsort(-scores, kind="stable")
    hits = is_positive[order].astype(np.float64)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    positives = hits.sum()
    recall = tp / positives if positives else np.zeros_like(tp)
    ap = float((precision * hits).sum() / positives) if positives else 0.0
    return precision, recall, ap


def classification_metrics(y_true: np.ndarray, scores: np.ndarray, classes: list[str],
                           good: list[str] | None = None) -> dict[str, Any]:
    """Accuracy, top-k, per-class precision/recall/F1/AP/support, confusion matrix, defect roll-up."""
    y_pred = scores.argmax(axis=1) if len(scores) else np.zeros(0, np.int64)
    n = len(classes)
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    per_class: dict[str, dict[str, float]] = {}
    for i, name in enumerate(classes):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        ap = pr_curve(y_true == i, scores[:, i])[2] if len(scores) else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "average_precision": ap, "support": int(support)}
    ranked = np.argsort(-scores, axis=1) if len(scores) else np.zeros((0, n), np.int64)
    top_k = {str(k): float((ranked[:, :k] == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0
             for k in (1, 2, 3) if k <= n}
    good = default_good_labels(classes) if good is None else good  # the device's own default (ModelArtifact.verdict)
    names = np.array(classes)
    is_good = np.isin(names[y_true], good)
    called_good = np.isin(names[y_pred], good)
    defects = int((~is_good).sum())
    rollup = bool(good)  # without a good class there is no "defect vs good" to roll up
    return {
        "accuracy": top_k["1"],
        "top_k_accuracy": top_k,
        "count": int(len(y_true)),
        "per_class": per_class,
        "macro": {k: float(np.mean([m[k] for m in per_class.values()])) for k in ("precision", "recall", "f1")},
        "confusion_matrix": cm.tolist(),
        "defect": {
            "good_labels": list(good),
            "defects": defects,
            "miss_rate": (float((called_good & ~is_good).sum() / defects) if defects else 0.0) if rollup else None,
            "false_alarm_rate": (float((~called_good & is_good).sum() / is_good.sum()) if is_good.sum() else 0.0)
            if rollup else None,
        },
    }
