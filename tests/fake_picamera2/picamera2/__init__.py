"""A stand-in for picamera2 (no camera here): records how it is configured, returns fixed frames.

The platform it pretends to be is set by the test through ``platform.CURRENT``; requests carry
``SensorTimestamp`` (and ``FrameWallClock`` when ``WALL_CLOCK``) as libcamera's metadata does.
"""

from __future__ import annotations

import time

import numpy as np

from picamera2 import platform  # noqa: F401  (picamera2.platform, as the real package has)

CAMERAS = 2
SENSOR_LAG_NS = 40_000_000  # the frame was exposed this long before the request completes
WALL_CLOCK = False  # whether metadata has FrameWallClock (set by a test)
instances: list[Picamera2] = []


class CompletedRequest:
    """One frame's buffers and metadata, held from the camera until ``release``."""

    def __init__(self, camera: Picamera2, metadata: dict) -> None:
        self.camera, self.metadata, self.released = camera, metadata, False

    def make_array(self, name: str) -> np.ndarray:
        assert not self.released
        return self.camera.make_array(name)

    def get_metadata(self) -> dict:
        return dict(self.metadata)

    def release(self) -> None:
        assert not self.released
        self.released = True
        self.camera.requests_out -= 1



class Picamera2:
    def __init__(self, camera_num: int = 0) -> None:
        if camera_num >= CAMERAS:
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.config: dict | None = None
        self.started = False
        self.closed = False
        self.requests_out = 0  # requests captured and not yet released
        instances.append(self)

    def create_preview_configuration(self, main=None, lores=None, controls=None) -> dict:
        return {"main": main, "lores": lores, "controls": controls or {}}

    def configure(self, config: dict) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_request(self) -> CompletedRequest:
        assert self.started
        self.requests_out += 1
        metadata = {"SensorTimestamp": time.monotonic_ns() - SENSOR_LAG_NS, "ExposureTime": 10000}
        if WALL_CLOCK:  # libcamera from 2025 on also gives the same moment on the wall clock
            metadata["FrameWallClock"] = time.time_ns() - SENSOR_LAG_NS
        return CompletedRequest(self, metadata)

    def make_array(self, name: str) -> np.ndarray:
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
