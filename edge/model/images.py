"""Images in and out: the one preparation shared by training, conversion and the device.

Training, calibration and inference must see pixels prepared the same way, or int8
accuracy collapses. So this is the only place that decodes, resizes and reorders channels;
the model does its own normalization, and gets raw 0..255 pixels. It is also the one place
that encodes JPEGs (snapshots, review frames, collected photos, the synthetic line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np

ResizeMode = Literal["stretch", "crop", "letterbox"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
JPEG_QUALITY = 90  # sharp enough to label and train on, a third of the bytes of 98


def image_files(folder: Path) -> list[Path]:
    """Every image file below ``folder``, by its suffix, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


ROTATIONS = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def parse_roi(text: str) -> tuple[float, float, float, float]:
    """``x,y,w,h`` as fractions of the frame (0..1), so the ROI survives a change of camera resolution."""
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"region of interest '{text}' is not x,y,w,h (fractions of the frame, e.g. 0.2,0,0.6,1)") \
            from None
    if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9):
        raise ValueError(f"region of interest '{text}' leaves the frame: x+w and y+h must be at most 1")
    return x, y, w, h


def crop_rotate(bgr: np.ndarray, roi: tuple[float, float, float, float] | None = None, rotate: int = 0) -> np.ndarray:
    """The part of the belt that matters, turned upright: ROI first (in camera coordinates), then rotation."""
    if roi is not None:
        h, w = bgr.shape[:2]
        x0, y0 = int(round(roi[0] * w)), int(round(roi[1] * h))
        x1, y1 = max(x0 + 1, int(round((roi[0] + roi[2]) * w))), max(y0 + 1, int(round((roi[1] + roi[3]) * h)))
        bgr = bgr[y0:y1, x0:x1]
    turn = ROTATIONS.get(rotate)
    if turn is not None:
        bgr = cv2.rotate(bgr, turn)
    return bgr


def prepare(bgr: np.ndarray, height: int, width: int, resize_mode: ResizeMode = "stretch",
            color_order: str = "RGB", out: np.ndarray | None = None) -> np.ndarray:
    """Resize a BGR (or grey, or BGRA) OpenCV image to ``height x width`` uint8, in ``color_order``.

    ``out`` (contiguous ``height x width x 3`` uint8), when given, receives the pixels: the
    device prepares frames straight into the block it hands the interpreter. A frame already
    at the model's size (a camera stream set to it) is not resized, only reordered: that is
    exactly what OpenCV's resize to the same size gives, a copy.
    """
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    elif bgr.shape[2] == 4:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_BGRA2BGR)
    if bgr.dtype != np.uint8:
        # 16-bit images: keep the top 8 bits, as a camera's 8-bit output would.
        bgr = (bgr.astype(np.float32) * (255.0 / np.iinfo(bgr.dtype.name).max)).astype(np.uint8)
    if out is None:
        out = np.empty((height, width, 3), np.uint8)
    h, w = bgr.shape[:2]
    if resize_mode == "letterbox":
        scale = min(width / w, height / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        x0, y0 = (width - nw) // 2, (height - nh) // 2
        out[:] = 0
        out[y0 : y0 + nh, x0 : x0 + nw] = _resized(bgr, nh, nw, color_order)
        return out
    if resize_mode == "crop":
        scale = max(width / w, height / h)
        cw, ch = round(width / scale), round(height / scale)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        bgr = bgr[y0 : y0 + ch, x0 : x0 + cw]
    if bgr.shape[:2] != (height, width):
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    if color_order == "RGB":
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out)
    else:
        out[:] = bgr
    return out


def _resized(bgr: np.ndarray, height: int, width: int, color_order: str) -> np.ndarray:
    resized = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB) if color_order == "RGB" else resized


def read_image(path: str) -> np.ndarray | None:
    """Decode an image file with OpenCV as stored (BGR, grey, BGRA or 16-bit).

    ``None`` when the file is empty, not an image, or a JPEG cut short (OpenCV would
    otherwise hand back a half-grey picture with only a warning).
    """
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        return None
    return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)


def encode_jpeg(bgr: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A BGR (or grey) image as JPEG bytes; ``ValueError`` when OpenCV cannot encode it."""
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a {bgr.shape} {bgr.dtype} image as JPEG")
    return encoded.tobytes()


def heat_map_overlay(bgr: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """An anomaly heat map (any size, 0 up) stretched over a BGR frame in JET colours, half see-through."""
    peak = float(heat.max()) or 1.0
    colours = cv2.applyColorMap((255 * np.clip(heat / peak, 0, 1)).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.resize(colours, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(bgr, 0.55, colours, 0.45, 0)
