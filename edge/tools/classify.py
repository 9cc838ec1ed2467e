"""One-shot tools on the device: classify some images, and collect training photos from a source."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from linewatch.edge.device.sources import VIDEO_SUFFIXES, open_source
from linewatch.edge.device.sources.video import VideoSource
from linewatch.edge.errors import DataError
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import encode_jpeg, image_files, read_image

logger = logging.getLogger(__name__)


def _images(targets: list[str]) -> Iterator[tuple[str, np.ndarray | None]]:
    """(name, image or None when unreadable) for each image, folder of images, or frame of a video file."""
    for target in targets:
        path = Path(target)
        if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
            video = VideoSource(target, live=False)
            try:
                for captured in video.frames():
                    yield captured.path or target, captured.image
            finally:
                video.close()
            if video.corrupt:
                print(f"linewatch classify: {target}: unreadable frames passed over at {video.corrupt} place(s)",
                      file=sys.stderr)
            continue
        for image_path in image_files(path) if path.is_dir() else [path]:
            yield str(image_path), read_image(str(image_path))


def classify(model_path: str, targets: list[str], labels: str | None = None, as_json: bool = False,
             top_k: int = 3, threads: int | None = None, out: TextIO = sys.stdout) -> int:
    """Print a prediction per image (a video file: per frame, named ``file#N``); returns how many images could
    not be read. An anomaly model prints its score instead (1.0 is its threshold) and whether it passes it."""
    engine = Engine(artifact.load(model_path, labels), threads)
    anomaly = engine.model.card.anomaly if engine.task == "anomaly" else None
    failed = 0
    if not as_json:
        print(f"{'anomaly':<9} {'score':>6}  path" if anomaly else f"{'label':<12} {'score':>6}  path", file=out)
    for path, image in _images(targets):
        if image is None:
            failed += 1
            print(f"linewatch classify: {path}: not a readable image, skipped", file=sys.stderr)
            continue
        if anomaly is not None:
            score, _ = engine.anomaly(image)
            flagged = score >= anomaly.threshold
            print(json.dumps({"path": path, "anomaly_score": round(score, 4), "anomalous": flagged}) if as_json
                  else f"{'yes' if flagged else 'no':<9} {score:>6.3f}  {path}", file=out)
            continue
        prediction = engine.predict(image)
        if as_json:
            print(json.dumps({"path": path, "label": prediction.label, "score": round(prediction.score, 4),
                              "top": [{"label": label, "score": round(s, 4)} for label, s in prediction.top(top_k)]}),
                  file=out)
        else:
            print(f"{prediction.label:<12} {prediction.score:>6.3f}  {path}", file=out)
    return failed


def collect(source_spec: str, label: str, dataset: str, every: float = 1.0, count: int | None = None,
            out: TextIO = sys.stdout) -> int:
    """Save a frame every ``every`` seconds into ``DATASET/LABEL/``, the layout training reads."""
    if not label or "/" in label or label.startswith("."):
        raise DataError(f"label '{label}' cannot be a folder name: use letters, digits, - or _")
    folder = Path(dataset) / label
    folder.mkdir(parents=True, exist_ok=True)
    source = open_source(source_spec)
    saved = 0
    last = -float("inf")
    try:
        for captured in source.frames():
            now = time.monotonic()
            if now - last < every:
                continue
            last = now
            name = folder / f"{label}_{time.strftime('%Y%m%dT%H%M%S')}_{saved:05d}.jpg"
            try:
                name.write_bytes(encode_jpeg(captured.image))
            except OSError as exc:
                raise DataError(f"cannot write {name} ({exc.strerror}): check the folder and free space") from None
            saved += 1
            print(f"saved {name}", file=out, flush=True)
            if count and saved >= count:
                break
    finally:
        source.close()
    return saved
