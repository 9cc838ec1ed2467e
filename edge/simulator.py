"""A synthetic factory line: top-down camera views of parts on a conveyor belt.

It gives the demo and the tests real images with known ground truth and no download.
Each frame shows a grey belt (with moving seams) under uneven light, and usually one
round machined part: a plate with a centre hole and four bolt holes. Defects are small
against the frame, as on a real line: a thin scratch, a jagged crack, an oily stain.
Position, rotation, lighting, blur and noise vary; a seed makes it all repeatable.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from linewatch.edge.errors import DataError
from linewatch.edge.model.images import encode_jpeg

logger = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("crack", "empty", "ok", "scratch", "stain")
DEFECT_CLASSES: tuple[str, ...] = ("crack", "scratch", "stain")
NEW_DEFECT = "chip"  # a defect the line starts making when it drifts: no model trained on CLASSES has seen it
FRAME_SIZE: tuple[int, int] = (160, 120)  # width, height: a small 4:3 camera view


@dataclass(frozen=True)
class Part:
    """Where a part sits in the frame and what is wrong with it."""

    label: str
    cx: float
    cy: float
    radius: float
    angle: float


def _belt(rng: np.random.Generator, offset: float, w: int, h: int) -> np.ndarray:
    """A grey rubber belt with seams that move with ``offset`` and a little texture."""
    base = rng.uniform(70, 110)
    img = np.full((h, w, 3), base, np.float32)
    img += rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    pitch = 40
    for x in range(int(-offset) % pitch - pitch, w, pitch):
        cv2.line(img, (x, 0), (x, h - 1), (base - 25,) * 3, 2)
    # Side rails, the edges of the conveyor.
    img[: h // 12] = base * 0.5
    img[h - h // 12 :] = base * 0.5
    return img


def _draw_part(img: np.ndarray, part: Part, rng: np.random.Generator) -> None:
    """A bright machined plate with a centre hole and four bolt holes, then its defect."""
    c = (int(round(part.cx)), int(round(part.cy)))
    r = part.radius
    metal = rng.uniform(175, 215)
    # Defects draw from their own stream, so a part looks the same with or without one.
    defect_rng = np.random.default_rng(rng.integers(1 << 32))
    tint = np.array([metal, metal * rng.uniform(0.97, 1.02), metal * rng.uniform(0.93, 0.99)])
    cv2.circle(img, c, int(r), tint.tolist(), -1, cv2.LINE_AA)
    cv2.circle(img, c, int(r), (metal * 0.6,) * 3, 1, cv2.LINE_AA)
    belt_colour = img[2, 2].tolist()
    cv2.circle(img, c, int(r * 0.28), belt_colour, -1, cv2.LINE_AA)
    for k in range(4):
        a = part.angle + k * math.pi / 2
        p = (int(round(part.cx + 0.65 * r * math.cos(a))), int(round(part.cy + 0.65 * r * math.sin(a))))
        cv2.circle(img, p, max(1, int(r * 0.1)), belt_colour, -1, cv2.LINE_AA)

    def on_part(rho: float, phi: float) -> tuple[float, float]:
        return part.cx + rho * r * math.cos(phi), part.cy + rho * r * math.sin(phi)

    if part.label == "scratch":
        # A straight, thin, dark line across the face of the plate.
        phi = defect_rng.uniform(0, 2 * math.pi)
        x0, y0 = on_part(defect_rng.uniform(0.35, 0.55), phi)
        x1, y1 = on_part(defect_rng.uniform(0.6, 0.9), phi + defect_rng.uniform(0.6, 1.2))
        shade = metal * defect_rng.uniform(0.35, 0.55)
        cv2.line(img, (int(x0), int(y0)), (int(x1), int(y1)), (shade,) * 3, 2, cv2.LINE_AA)
    elif part.label == "crack":
        # A dark, jagged line running in from the rim.
        phi = defect_rng.uniform(0, 2 * math.pi)
        pts = []
        rho = 1.0
        while rho > defect_rng.uniform(0.3, 0.45):
            x, y = on_part(rho, phi + defect_rng.normal(0, 0.08))
            pts.append((int(round(x)), int(round(y))))
            rho -= defect_rng.uniform(0.08, 0.15)
        cv2.polylines(img, [np.array(pts, np.int32)], False, (25, 25, 25), 2, cv2.LINE_AA)
    elif part.label == NEW_DEFECT:
        # A bite out of the rim, the belt showing through, with a dark broken edge.
        x, y = on_part(1.0, defect_rng.uniform(0, 2 * math.pi))
        bite = max(3, int(r * defect_rng.uniform(0.28, 0.38)))
        cv2.circle(img, (int(x), int(y)), bite + 1, (metal * 0.45,) * 3, -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), bite, belt_colour, -1, cv2.LINE_AA)
    elif part.label == "stain":
        # An irregular oily blob, brownish and darker than the metal.
        x, y = on_part(defect_rng.uniform(0.35, 0.6), defect_rng.uniform(0, 2 * math.pi))
        for _ in range(3):
            ax = (max(2, int(r * defect_rng.uniform(0.12, 0.2))), max(2, int(r * defect_rng.uniform(0.08, 0.15))))
            centre = (int(x + defect_rng.normal(0, 1.5)), int(y + defect_rng.normal(0, 1.5)))
            cv2.ellipse(img, centre, ax, defect_rng.uniform(0, 180), 0, 360, (60, 85, 105), -1, cv2.LINE_AA)


@dataclass(frozen=True)
class Lighting:
    """The hall's light: ``level`` scales it, ``tint`` scales each BGR channel (1, 1, 1: the light it was)."""

    level: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


