"""Labeled photos: find them, split them reproducibly, and decode them as the device will.

Three layouts are read: a folder per class (nested folders allowed), pre-split
``train/ val/ test/`` folders each holding a folder per class, and a CSV manifest of
``path,label`` rows (paths relative to the CSV). Images are decoded with OpenCV and resized
by ``edge.preprocess``, so training, calibration and the Pi see the very same pixels.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from linewatch.edge.errors import DataError
from linewatch.edge.model.images import IMAGE_SUFFIXES, ResizeMode, prepare, read_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Item = tuple[str, str]  # (path, label)


@dataclass
class Dataset:
    """Image paths with their labels; ``classes`` in output order (sorted names).

    ``presplit`` holds the user's own train/val/test split when the layout has one.
    ``skipped`` lists files passed over, with the reason, for the report.
    """

    root: Path
    items: list[Item]
    classes: list[str]
    presplit: dict[str, list[Item]] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = Counter(label for _, label in self.items)
        return {c: counts[c] for c in self.classes}

    def fingerprint(self) -> str:
        """A short hash of which files, of what size, carry which label."""
        h = hashlib.sha256()
        for path, label in sorted(self.items):
            size = os.path.getsize(path) if os.path.exists(path) else -1
            h.update(f"{os.path.relpath(path, self.root)}\t{label}\t{size}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    def used(self, items: list[Item], skipped: list[tuple[str, str]]) -> Dataset:
        """The same data set restricted to the images training actually read."""
        return Dataset(root=self.root, items=sorted(items), classes=self.classes, skipped=skipped)

    def summary(self) -> str:
        """One line a person reads before training: counts per class and the imbalance."""
        counts = self.counts()
        ratio = max(counts.values()) / max(1, min(counts.values()))
        text = (f"dataset {self.root}: {len(self.items)} images in {len(self.classes)} classes: "
                + ", ".join(f"{c} {n}" for c, n in counts.items()) + f" (largest/smallest {ratio:.1f}x)")
        if self.skipped:
            text += f"; {len(self.skipped)} file(s) skipped"
        return text


def _class_folders(root: Path, skipped: list[tuple[str, str]]) -> list[Item]:
    items: list[Item] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        found = len(items)
        for path in sorted(class_dir.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(path), class_dir.name))
            else:
                skipped.append((str(path), "not an image file type"))
        if len(items) == found:
            skipped.append((str(class_dir), "a class folder without images: not a class until it has some"))
    return items


def _manifest(path: Path, skipped: list[tuple[str, str]]) -> list[Item]:
    items: list[Item] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"manifest {path} needs a header row with the columns path,label")
        for line, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise DataError(f"manifest {path} line {line}: path and label must both be given")
            image = Path(row["path"]) if os.path.isabs(row["path"]) else path.parent / row["path"]
            if not image.is_file():
                skipped.append((str(image), f"listed on line {line} of {path.name} but missing"))
                continue
            items.append((str(image), row["label"].strip()))
    return items


def scan(source: Path | str) -> Dataset:
    """Find every labeled image in a dataset folder or CSV manifest."""
    source = Path(source)
    skipped: list[tuple[str, str]] = []
    presplit = None
    if source.is_file() and source.suffix.lower() == ".csv":
        items, root = _manifest(source, skipped), source.parent
    elif source.is_dir():
        root = source
        if all((source / s).is_dir() for s in SPLITS):
            presplit = {s: _class_folders(source / s, skipped) for s in SPLITS}
            items = [item for s in SPLITS for item in presplit[s]]
        else:
            items = _class_folders(source, skipped)
    else:
        raise DataError(f"dataset {source} does not exist: give a folder with one sub-folder per class, "
                        "train/ val/ test/ folders, or a CSV manifest (path,label)")
    classes = sorted({label for _, label in items})
    if len(classes) < 2:
        raise DataError(f"{source} has {len(classes)} class(es) with images: at least 2 are needed")
    if presplit is not None:
        for split, members in presplit.items():
            if not members:
                raise DataError(f"{source / split} holds no images: each of train/ val/ test/ needs some")
    return Dataset(root=root, items=items, classes=classes, presplit=presplit, skipped=skipped)


def stratified_split(items: list[Item], seed: int, val: float = 0.15, test: float = 0.15) -> dict[str, list[Item]]:
    """Split each class on its own, so rare defect classes appear in every split."""
    by_class: dict[str, list[Item]] = {}
    for item in sorted(items):
        by_class.setdefault(item[1], []).append(item)
    rng = random.Random(seed)
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for label, members in by_class.items():
        if len(members) < 3:
            raise DataError(f"class '{label}' has {len(members)} image(s): at least 3 are needed to split "
                            "into train, val and test; add photos of it or remove its folder")
        rng.shuffle(members)
        n_test = max(1, round(len(members) * test))
        n_val = max(1, round(len(members) * val))
        out["test"] += members[:n_test]
        out["val"] += members[n_test : n_test + n_val]
        out["train"] += members[n_test + n_val :]
    for split in out.values():
        rng.shuffle(split)
    return out


def split(dataset: Dataset, seed: int) -> dict[str, list[Item]]:
    """The user's own split when the layout has one, else a stratified split from ``seed``."""
    return dataset.presplit if dataset.presplit is not None else stratified_split(dataset.items, seed)


