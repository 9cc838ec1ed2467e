"""Frame sources behind one interface, each named by one string everywhere (CLI, config).

===========================  ==============================================
``path/to/folder``           every image in a folder (sorted), then the end
``photos/*.jpg``             every image matching a glob pattern (sorted)
``path/to/image.jpg``        one image
``path/to/video.mp4``        a video file, through OpenCV
``rtsp://…``, ``http://…``   a network stream, through OpenCV
``usb:N``, ``/dev/videoN``   a USB camera, through OpenCV
``picamera:N``               a Raspberry Pi camera, through picamera2
``conveyor[:SEED[:drift=N]]``  the simulated factory line of the demo (from frame N, drifted)
===========================  ==============================================

A source yields ``Captured`` BGR images. ``live`` sources (cameras, streams, the conveyor)
run at their own pace and the pipeline infers on the newest frame; finite ones (folders,
files) are read in full, frame by frame, and end the run cleanly with ``--once``. A source
that ``reopens`` (every live one, and a looped folder or file) is opened again with backoff
when it fails, e.g. a camera unplugged or a file that vanishes and comes back; any other
source that fails ends the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from linewatch.edge.errors import UsageError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mjpeg", ".webm"}
# The Pi camera's lores stream (w, h): twice the default models' 128x96, so area averaging to them is a whole
# factor, 13 times cheaper than from 320x240 (2.5 times; benchmarks/results.md, "by the camera's frame size").
CAMERA_SIZE = (256, 192)


@dataclass(slots=True)  # one a frame: slotted, not frozen (pipeline.Frame says why)
class Captured:
    """One image from a source, with the file it came from (folder and file sources).

    ``ts`` is when the source says it was captured (epoch seconds), where it knows better than
    the moment the frame reaches the pipeline; line I/O matches parts to frames by it.
    """

    image: np.ndarray
    path: str | None = None
    ts: float | None = None


class Source(Protocol):
    """What the pipeline needs of a frame source."""

    name: str
    live: bool
    reopens: bool

    @property
    def fps(self) -> float | None:
        """The rate it delivers frames at; None for a finite source read as fast as it goes."""
        ...

    def frames(self) -> Iterator[Captured]:
        """Captured images until the source ends; raises ``DataError`` when it fails."""
        ...

    def close(self) -> None:
        """Release the device; safe to call twice."""


def open_source(spec: str, fps: float | None = None, loop: bool = False,
                camera_size: tuple[int, int] = CAMERA_SIZE) -> Source:
    """The source that ``spec`` names; ``fps`` paces finite sources (and sets a Pi camera's
    frame rate), ``loop`` repeats them, ``camera_size`` is the Pi camera's lores stream (w, h)."""
    if spec.startswith("conveyor"):
        from linewatch.edge.device.sources.conveyor import ConveyorSource

        _, _, rest = spec.partition(":")
        seed, _, drift = rest.partition(":")
        if (seed and not seed.isdigit()) or (drift and not (drift.startswith("drift=") and drift[6:].isdigit())):
            raise UsageError(f"source '{spec}': use conveyor:SEED, or conveyor:SEED:drift=N for a line that drifts "
                             "from frame N, e.g. conveyor:7:drift=300")
        return ConveyorSource(seed=int(seed or 0), fps=fps, drift_from=int(drift[6:]) if drift else None)
    if spec.startswith("picamera"):
        from linewatch.edge.device.sources.picamera import PicameraSource

        index = spec.partition(":")[2] or "0"
        if not index.isdigit():
            raise UsageError(f"source '{spec}': use picamera:N with the camera number, e.g. picamera:0")
        return PicameraSource(camera=int(index), fps=fps, lores_size=camera_size)
    if spec.startswith(("usb:", "/dev/video", "rtsp://", "rtsps://", "http://", "https://")):
        from linewatch.edge.device.sources.video import VideoSource

        return VideoSource(spec, live=True, loop=False, fps=fps)
    path = Path(spec)
    if any(c in spec for c in "*?[") or path.is_dir() or path.suffix.lower() not in VIDEO_SUFFIXES:
        from linewatch.edge.device.sources.folder import FolderSource

        return FolderSource(path, fps=fps, loop=loop)
    from linewatch.edge.device.sources.video import VideoSource

    return VideoSource(spec, live=False, loop=loop, fps=fps)
