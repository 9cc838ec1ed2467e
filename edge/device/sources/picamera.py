"""Raspberry Pi cameras through picamera2 (Raspberry Pi OS's ``python3-picamera2``).

Kept thin on purpose: no camera is attached where the tests run, so this is tested against
a fake ``picamera2`` module. The model is fed from the small ``lores`` stream; a Pi 5 gives
it as RGB, a Pi 4 and earlier only as YUV420, which is converted here. Each frame carries the
sensor's own timestamp from the request's metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np

from linewatch.edge.device.sources import CAMERA_SIZE, Captured
from linewatch.edge.errors import DataError

logger = logging.getLogger(__name__)


def _is_pisp() -> bool:
    """True on a Pi 5 (PiSP), the only board whose lores stream can be RGB."""
    try:
        from picamera2.platform import Platform, get_platform  # pyright: ignore[reportMissingImports] (apt's, Pi only)
    except ImportError:  # an old picamera2: those only ran on VC4 boards
        return False
    return get_platform() == Platform.PISP


def capture_time(metadata: dict) -> float | None:
    """When the sensor made the frame (epoch seconds), so line I/O matches parts to frames without the
    camera's own lag: libcamera's ``FrameWallClock`` (ns since the epoch) where it gives one, else
    ``SensorTimestamp`` (ns on the monotonic clock) moved onto the wall clock; both mark the end of
    the exposure. None when neither is there (the pipeline then stamps the frame on arrival)."""
    wall = metadata.get("FrameWallClock")
    if wall:
        return wall / 1e9
    sensor = metadata.get("SensorTimestamp")
    if sensor:
        return time.time() - (time.monotonic_ns() - sensor) / 1e9
    return None


class PicameraSource:
    """Frames from one camera's ``lores`` stream, as BGR like every other source."""

    live = True
    reopens = True

    def __init__(self, camera: int = 0, fps: float | None = None, main_size: tuple[int, int] = (1280, 960),
                 lores_size: tuple[int, int] = CAMERA_SIZE) -> None:
        self.name = f"picamera:{camera}"
        self.camera = camera
        self.fps = fps
        self.main_size = main_size
        self.lores_size = lores_size
        self._picam = None
        self._lores_format = "YUV420"

    def _start(self) -> Any:  # a Picamera2 (apt's, untyped)
        try:
            from picamera2 import Picamera2  # pyright: ignore[reportMissingImports] (apt's, on the Pi only)
        except ImportError:
            raise DataError("picamera2 is not installed: sudo apt install python3-picamera2, "
                            "and create the venv with --system-site-packages") from None
        try:
            picam = Picamera2(self.camera)
        except (IndexError, RuntimeError) as exc:
            raise DataError(f"camera {self.camera} is not available ({exc}): check the cable and 'rpicam-hello'") \
                from None
        self._lores_format = "RGB888" if _is_pisp() else "YUV420"
        controls = {"FrameRate": float(self.fps)} if self.fps else {}
        config = picam.create_preview_configuration(
            main={"size": self.main_size, "format": "RGB888"},
            lores={"size": self.lores_size, "format": self._lores_format},
            controls=controls,
        )
        picam.configure(config)
        picam.start()
        return picam

    def to_bgr(self, array: np.ndarray) -> np.ndarray:
        """The lores array as BGR: "RGB888" is already B,G,R in memory; YUV420 is converted."""
        if self._lores_format == "YUV420":
            return cv2.cvtColor(array, cv2.COLOR_YUV2BGR_I420)  # planar Y, then U, then V
        return array[:, :, :3]

    def frames(self) -> Iterator[Captured]:
        self._picam = picam = self._start()
        while True:
            request = picam.capture_request()
            try:
                array, metadata = request.make_array("lores"), request.get_metadata()
            finally:
                request.release()  # back to the camera at once: it has only a few buffers
            yield Captured(self.to_bgr(array), ts=capture_time(metadata))

    def close(self) -> None:
        if self._picam is not None:
            self._picam.stop()
            self._picam.close()
            self._picam = None