def save_splits(path: Path, splits: dict[str, list[Item]], classes: list[str], seed: int) -> None:
    path.write_text(json.dumps({"seed": seed, "classes": classes,
                                **{s: [{"path": p, "label": label} for p, label in splits[s]] for s in SPLITS}},
                               indent=1))


def load_splits(path: Path) -> dict[str, list[Item]]:
    """The exact split a run was trained with, so evaluation and conversion use the same test images."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: is this a run folder made by 'linewatch train'?") from None
    return {s: [(e["path"], e["label"]) for e in raw[s]] for s in SPLITS}


def load_images(items: list[Item], classes: list[str], height: int, width: int, resize_mode: ResizeMode = "stretch",
                ) -> tuple[np.ndarray, np.ndarray, list[Item], list[tuple[str, str]]]:
    """Decode and prepare images into ``uint8 N x H x W x 3`` (RGB) with integer labels.

    Returns the images, their labels, the items that were loaded (in order) and the files
    skipped with the reason: an unreadable file is listed, never a crash.
    """
    index = {c: i for i, c in enumerate(classes)}
    xs: list[np.ndarray] = []
    ys: list[int] = []
    loaded: list[Item] = []
    skipped: list[tuple[str, str]] = []
    for path, label in items:
        image = read_image(path)
        if image is None:
            skipped.append((path, "unreadable, truncated or empty image"))
            continue
        xs.append(prepare(image, height, width, resize_mode))
        ys.append(index[label])
        loaded.append((path, label))
    if skipped:
        logger.warning("skipped %d unreadable file(s), first: %s", len(skipped), skipped[0][0])
    x = np.stack(xs) if xs else np.zeros((0, height, width, 3), np.uint8)
    return x, np.array(ys, np.int64), loaded, skipped


SMALLEST_LONG_SIDE, LARGEST_LONG_SIDE = 48, 128


def auto_size(items: list[Item], limit: int = 200) -> tuple[int, int]:
    """A model input size that suits the photos: their median shape, the long side 48 to 128.

    Large photos come down to what a Pi classifies quickly. Small ones (digits, crops of 28
    pixels) are brought up to 48: the CNN pools three times, and at 32 pixels its last maps
    are 4x4, too coarse for thin strokes; at 48 they are 6x6 (on the rendered digits of
    benchmarks/datasets.py, 32 to 48 took test accuracy from 96.7% to 97.7%). Sides are
    multiples of 8.
    """
    rng = random.Random(0)
    shapes = []
    for path, _ in rng.sample(items, min(limit, len(items))):
        image = read_image(path)
        if image is not None:
            shapes.append(image.shape[:2])
    if not shapes:
        return 96, 128
    h, w = np.median(np.array(shapes), axis=0)
    scale = min(LARGEST_LONG_SIDE / max(h, w), max(1.0, SMALLEST_LONG_SIDE / max(h, w)))

    def side(v: float) -> int:
        return int(max(16, round(v * scale / 8) * 8))

    return side(h), side(w)
