"""The setup page: aim the camera, draw the region of interest, watch results and label frames, from a phone.

The standard library's ``ThreadingHTTPServer`` is enough for one page and a handful of people
beside a line: no framework to install on the Pi. One static page (``page.html``, no build
step) talks to a few JSON endpoints (docs/http.md). What it costs the daemon:

- nothing while nobody watches: the frame loop only keeps a reference to its latest frame
  (the result sink does that anyway); the JPEG is encoded in the viewer's own request thread,
  at most ``fps`` times a second, and shared by every viewer;
- with viewers, one JPEG encode per frame shown, and a status document a second per viewer.

Security: the token, as ``linewatch.edge.http`` keeps it for both pages.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np

from linewatch.edge.device.config import ROTATIONS, Rotation
from linewatch.edge.http import JsonHandler, TokenServer
from linewatch.edge.model.images import encode_jpeg, parse_roi

logger = logging.getLogger(__name__)

LIVE_WIDTH = 640  # the live view is scaled down to this width: a phone shows no more, and it encodes faster
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.jpg$")


class DeviceView(Protocol):
    """What the page reads from and asks of the running daemon (``setup.SetupView`` implements it)."""

    def status(self) -> dict[str, Any]:
        """Model card, latest result, view (ROI, rotation), stats and recent events: no secrets."""
        ...

    def latest_frame(self) -> tuple[int, np.ndarray] | None:
        """The newest classified frame, whole (before the ROI), with its id."""
        ...

    def set_view(self, roi: tuple[float, float, float, float] | None, rotate: Rotation) -> dict[str, Any]:
        """Apply a region of interest and rotation to the next frames, and keep it in the config file."""
        ...

    def save_frame(self, label: str) -> str:
        """Save the newest frame as a photo of ``label`` for the next training round; where it went."""
        ...

    def snapshot(self, name: str) -> bytes | None:
        """An event's snapshot JPEG by file name."""
        ...

    def metrics(self) -> bytes:
        """Prometheus's text format."""
        ...


class LiveFrame:
    """The newest frame as JPEG, encoded on demand at most ``fps`` times a second and shared by all viewers."""

    def __init__(self, view: DeviceView, fps: float) -> None:
        self.view = view
        self.period = 1 / fps
        self._lock = threading.Lock()
        self._jpeg: bytes | None = None
        self._made = 0.0
        self._frame_id = -1
        self.encoded = 0  # JPEGs made: a test and the bench read it

    def jpeg(self) -> tuple[int, bytes] | None:
        with self._lock:
            if self._jpeg is None or time.monotonic() - self._made >= self.period:
                latest = self.view.latest_frame()
                if latest is None:
                    return None
                frame_id, image = latest
                if frame_id != self._frame_id or self._jpeg is None:
                    height, width = image.shape[:2]
                    if width > LIVE_WIDTH:
                        image = cv2.resize(image, (LIVE_WIDTH, round(height * LIVE_WIDTH / width)),
                                           interpolation=cv2.INTER_AREA)
                    self._jpeg, self._frame_id = encode_jpeg(image, quality=80), frame_id
                    self.encoded += 1
                self._made = time.monotonic()
            return self._frame_id, self._jpeg


class SetupServer(TokenServer):
    """The setup page's server; ``start`` and ``stop`` follow the daemon's run."""

    whose = "the device's"

    def __init__(self, view: DeviceView, host: str, port: int, token: str, fps: float = 4.0,
                 cert_file: str | None = None, key_file: str | None = None) -> None:
        self.view = view
        self.live = LiveFrame(view, fps)
        page = resources.files("linewatch.edge.device").joinpath("page.html").read_bytes()
        super().__init__(_handler(self), page, host, port, token, cert_file, key_file)

    def start(self) -> None:
        super().start()
        logger.info("setup page at %s (the token is in the config, or in state_dir/http-token)", self.url)


def _handler(server: SetupServer) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        # --- routes ----------------------------------------------------------------------------

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if not self._public(server, path):
                return
            if path == "/api/status":
                self._json(HTTPStatus.OK, server.view.status())
            elif path == "/api/frame.jpg":
                live = server.live.jpeg()
                if live is None:
                    self._error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
                else:
                    self._send(HTTPStatus.OK, live[1], "image/jpeg", {"X-Frame-Id": str(live[0])})
            elif path == "/api/config":
                self._json(HTTPStatus.OK, server.view.status()["view"])
            elif path == "/metrics":
                self._send(HTTPStatus.OK, server.view.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            elif path == "/api/stream":
                self._stream()
            elif path.startswith("/api/snapshots/") and SNAPSHOT_NAME.match(path.rsplit("/", 1)[-1]):
                jpeg = server.view.snapshot(path.rsplit("/", 1)[-1])
                if jpeg is None:
                    self._error(HTTPStatus.NOT_FOUND, "no such snapshot (it may have gone under the quota)")
                else:
                    self._send(HTTPStatus.OK, jpeg, "image/jpeg")
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such page: {path}")

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self._posted(server, path)
            if body is None:
                return
            try:
                if path == "/api/config":
                    self._json(HTTPStatus.OK, server.view.set_view(_roi(body.get("roi")), _rotation(body)))
                elif path == "/api/label":
                    label = body.get("label")
                    if not isinstance(label, str):
                        raise ValueError('send {"label": NAME}')
                    self._json(HTTPStatus.OK, {"saved": server.view.save_frame(label)})
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
            except ValueError as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))

        def _stream(self) -> None:
            """Server-sent events: the status document once a second, while the viewer stays."""
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.close_connection = True
            try:
                while not server.stopping.is_set():
                    self.wfile.write(b"data: " + json.dumps(server.view.status()).encode() + b"\n\n")
                    self.wfile.flush()
                    server.stopping.wait(1.0)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the viewer left

    return Handler


def _roi(value: Any) -> tuple[float, float, float, float] | None:
    """``[x, y, w, h]`` as fractions of the frame, checked as the config's ``source.roi``; None for all of it."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                for v in value)):
        raise ValueError('"roi" is [x, y, w, h] as fractions of the frame, or null for all of it')
    return parse_roi(",".join(f"{float(v):.4f}" for v in value))


def _rotation(body: dict[str, Any]) -> Rotation:
    rotate = body.get("rotate", 0)
    if rotate not in ROTATIONS or isinstance(rotate, bool):
        raise ValueError('"rotate" is 0, 90, 180 or 270 (clockwise)')
    return ROTATIONS[ROTATIONS.index(rotate)]
