"""One-shot tools on the device: classify some images, and collect training photos from a source."""

from __future__ import annotations

import heapq
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
from linewatch.edge.model.engine import Engine, Prediction
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


class ReviewPicks:
    """The ``count`` images most worth a person's label: the most anomalous, or the least sure classified.

    Kept in memory as JPEG while classifying (a few tens), written at the end as
    ``DIR/<label>/<rank>_<score>_<name>.jpg``, so moving a file to the right class folder labels it.
    """

    def __init__(self, folder: Path, count: int) -> None:
        self.folder = folder
        self.count = count
        self._heap: list[tuple[float, int, str, str, float, bytes]] = []  # (worth, order, name, label, score, jpeg)
        self._offered = 0

    def offer(self, path: str, image: np.ndarray, prediction: Prediction) -> None:
        anomaly = prediction.anomaly_score
        worth = anomaly if anomaly is not None else 1 - prediction.score
        shown = anomaly if anomaly is not None else prediction.score
        self._offered += 1
        if len(self._heap) < self.count or worth > self._heap[0][0]:
            item = (worth, self._offered, Path(path.replace("#", "_")).stem, prediction.label, shown,
                    encode_jpeg(image))
            (heapq.heappush if len(self._heap) < self.count else heapq.heapreplace)(self._heap, item)

    def write(self) -> int:
        """Write the picks, most worth first; how many."""
        for rank, (_, _, name, label, score, jpeg) in enumerate(sorted(self._heap, reverse=True), start=1):
            target = self.folder / label / f"{rank:03d}_{score:.3f}_{name}.jpg"
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(jpeg)
            except OSError as exc:
                raise DataError(f"cannot write {target} ({exc.strerror}): check the folder and free space") from None
        return len(self._heap)


def prediction_record(path: str, prediction: Prediction, top_k: int) -> dict[str, object]:
    """``classify --json``'s line: the image and the fields its ``result`` message would carry."""
    record: dict[str, object] = {"path": path, "label": prediction.label, "score": round(prediction.score, 4),
                                 "top": [{"label": label, "score": round(s, 4)} for label, s in prediction.top(top_k)]}
    if prediction.anomaly_score is not None:
        record |= {"anomaly_score": round(prediction.anomaly_score, 4), "anomalous": prediction.anomalous}
    return record


def classify(model_path: str, targets: list[str], labels: str | None = None, as_json: bool = False,
             top_k: int = 3, threads: int | None = None, out: TextIO = sys.stdout,
             review: ReviewPicks | None = None) -> int:
    """Print a prediction per image (a video file: per frame, named ``file#N``); returns how many images could
    not be read. An anomaly model's label is anomaly or normal, printed with its anomaly score (1.0 is the
    threshold chosen at training). ``review`` keeps the images most worth labelling."""
    engine = Engine(artifact.load(model_path, labels), threads)
    anomaly = engine.task == "anomaly"
    failed = 0
    if not as_json:
        print(f"{'label':<12} {'score':>6}  {'anomaly':>7}  path" if anomaly else f"{'label':<12} {'score':>6}  path",
              file=out)
    for path, image in _images(targets):
        if image is None:
            failed += 1
            print(f"linewatch classify: {path}: not a readable image, skipped", file=sys.stderr)
            continue
        prediction = engine.predict(image)
        if review is not None:
            review.offer(path, image, prediction)
        if as_json:
            print(json.dumps(prediction_record(path, prediction, top_k)), file=out)
        elif anomaly:
            print(f"{prediction.label:<12} {prediction.score:>6.3f}  {prediction.anomaly_score:>7.3f}  {path}",
                  file=out)
        else:
            print(f"{prediction.label:<12} {prediction.score:>6.3f}  {path}", file=out)
    if review is not None:
        print(f"kept {review.write()} image(s) to label in {review.folder}", file=sys.stderr)
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
