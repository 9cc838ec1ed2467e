"""The station's JSON API from a script (docs/station.md): the demo's labeller, ``deploy --auto``'s labelled rule."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


class StationClient:
    """``call(path)`` GETs, ``call(path, body)`` POSTs; an HTTP error is ``urllib.error.HTTPError``."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    def answers(self) -> bool:
        """Whether the station is up and takes the token."""
        try:
            self.call("/api/stats")
        except OSError:
            return False
        return True
