"""Dataset input: layouts, bad files, odd pixel formats, and the split."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.edge.errors import DataError
from linewatch.edge.simulator import write_dataset
from linewatch.train import data

pytestmark = pytest.mark.workstation


def _corrupt_files(folder: Path) -> list[Path]:
    """A zero-byte JPEG, a JPEG cut in half, and text that claims to be a JPEG."""
    good = next(folder.glob("*.jpg")).read_bytes()
    bad = [folder / "zero.jpg", folder / "half.jpg", folder / "text.jpg"]
    bad[0].write_bytes(b"")
    bad[1].write_bytes(good[: len(good) // 2])
    bad[2].write_text("not an image")
    return bad


def test_corrupt_files_are_skipped_and_listed(tmp_path: Path) -> None:
    write_dataset(tmp_path, per_class=4)
    bad = _corrupt_files(tmp_path / "ok")
    (tmp_path / "ok" / "notes.txt").write_text("shift B")
    dataset = data.scan(tmp_path)
    assert [s[0] for s in dataset.skipped] == [str(tmp_path / "ok" / "notes.txt")]
    x, y, loaded, skipped = data.load_images(dataset.items, dataset.classes, 32, 48)
    assert sorted(p for p, _ in skipped) == sorted(str(p) for p in bad)
    assert x.shape == (20, 32, 48, 3) and x.dtype == np.uint8
    assert len(loaded) == len(y) == 20


def test_grey_rgba_and_16_bit_images_become_8_bit_rgb(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
    grey = np.full((20, 30), 200, np.uint8)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    rgba[..., 3] = 128
    deep = np.full((20, 30, 3), 65535 // 2, np.uint16)
    cv2.imwrite(str(tmp_path / "a" / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "a" / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "b" / "deep.png"), deep)
    dataset = data.scan(tmp_path)
    x, _, loaded, skipped = data.load_images(dataset.items, dataset.classes, 10, 10)
    assert not skipped
    images = dict(zip((Path(p).name for p, _ in loaded), x))
    assert images["grey.png"].shape == (10, 10, 3) and (images["grey.png"] == 200).all()
    assert tuple(images["rgba.png"][0, 0]) == (255, 0, 0)  # RGB order, alpha dropped
    assert abs(int(images["deep.png"][0, 0, 0]) - 127) <= 1


def test_csv_manifest(tmp_path: Path) -> None:
    write_dataset(tmp_path / "imgs", per_class=3)
    rows = ["path,label"] + [f"imgs/{p.parent.name}/{p.name},{p.parent.name}"
                             for p in sorted((tmp_path / "imgs").rglob("*.jpg"))]
    rows.append("imgs/ok/missing.jpg,ok")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("\n".join(rows) + "\n")
    dataset = data.scan(manifest)
    assert dataset.counts() == {c: 3 for c in ("crack", "empty", "ok", "scratch", "stain")}
    assert len(dataset.skipped) == 1 and "missing" in dataset.skipped[0][1]
    (tmp_path / "bad.csv").write_text("file,class\nx.jpg,ok\n")
    with pytest.raises(DataError, match="path,label"):
        data.scan(tmp_path / "bad.csv")


def test_pre_split_folders_are_kept_as_given(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        write_dataset(tmp_path / split, per_class=n, seed=n)
    dataset = data.scan(tmp_path)
    splits = data.split(dataset, seed=1)
    for name, n in (("train", 6), ("val", 3), ("test", 3)):
        assert all(f"/{name}/" in p for p, _ in splits[name])
        assert Counter(label for _, label in splits[name]) == {c: n for c in dataset.classes}


def test_stratified_split_is_complete_disjoint_and_seeded(tmp_path: Path) -> None:
    items = [(f"{c}/{i}.jpg", c) for c, n in (("ok", 80), ("crack", 10), ("stain", 4)) for i in range(n)]
    a = data.stratified_split(items, seed=1)
    assert a == data.stratified_split(items, seed=1)
    assert a != data.stratified_split(items, seed=2)
    paths = [p for s in a.values() for p, _ in s]
    assert sorted(paths) == sorted(p for p, _ in items) and len(set(paths)) == len(paths)
    for split in a.values():  # the rare classes appear in every split
        assert {"ok", "crack", "stain"} <= {label for _, label in split}
    assert Counter(label for _, label in a["test"])["ok"] == 12


def test_auto_size_suits_the_photos(tmp_path: Path) -> None:
    for label, shape in (("small", (8, 8)), ("large", (8, 8))):
        (tmp_path / label).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / label / f"{i}.png"), np.zeros(shape, np.uint8))
    assert data.auto_size(data.scan(tmp_path).items) == (48, 48)  # small photos are brought up, never kept tiny
    write_dataset(tmp_path / "line", per_class=2)
    assert data.auto_size(data.scan(tmp_path / "line").items) == (96, 128)
