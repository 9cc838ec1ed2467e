"""The report a quality engineer reads: plots as PNG and one self-contained ``report.html``."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.edge.model.artifact import GOOD_NAMES
from linewatch.train.metrics import describe, pr_curve

logger = logging.getLogger(__name__)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: a workstation over SSH has no display
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                name = ("validation " if prefix else "training ") + key
                ax.plot(range(1, len(values) + 1), values, style, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_matrix(cm: list[list[int]], classes: list[str], path: Path) -> None:
    import seaborn as sns

    plt = pyplot()
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(np.array(cm), annot=True, fmt="d", cmap="Blues", xticklabels=classes, yticklabels=classes,
                cbar=False, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pr_curves(y: np.ndarray, scores: np.ndarray, classes: list[str], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(classes):
        precision, recall, ap = pr_curve(y == i, scores[:, i])
        ax.plot(recall, precision, label=f"{name} (AP {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall per class (one vs rest)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def misclassified_gallery(images: np.ndarray, y: np.ndarray, scores: np.ndarray, classes: list[str],
                          path: Path, limit: int = 24) -> int:
    """A grid of the worst misclassified images (most confident mistakes first); returns how many."""
    plt = pyplot()
    pred = scores.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-scores[wrong, pred[wrong]])][:limit]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i])
        ax.set_title(f"{classes[y[i]]} → {classes[pred[i]]}\n{scores[i, pred[i]]:.2f}", fontsize=8)
    if not len(wrong):
        axes[0, 0].text(0, 0.5, "no misclassified test images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(wrong)


def _page(title: str, summary: str) -> str:
    """The start of a self-contained report page: styles, title, the data set's summary."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%;border:1px solid #eee}}.big{{font-size:1.4em}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(summary)}</p>
