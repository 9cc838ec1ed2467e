"""JPEG folders under a disk quota: low-confidence frames for review, and event snapshots.

Encoding and writing happen in a thread of their own, behind a small queue, so the
inference loop never waits on the SD card; when the queue is full the image is skipped and
counted. The oldest files are deleted first to stay under the quota.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from pathlib import Path

import numpy as np

from linewatch.edge.model.images import encode_jpeg

logger = logging.getLogger(__name__)


class JpegArchive:
    """Saves images as ``folder/<name>`` and keeps the folder under ``quota_bytes``."""

    def __init__(self, folder: Path, quota_bytes: int, queue_size: int = 8) -> None:
        self.folder = folder
        self.quota_bytes = quota_bytes
        self.saved = 0
        self.skipped = 0  # the writer was behind: the image was not queued
        self.failed = 0  # the disk refused it (full, read-only, gone)
        self._failed_reported = 0
        # Oldest first, with sizes, read once: the quota is kept without rescanning the card. Plain strings, as
        # the index reaches tens of thousands of files at the quota (a Path costs twice the memory).
        existing = sorted(folder.rglob("*.jpg"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
        self._files: deque[tuple[str, int]] = deque((str(p), p.stat().st_size) for p in existing)
        self._total = sum(size for _, size in self._files)
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name=f"archive-{folder.name}", daemon=True)
        self._thread.start()

    def add(self, name: str, image: np.ndarray | bytes) -> None:
        """Queue an image (BGR array, or JPEG bytes already encoded); never blocks."""
        try:
            self._queue.put_nowait((name, image))
        except queue.Full:
            self.skipped += 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            name, image = item
            path = self.folder / name
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                data = image if isinstance(image, bytes) else encode_jpeg(image)
                path.write_bytes(data)
            except (OSError, ValueError) as exc:
                path.unlink(missing_ok=True)  # no half-written JPEG left behind on a full disk
                self.failed += 1
                if self.failed == 1 or self.failed % 100 == 0:  # a full disk must not flood the log too
                    logger.warning("cannot write %s (%s): %d image(s) not saved so far; check the folder and free "
                                   "space", path, exc, self.failed)
                continue
            if self.failed > self._failed_reported:
                logger.info("writing to %s again (%d image(s) could not be saved)", self.folder, self.failed)
                self._failed_reported = self.failed
            self.saved += 1
            self._files.append((str(path), len(data)))
            self._total += len(data)
            while self._files and self._total > self.quota_bytes:
                oldest, size = self._files.popleft()
                self._total -= size
                Path(oldest).unlink(missing_ok=True)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)
