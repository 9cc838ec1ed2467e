"""A stand-in for picamera2 (no camera here): records how it is configured, returns fixed frames.

The platform it pretends to be is set by the test through ``platform.CURRENT``.
"""

from __future__ import annotations

import numpy as np

from picamera2 import platform  # noqa: F401  (picamera2.platform, as the real package has)

CAMERAS = 2
instances: list[Picamera2] = []


class Picamera2:
    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= CAMERAS:
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.config: dict | None = None
        self.started = False
        self.closed = False
        instances.append(self)

    def create_preview_configuration(self, main=None, lores=None, controls=None) -> dict:
        return {"main": main, "lores": lores, "controls": controls or {}}

    def configure(self, config: dict) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self, name: str = "main") -> np.ndarray:
        assert self.started and name == "lores"
        w, h = self.config["lores"]["size"]
        if self.config["lores"]["format"] == "YUV420":
            # A uniform pure-red frame in YUV420 planar (I420): Y, then U and V at quarter size.
            yuv = np.empty((h * 3 // 2, w), np.uint8)
            yuv[:h] = 76
            yuv[h : h + h // 4] = 85
            yuv[h + h // 4 :] = 255
            return yuv
        frame = np.zeros((h, w, 3), np.uint8)  # "RGB888" is B, G, R in memory
        frame[..., 2] = 255
        return frame

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True
