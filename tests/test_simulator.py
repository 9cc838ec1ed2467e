"""The synthetic factory line: deterministic, in the users' folder layout, with true labels."""

from __future__ import annotations

import hashlib
from itertools import islice
from pathlib import Path

import cv2
import numpy as np

from linewatch.edge import simulator


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.jpg")):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_dataset_is_one_folder_per_class_and_repeatable(tmp_path: Path) -> None:
    counts = simulator.write_dataset(tmp_path / "a", per_class=4, seed=5)
    simulator.write_dataset(tmp_path / "b", per_class=4, seed=5)
    simulator.write_dataset(tmp_path / "c", per_class=4, seed=6)
    assert counts == {c: 4 for c in simulator.CLASSES}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(simulator.CLASSES)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    image = cv2.imread(str(next((tmp_path / "a" / "ok").glob("*.jpg"))))
    assert image.shape == (simulator.FRAME_SIZE[1], simulator.FRAME_SIZE[0], 3)


def test_defects_are_small_against_the_frame() -> None:
    """A defect changes only a small part of the view: the same part with and without it."""
    for label in simulator.DEFECT_CLASSES:
        rng = np.random.default_rng(11)
        part = simulator.random_part(label, rng)
        with_defect = simulator.render(part, np.random.default_rng(1)).astype(int)
        clean = simulator.render(simulator.Part("ok", part.cx, part.cy, part.radius, part.angle),
                                 np.random.default_rng(1)).astype(int)
        changed = (np.abs(with_defect - clean).max(axis=2) > 40).mean()
        assert 0 < changed < 0.03, (label, changed)


def test_conveyor_carries_ground_truth_and_empty_slots() -> None:
    frames = list(islice(simulator.conveyor(seed=2, steps_per_part=3, empty_every=4), 24))
    truths = [f.truth for f in frames]
    assert list(islice(simulator.conveyor_truth(seed=2, steps_per_part=3, empty_every=4), 24)) == truths
    assert truths[9:12] == ["empty"] * 3 and truths[21:24] == ["empty"] * 3
    assert set(truths) <= set(simulator.CLASSES)
    assert len({t for t in truths if t != "empty"}) >= 2
    # The part moves between frames of the same slot.
    assert not np.array_equal(frames[0].image, frames[1].image)
