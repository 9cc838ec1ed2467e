"""Images from a folder, a glob pattern or one image file, sorted by name, optionally looped."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from linewatch.edge.device.sources import Captured
from linewatch.edge.device.sources.pacing import Pacer
from linewatch.edge.errors import DataError
from linewatch.edge.model.images import IMAGE_SUFFIXES, image_files, read_image

logger = logging.getLogger(__name__)


class FolderSource:
    """Every image below a folder; unreadable files are logged and passed over.

    A looped folder is listed afresh on every pass: images added or removed in the meantime
    count, and a folder that vanishes (or whose images all became unreadable) fails the pass,
    so the pipeline reopens it with backoff until it is back.
    """

    live = False

    def __init__(self, path: Path, fps: float | None = None, loop: bool = False) -> None:
        self.name = str(path)
        self.path = path
        self.fps = fps
        self.loop = loop
        self.reopens = loop
        self.skipped = 0

    def _paths(self) -> list[Path]:
        if any(c in str(self.path) for c in "*?["):
            anchor = Path(self.path.anchor or ".")
            pattern = str(self.path.relative_to(anchor)) if self.path.is_absolute() else str(self.path)
            paths = sorted(p for p in anchor.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise DataError(f"source {self.path} matches no images")
            return paths
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            raise DataError(f"source {self.path} does not exist: give a folder of images, a file or a camera")
        try:
            paths = image_files(self.path)
        except OSError as exc:  # it vanished while being listed
            raise DataError(f"source {self.path} cannot be listed ({exc.strerror}): check the folder") from None
        if not paths:
            raise DataError(f"source {self.path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return paths

    def frames(self) -> Iterator[Captured]:
        pacer = Pacer(self.fps)
        while True:
            readable = 0
            for path in self._paths():
                image = read_image(str(path))
                if image is None:
                    self.skipped += 1
                    logger.warning("skipping %s: not a readable image", path)
                    continue
                readable += 1
                pacer.wait()
                yield Captured(image, path=str(path))
            if not self.loop:
                return
            if not readable:
                raise DataError(f"source {self.path}: none of its images could be read")

    def close(self) -> None:
        pass