DAYLIGHT = Lighting()
DRIFTED = Lighting(0.8, (1.05, 1.0, 0.95))  # dimmer and colder: a lamp failed, LED tubes replaced it


def _finish(img: np.ndarray, rng: np.random.Generator, lighting: Lighting = DAYLIGHT) -> np.ndarray:
    """Uneven light, a little defocus and sensor noise, then 8-bit BGR like a camera."""
    h, w = img.shape[:2]
    gx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    gy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    light = lighting.level * (rng.uniform(0.8, 1.2) + rng.uniform(-0.15, 0.15) * gx + rng.uniform(-0.15, 0.15) * gy)
    img = img * light[..., None] * np.array(lighting.tint, np.float32)
    sigma = rng.uniform(0.01, 0.7)
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(1, 5), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def random_part(label: str, rng: np.random.Generator, size: tuple[int, int] = FRAME_SIZE) -> Part:
    """A part of class ``label`` somewhere inside the frame."""
    w, h = size
    r = rng.uniform(0.27, 0.33) * h
    return Part(label, rng.uniform(r + 2, w - r - 2), rng.uniform(r + h / 12, h - r - h / 12), r,
                rng.uniform(0, 2 * math.pi))


def render(part: Part | None, rng: np.random.Generator, belt_offset: float = 0.0,
           size: tuple[int, int] = FRAME_SIZE, lighting: Lighting = DAYLIGHT) -> np.ndarray:
    """One BGR frame of the belt with ``part`` on it (``None`` or an ``empty`` part: belt only)."""
    w, h = size
    img = _belt(rng, belt_offset, w, h)
    if part is not None and part.label != "empty":
        _draw_part(img, part, rng)
    return _finish(img, rng, lighting)


def write_dataset(out: Path, per_class: int, seed: int = 0) -> dict[str, int]:
    """Write ``per_class`` JPEGs of every class into ``out/<class>/``, the layout users use."""
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for label in CLASSES:
        folder = out / label
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                frame = render(random_part(label, rng), rng, belt_offset=rng.uniform(0, 40))
                (folder / f"{label}_{i:05d}.jpg").write_bytes(encode_jpeg(frame))
        except OSError as exc:
            raise DataError(f"cannot write images under {folder} ({exc.strerror}): check the path and free space") \
                from None
        counts[label] = per_class
    logger.info("wrote %d images of %d classes to %s", per_class * len(CLASSES), len(CLASSES), out)
    return counts


@dataclass(frozen=True)
class ConveyorFrame:
    """A simulated frame with its ground truth: the label of the part most in view."""

    image: np.ndarray
    truth: str


CONVEYOR_MIX = {"ok": 0.55, "scratch": 0.15, "crack": 0.15, "stain": 0.15}  # defects rarer than good parts
DRIFTED_MIX = {"ok": 0.5, "scratch": 0.1, "crack": 0.1, "stain": 0.1, NEW_DEFECT: 0.2}  # after the drift


def conveyor_truth(seed: int = 0, steps_per_part: int = 6, empty_every: int = 4,
                   drift_from: int | None = None) -> Iterator[str]:
    """The true label of each conveyor frame, in order, without rendering a pixel.

    Frame ``n`` (1-based, as the daemon numbers them in ``frame_id``) shows a part of class
    ``truth[n - 1]``. The labels come from their own random stream, so the demo and the tests
    can judge results by frame id; ground truth never travels with the device's frames. From
    the part that starts at frame ``drift_from`` on, the line has drifted: ``DRIFTED_MIX``, with
    a defect never seen before, under ``DRIFTED`` light.
    """
    rng = np.random.default_rng([seed, 0])
    slot = frame = 0
    while True:
        slot += 1
        mix = DRIFTED_MIX if drifted(frame + 1, drift_from) else CONVEYOR_MIX
        labels, probs = list(mix), np.array(list(mix.values()))
        label = "empty" if slot % empty_every == 0 else str(rng.choice(labels, p=probs))
        for _ in range(steps_per_part):
            frame += 1
            yield label


def drifted(frame: int, drift_from: int | None) -> bool:
    """Whether the part that starts at ``frame`` (1-based) rides on the drifted line."""
    return drift_from is not None and frame >= drift_from


def conveyor(seed: int = 0, steps_per_part: int = 6, empty_every: int = 4,
             size: tuple[int, int] = FRAME_SIZE, drift_from: int | None = None) -> Iterator[ConveyorFrame]:
    """Endless frames of parts riding through the view, left to right.

    Each part is seen in ``steps_per_part`` frames while it crosses the middle of the view;
    every ``empty_every``-th slot the belt is empty (see ``conveyor_truth``, and for
    ``drift_from`` how the line changes).
    """
    rng = np.random.default_rng([seed, 1])
    w, _ = size
    truth = conveyor_truth(seed, steps_per_part, empty_every, drift_from)
    offset = 0.0
    frame = 0
    while True:
        label = next(truth)
        lighting = DRIFTED if drifted(frame + 1, drift_from) else DAYLIGHT
        part = random_part(label, rng, size)
        # Travel across the central third of the frame so the whole part stays in view.
        start = part.radius + 2
        stop = w - part.radius - 2
        for step in range(steps_per_part):
            if step:
                next(truth)
            x = start + (stop - start) * step / max(1, steps_per_part - 1)
            moved = Part(part.label, x, part.cy, part.radius, part.angle + 0.05 * step)
            offset += (stop - start) / max(1, steps_per_part - 1)
            frame += 1
            yield ConveyorFrame(render(moved, rng, offset, size, lighting), label)
