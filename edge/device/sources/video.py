"""Cameras, streams and video files through OpenCV ``VideoCapture``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import cv2

from linewatch.edge.device.sources import Captured
from linewatch.edge.device.sources.pacing import Pacer
from linewatch.edge.errors import DataError

logger = logging.getLogger(__name__)


def capture_target(spec: str) -> int | str:
    """What ``cv2.VideoCapture`` takes for a source string: a device index or a path/URL."""
    if spec.startswith("usb:"):
        index = spec[4:]
        if not index.isdigit():
            raise DataError(f"source '{spec}': use usb:N with the camera number, e.g. usb:0")
        return int(index)
    return spec


class VideoSource:
    """A USB camera, an RTSP/HTTP stream or a video file; files may loop."""

    def __init__(self, spec: str, live: bool, loop: bool = False, fps: float | None = None) -> None:
        self.name = spec
        self.live = live
        self.loop = loop
        self.fps = fps
        self._target = capture_target(spec)
        self._capture: cv2.VideoCapture | None = None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self._target)
        if not capture.isOpened():
            capture.release()
            raise DataError(f"cannot open source {self.name}: check the device, URL or file")
        return capture

    def frames(self) -> Iterator[Captured]:
        self._capture = self._open()
        pacer = Pacer(self.fps if not self.live else None)
        while True:
            ok, image = self._capture.read()
            if not ok:
                if self.loop and not self.live:
                    self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, image = self._capture.read()
                if not ok:
                    if self.live:
                        raise DataError(f"source {self.name} stopped delivering frames")
                    return
            pacer.wait()
            yield Captured(image, path=None if self.live else self.name)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
