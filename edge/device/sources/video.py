"""Cameras, streams and video files through OpenCV ``VideoCapture``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import cv2

from linewatch.edge.device.sources import Captured
from linewatch.edge.device.sources.pacing import Pacer
from linewatch.edge.errors import DataError

logger = logging.getLogger(__name__)

MAX_BAD_READS = 25  # failed reads in a row after which a video file is taken to have ended


def capture_target(spec: str) -> int | str:
    """What ``cv2.VideoCapture`` takes for a source string: a device index or a path/URL."""
    if spec.startswith("usb:"):
        index = spec[4:]
        if not index.isdigit():
            raise DataError(f"source '{spec}': use usb:N with the camera number, e.g. usb:0")
        return int(index)
    return spec


class VideoSource:
    """A USB camera, an RTSP/HTTP stream or a video file; files may loop.

    Corrupt frames in a file are passed over (each such place counted in ``corrupt``) and
    reading goes on past them. A looped file is opened afresh on every pass, so a file that vanishes is noticed
    (the pipeline reopens it with backoff until it is back).
    """

    def __init__(self, spec: str, live: bool, loop: bool = False, fps: float | None = None) -> None:
        self.name = spec
        self.live = live
        self.loop = loop
        self.reopens = live or loop
        self.fps = fps
        self.corrupt = 0  # places in a file where unreadable frames were passed over
        self._target = capture_target(spec)
        self._capture: cv2.VideoCapture | None = None

    def _open(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(self._target)
        if not capture.isOpened():
            capture.release()
            raise DataError(f"cannot open source {self.name}: check the device, URL or file")
        return capture

    def frames(self) -> Iterator[Captured]:
        pacer = Pacer(self.fps if not self.live else None)
        while True:
            self._capture = self._open()
            yield from self._play(self._capture, pacer)
            self.close()
            if self.live:
                raise DataError(f"source {self.name} stopped delivering frames")
            if not self.loop:
                return

    def _play(self, capture: cv2.VideoCapture, pacer: Pacer) -> Iterator[Captured]:
        """Every frame of one opening; a file is read past unreadable frames, to its end."""
        length = capture.get(cv2.CAP_PROP_FRAME_COUNT) if not self.live else 0
        bad = 0  # failed reads in a row
        while True:
            ok, image = capture.read()
            if not ok:
                # OpenCV's position lags behind after a corrupt frame, so the end is also a long run of failures.
                if self.live or bad >= MAX_BAD_READS or capture.get(cv2.CAP_PROP_POS_FRAMES) >= length:
                    return
                bad += 1
                continue
            # A file's frames are named FILE#N, N counting the frames decoded so far.
            position = int(capture.get(cv2.CAP_PROP_POS_FRAMES))
            if bad:
                self.corrupt += 1
                logger.warning("%s: unreadable frame(s) before frame %d passed over", self.name, position)
                bad = 0
            pacer.wait()
            yield Captured(image, path=None if self.live else f"{self.name}#{position}")

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