"""


def write_report(out: Path, title: str, metrics: dict[str, Any], classes: list[str], images: np.ndarray,
                 y: np.ndarray, scores: np.ndarray, history: dict[str, list[float]] | None = None,
                 skipped: list[dict[str, str]] | None = None, summary: str = "", extra: str = "") -> Path:
    """Write the plots and ``report.html`` into ``out`` (``extra``: HTML after the table); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    if history:
        learning_curves(history, out / "learning_curves.png")
        plots.append(("Learning curves", "learning_curves.png"))
    confusion_matrix(metrics["confusion_matrix"], classes, out / "confusion_matrix.png")
    plots.append(("Confusion matrix", "confusion_matrix.png"))
    pr_curves(y, scores, classes, out / "pr_curves.png")
    plots.append(("Precision-recall curves", "pr_curves.png"))
    wrong = misclassified_gallery(images, y, scores, classes, out / "misclassified.png")
    plots.append((f"Misclassified images ({wrong} shown, most confident mistakes first)", "misclassified.png"))

    d = metrics["defect"]
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{m['precision']:.4f}</td><td>{m['recall']:.4f}</td>"
        f"<td>{m['f1']:.4f}</td><td>{m['average_precision']:.4f}</td><td>{m['support']}</td></tr>"
        for c, m in metrics["per_class"].items())
    skipped_html = "".join(f"<li>{html.escape(s['path'])}: {html.escape(s['reason'])}</li>" for s in skipped or [])
    figures = "".join(f"<h2>{html.escape(t)}</h2><img src='{f}' alt='{html.escape(t)}'>" for t, f in plots)
    page = _page(title, summary) + f"""<p class="big">{html.escape(describe(metrics))}</p>
<p>Good classes: {html.escape(', '.join(d['good_labels']) or f"none (no class is named {', '.join(GOOD_NAMES)}): no defect roll-up, and a device refuses the model")};
every other class counts as a defect. Top-k accuracy: {', '.join(f'top-{k} {v:.4f}' for k, v in metrics['top_k_accuracy'].items())}.
Macro precision {metrics['macro']['precision']:.4f}, recall {metrics['macro']['recall']:.4f}, F1 {metrics['macro']['f1']:.4f}.</p>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>AP</th><th>support</th></tr>{rows}</table>
{extra}
{figures}
<h2>Skipped files</h2><ul>{skipped_html or '<li>none</li>'}</ul>
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def score_distributions(good: np.ndarray, bad_by_class: dict[str, np.ndarray], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    everything = np.concatenate([good, *bad_by_class.values()])
    bins = np.linspace(0, float(np.percentile(everything, 99.5)) * 1.05 + 1e-9, 50).tolist()
    ax.hist(np.clip(good, 0, bins[-1]), bins=bins, alpha=0.6, label=f"good ({len(good)})")
    for label, scores in bad_by_class.items():
        ax.hist(np.clip(scores, 0, bins[-1]), bins=bins, alpha=0.5, label=f"{label} ({len(scores)})")
    ax.axvline(1.0, color="k", linestyle="--", label="threshold (1.0)")
    ax.set(xlabel="anomaly score (1.0 = the threshold)", ylabel="test photos")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_plot(good: np.ndarray, bad_by_class: dict[str, np.ndarray], path: Path) -> None:
    from linewatch.train.anomaly import auroc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, scores in {"all anomalies": np.concatenate(list(bad_by_class.values())), **bad_by_class}.items():
        false_alarm, detected = roc_curve(good, scores)
        ax.plot(false_alarm, detected, label=f"{label}: AUROC {auroc(good, scores):.3f}")
    ax.set(xlabel="false-alarm rate (good photos flagged)", ylabel="detection rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heat_map_gallery(images: np.ndarray, maps: np.ndarray, scores: np.ndarray, labels: list[str], path: Path) -> None:
    """The highest-scored test photos with their heat map blended over them."""
    from linewatch.edge.model.images import heat_map_overlay

    plt = pyplot()
    columns = max(1, len(images))
    fig, axes = plt.subplots(1, columns, figsize=(2.4 * columns, 2.4), squeeze=False)
    for ax, image, heat, score, label in zip(axes[0], images, maps, scores, labels):
        ax.imshow(heat_map_overlay(image.astype(np.uint8)[..., ::-1], heat)[..., ::-1])  # RGB in, RGB shown
        ax.set_title(f"{label}: {score:.2f}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_anomaly_report(out: Path, title: str, metrics: dict[str, Any], good: np.ndarray,
                         bad_by_class: dict[str, np.ndarray], worst: np.ndarray, worst_maps: np.ndarray,
                         worst_scores: np.ndarray, worst_labels: list[str],
                         history: dict[str, list[float]] | None = None, summary: str = "") -> Path:
    """An anomaly run's plots and ``report.html``: score distributions, ROC, heat maps of the worst photos."""
    plots = []
    if history:
        learning_curves(history, out / "learning_curves.png")
        plots.append(("Learning curves", "learning_curves.png"))
    if bad_by_class:
        score_distributions(good, bad_by_class, out / "scores.png")
        plots.append(("Anomaly scores of the test photos", "scores.png"))
        roc_plot(good, bad_by_class, out / "roc.png")
        plots.append(("ROC: detection against false alarms, every threshold", "roc.png"))
    heat_map_gallery(worst, worst_maps, worst_scores, worst_labels, out / "heat_maps.png")
    plots.append(("The highest-scored test photos, with their heat maps", "heat_maps.png"))
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{m['auroc']:.4f}</td><td>{m['detection_rate']:.2%}</td>"
                   f"<td>{m['support']}</td></tr>" for c, m in metrics["per_class"].items())
    figures = "".join(f"<h2>{html.escape(t)}</h2><img src='{f}' alt='{html.escape(t)}'>" for t, f in plots)
    detected = metrics["detection_rate"]
    page = _page(title, summary) + f"""<p class="big">test AUROC {metrics['auroc']:.4f}; at the threshold {metrics['false_alarm_rate']:.2%} of
{metrics['good']} good photos flagged{'' if detected is None else f', {detected:.2%} of {metrics["anomalous"]} anomalous ones caught'}</p>
<table><tr><th>anomalous class (never trained on)</th><th>AUROC</th><th>caught at the threshold</th><th>photos</th></tr>{rows}</table>
{figures}
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
