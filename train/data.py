"""Labeled photos: find them, split them reproducibly, and decode them as the device will.

Images are decoded with OpenCV and resized by ``edge.preprocess`` so that training,
calibration and the Pi see the very same pixels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import DataError
from edge.preprocess import IMAGE_SUFFIXES, prepare, read_image

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Image paths with their labels; ``classes`` in output order (sorted names)."""

    root: Path
    items: list[tuple[str, str]]
    classes: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = Counter(label for _, label in self.items)
        return {c: counts[c] for c in self.classes}

    def fingerprint(self) -> str:
        """A short hash of which files, of what size, carry which label."""
        h = hashlib.sha256()
        for path, label in sorted(self.items):
            h.update(f"{Path(path).relative_to(self.root)}\t{label}\t{Path(path).stat().st_size}\n".encode())
        return h.hexdigest()[:16]


def scan(root: Path | str) -> Dataset:
    """A folder-per-class dataset: every image below ``root/<class>/`` (nested folders allowed)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist: give a folder with one sub-folder per class")
    items: list[tuple[str, str]] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(path), class_dir.name))
    classes = sorted({label for _, label in items})
    if len(classes) < 2:
        raise DataError(f"{root} has {len(classes)} class folder(s) with images: at least 2 are needed")
    return Dataset(root=root, items=items, classes=classes)


def stratified_split(items: list[tuple[str, str]], seed: int, val: float = 0.15,
                     test: float = 0.15) -> dict[str, list[tuple[str, str]]]:
    """Split each class on its own, so rare defect classes appear in every split."""
    by_class: dict[str, list[tuple[str, str]]] = {}
    for item in sorted(items):
        by_class.setdefault(item[1], []).append(item)
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
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


def save_splits(path: Path, splits: dict[str, list[tuple[str, str]]], classes: list[str], seed: int) -> None:
    path.write_text(json.dumps({"seed": seed, "classes": classes,
                                **{s: [{"path": p, "label": l} for p, l in splits[s]] for s in SPLITS}},
                               indent=1))


def load_splits(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The exact split a run was trained with, so evaluation and conversion use the same test images."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} does not exist: is this a run folder made by 'linewatch train'?") from None
    return {s: [(e["path"], e["label"]) for e in raw[s]] for s in SPLITS}


def load_images(items: list[tuple[str, str]], classes: list[str], height: int, width: int,
                resize_mode: str = "stretch") -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode and prepare images into ``uint8 N x H x W x 3`` (RGB) with integer labels.

    Files that cannot be decoded are skipped and returned with the reason, never a crash.
    """
    index = {c: i for i, c in enumerate(classes)}
    xs: list[np.ndarray] = []
    ys: list[int] = []
    skipped: list[tuple[str, str]] = []
    for path, label in items:
        image = read_image(path)
        if image is None:
            skipped.append((path, "not a readable image"))
            continue
        xs.append(prepare(image, height, width, resize_mode))
        ys.append(index[label])
    if skipped:
        logger.warning("skipped %d unreadable file(s), first: %s", len(skipped), skipped[0][0])
    x = np.stack(xs) if xs else np.zeros((0, height, width, 3), np.uint8)
    return x, np.array(ys, np.int64), skipped
