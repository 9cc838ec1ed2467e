"""``linewatch train DATA -o RUN2 --from RUN1``: go on from an earlier run, and be judged beside it fairly.

RUN2 starts from RUN1's weights at RUN1's input size and architecture. Every photo of RUN1's
splits stays in its split (under the label it has now: a photo moved to another class folder
was relabelled; ``Previous.where`` says how a photo is recognised), so RUN1's test photos are
RUN2's too and neither model has trained on them;
only photos RUN1 never saw are split by the seed. A class RUN1 did not know grows the head: its
old outputs keep their weights and order, the new ones are appended. The comparison runs both
models on RUN2's test photos: those RUN1 was tested on, the new ones, and per class.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.edge.errors import DataError, UsageError
from linewatch.train import data
from linewatch.train.config import TrainConfig
from linewatch.train.data import SPLITS, Item


@dataclass(frozen=True)
class Previous:
    """What RUN2 takes from RUN1."""

    run: Path
    config: TrainConfig
    classes: list[str]
    splits: dict[str, list[Item]]

    def where(self) -> Callable[[str], str | None]:
        """The split a photo was in for RUN1, or None for a photo RUN1 never saw.

        A photo is known by its real path, or else by its file name where RUN1 had only one of that
        name: a photo moved to another class folder (relabelled), or a dataset copied elsewhere, is
        still the same photo.
        """
        by_path = {os.path.realpath(path): name for name in SPLITS for path, _ in self.splits[name]}
        names = Counter(os.path.basename(path) for path in by_path)
        by_name = {os.path.basename(path): split for path, split in by_path.items()
                   if names[os.path.basename(path)] == 1}
        return lambda path: by_path.get(os.path.realpath(path)) or by_name.get(os.path.basename(path))


def load_previous(run: Path) -> Previous:
    """RUN1's configuration, classes and splits; a one-line ``DataError`` when it is not a classifier's run."""
    needed = [run / name for name in ("train_config.json", "splits.json", "labels.txt", "model.keras")]
    missing = [path.name for path in needed if not path.is_file()]
    if missing:
        raise DataError(f"--from {run} is not a finished run folder of 'linewatch train' ({', '.join(missing)} "
                        "missing)")
    config = TrainConfig.model_validate_json((run / "train_config.json").read_text())
    if config.task != "classify":
        raise UsageError(f"--from {run} is an anomaly model's run: --from goes on from a classifier")
    classes = (run / "labels.txt").read_text().split()
    return Previous(run, config, classes, data.load_splits(run / "splits.json"))


def adopt(cfg: TrainConfig, previous: Previous) -> None:
    """RUN2 is built as RUN1 was: its input size, resize mode, architecture and width (one given otherwise is
    refused)."""
    old = previous.config
    for key in ("size", "resize_mode", "architecture", "width"):
        given, kept = getattr(cfg, key), getattr(old, key)
        default = TrainConfig.model_fields[key].default
        if given not in (kept, default):
            raise UsageError(f"--from {previous.run} keeps its {key} ({kept}): leave --{key.replace('_', '-')} out")
        setattr(cfg, key, kept)
    if cfg.task != "classify":
        raise UsageError("--from goes on from a classifier: --task anomaly trains from the good photos alone")


def classes(previous: Previous, dataset: data.Dataset) -> list[str]:
    """RUN1's classes in their order, then the new ones: the head only grows."""
    gone = [label for label in previous.classes if label not in dataset.classes]
    if gone:
        raise DataError(f"class(es) {', '.join(gone)} of {previous.run} have no photos in {dataset.root}: --from keeps "
                        "every class of the run it goes on from")
    return previous.classes + sorted(set(dataset.classes) - set(previous.classes))


