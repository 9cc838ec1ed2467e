"""Low-confidence frames saved for review, so they can be labeled and fed back into training.

Writing JPEGs happens in its own thread, behind a small queue, so the inference loop never
waits on the SD card; when the queue is full the frame is skipped and counted. The folder
is kept under a disk quota by deleting the oldest files first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)


class ReviewSaver:
    """Saves ``(image, label, score)`` as ``DIR/<label>/<time>_<frame>_<score>.jpg`` under ``quota_bytes``."""

    def __init__(self, folder: Path, below: float, quota_bytes: int, queue_size: int = 8) -> None:
        self.folder = folder
        self.below = below
        self.quota_bytes = quota_bytes
        self.saved = 0
        self.skipped = 0
        # Oldest first, with sizes, read once: the quota is kept without rescanning the card.
        existing = sorted(folder.rglob("*.jpg"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        self._files = deque((p, p.stat().st_size) for p in existing)
        self._total = sum(size for _, size in self._files)
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="review-writer", daemon=True)
        self._thread.start()

    def offer(self, image: np.ndarray, label: str, score: float, frame_id: int) -> None:
        """Queue the frame when its score is below the threshold; never blocks."""
        if score >= self.below:
            return
        try:
            self._queue.put_nowait((image, label, score, frame_id))
        except queue.Full:
            self.skipped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            image, label, score, frame_id = item
            folder = self.folder / label
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{time.strftime('%Y%m%dT%H%M%S')}_{frame_id:08d}_{score:.2f}.jpg"
            path = folder / name
            if cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
                self.saved += 1
                size = path.stat().st_size
                self._files.append((path, size))
                self._total += size
                self._enforce_quota()
            else:
                logger.warning("cannot write review frames under %s: check the folder and free space", folder)

    def _enforce_quota(self) -> None:
        while self._files and self._total > self.quota_bytes:
            oldest, size = self._files.popleft()
            self._total -= size
            oldest.unlink(missing_ok=True)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
