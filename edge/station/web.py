"""The labelling page and its JSON API (docs/station.md): a grid of the inbox, one key per label.

The page (``page.html``, no build step) and a script use the same endpoints, with the same
token as the device's setup page (``linewatch.edge.http``). A decision is one request; when two
people decide the same photo, the second gets 409 and the page says who was first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from linewatch.edge.http import JsonHandler, TokenServer
from linewatch.edge.station.inbox import STATES, Conflict, Inbox, NotFound

logger = logging.getLogger(__name__)

IMAGE = re.compile(r"^/api/samples/([A-Za-z0-9_.-]+)/([0-9]{13}-[0-9]{1,12})\.jpg$")


class StationServer(TokenServer):
    """The labelling page's server; ``counters`` adds the receiver's live figures to ``/api/stats``."""

    name = "station-http"
    whose = "the station's"

    def __init__(self, inbox: Inbox, host: str, port: int, token: str, counters: Callable[[], dict[str, Any]],
                 cert_file: str | None = None, key_file: str | None = None) -> None:
        self.inbox = inbox
        self.counters = counters
        page = resources.files("linewatch.edge.station").joinpath("page.html").read_bytes()
        super().__init__(_handler(self), page, host, port, token, cert_file, key_file)


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _status(exc: ValueError) -> HTTPStatus:
    """The answer to an inbox's refusal: decided already (409), no such sample (404), else a bad request (400)."""
    return HTTPStatus.CONFLICT if isinstance(exc, Conflict) else \
        HTTPStatus.NOT_FOUND if isinstance(exc, NotFound) else HTTPStatus.BAD_REQUEST


def _handler(server: StationServer) -> type[BaseHTTPRequestHandler]:
    inbox = server.inbox

    class Handler(JsonHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if not self._public(server, url.path):
                return
            query = parse_qs(url.query)
            try:
                if url.path == "/api/samples":
                    state = _one(query, "state") or "inbox"
                    if state not in STATES:
                        raise ValueError(f"state is one of {', '.join(STATES)}")
                    limit = int(_one(query, "limit") or 500)
                    self._json(HTTPStatus.OK, {"samples": inbox.samples(
                        state, _one(query, "device"), _one(query, "reason"), _one(query, "model"),
                        max(1, min(limit, 5000)))})
                elif url.path == "/api/labels":
                    self._json(HTTPStatus.OK, {"labels": inbox.labels()})
                elif url.path == "/api/stats":
                    self._json(HTTPStatus.OK, {**inbox.stats(), "receiver": server.counters()})
                elif match := IMAGE.match(url.path):
                    self._send(HTTPStatus.OK, inbox.image(*match.groups()), "image/jpeg",
                               {"Cache-Control": "private, max-age=3600"})
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no such page: {url.path}")
            except ValueError as exc:
                self._error(_status(exc), str(exc))

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            body = self._posted(server, path)
            if body is None:
                return
            try:
                device, sample_id, by = body.get("device_id"), body.get("sample_id"), body.get("by") or "api"
                if not isinstance(device, str) or not isinstance(sample_id, str) or not isinstance(by, str):
                    raise ValueError('send {"device_id": ID, "sample_id": ID} (and "label" to label, "by" for who)')
                by = by[:64]
                if path == "/api/label":
                    label = body.get("label")
                    if not isinstance(label, str):
                        raise ValueError('send {"device_id", "sample_id", "label"}')
                    self._json(HTTPStatus.OK, inbox.label(device, sample_id, label, by))
                elif path == "/api/skip":
                    self._json(HTTPStatus.OK, inbox.skip(device, sample_id, by))
                elif path == "/api/undo":
                    self._json(HTTPStatus.OK, inbox.undo(device, sample_id, by))
                else:
                    self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
            except ValueError as exc:
                self._error(_status(exc), str(exc))
            except OSError as exc:  # the data folder: full, read-only
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot move the photo in {inbox.data} ({exc})")

    return Handler