def carry_splits(previous: Previous, items: list[Item], seed: int) -> dict[str, list[Item]]:
    """RUN1's photos in their splits, with their labels as they are now; the new photos split by ``seed``.

    A class with fewer than three new photos has them all in train: they teach, and RUN1's
    photos of it are tested.
    """
    where = previous.where()
    out: dict[str, list[Item]] = {name: [] for name in SPLITS}
    new: list[Item] = []
    for path, label in items:
        split = where(path)
        (out[split] if split else new).append((path, label))
    by_class: dict[str, list[Item]] = {}
    for item in new:
        by_class.setdefault(item[1], []).append(item)
    few = [item for members in by_class.values() if len(members) < 3 for item in members]
    fresh = data.stratified_split([item for item in new if item not in few], seed) if len(few) < len(new) else \
        {name: [] for name in SPLITS}
    for name in SPLITS:
        out[name] += fresh[name] + (few if name == "train" else [])
    return out


def start_model(previous: Previous, classes: int) -> Any:
    """RUN1's model, its head grown to ``classes`` outputs (the old ones keep their weights)."""
    import keras

    from linewatch.train.layers import load_model

    model = load_model(previous.run / "model.keras")
    head = model.get_layer("scores")
    kernel, bias = head.get_weights()
    if classes == kernel.shape[1]:
        return model
    grown = keras.layers.Dense(classes, activation="softmax", name="scores")
    outputs = grown(head.input)
    new_kernel, new_bias = grown.get_weights()
    new_kernel[:, :kernel.shape[1]] = kernel
    new_bias[:bias.shape[0]] = bias
    grown.set_weights([new_kernel, new_bias])
    return keras.Model(model.inputs, outputs, name=model.name)


def compare(previous: Previous, classes: list[str], test: list[Item], y: np.ndarray, scores: np.ndarray,
            old_scores: np.ndarray) -> dict[str, Any]:
    """RUN1 against RUN2 on RUN2's test photos: RUN1's own test photos, the new ones, and per class.

    ``old_scores`` are RUN1's on the same photos (its classes, a prefix of ``classes``).
    """
    where = previous.where()
    seen = np.array([where(path) == "test" for path, _ in test], bool)
    new = np.array([where(path) is None for path, _ in test], bool)
    run1, run2 = old_scores.argmax(axis=1), scores.argmax(axis=1)

    def accuracy(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        return {"images": n, "run1": round(float((run1[mask] == y[mask]).mean()), 4) if n else None,
                "run2": round(float((run2[mask] == y[mask]).mean()), 4) if n else None}

    return {"from": str(previous.run), "classes_added": classes[len(previous.classes):],
            "run1_test": accuracy(seen), "new_test": accuracy(new), "all_test": accuracy(np.ones(len(y), bool)),
            "per_class": {label: accuracy(y == index) for index, label in enumerate(classes)}}


def describe(compare: dict[str, Any]) -> str:
    """One line: how RUN2 fares against RUN1."""
    parts = []
    for key, what in (("run1_test", "its own test photos"), ("new_test", "new test photos")):
        part = compare[key]
        if part["images"]:
            parts.append(f"on {part['images']} {what} accuracy {part['run1']:.3f} -> {part['run2']:.3f}")
    added = f"; classes added: {', '.join(compare['classes_added'])}" if compare["classes_added"] else ""
    return f"against {compare['from']}: " + "; ".join(parts) + added


def comparison_html(compare: dict[str, Any]) -> str:
    """The report's section: accuracy of both runs, per group of test photos and per class."""
    import html

    def row(name: str, part: dict[str, Any]) -> str:
        cells = "".join(f"<td>{'–' if part[k] is None else f'{part[k]:.4f}'}</td>" for k in ("run1", "run2"))
        return f"<tr><td>{html.escape(name)}</td>{cells}<td>{part['images']}</td></tr>"

    rows = row("RUN1's own test photos", compare["run1_test"]) + row("new test photos", compare["new_test"]) + \
        row("all test photos", compare["all_test"]) + \
        "".join(row(f"class {label}", part) for label, part in compare["per_class"].items())
    return (f"<h2>Compared with {html.escape(compare['from'])}</h2><p>Both models on this run's test photos (neither "
            f"trained on them). Classes added: {html.escape(', '.join(compare['classes_added']) or 'none')}.</p>"
            f"<table><tr><th>test photos</th><th>RUN1 accuracy</th><th>this run</th><th>images</th></tr>{rows}"
            "</table>")
