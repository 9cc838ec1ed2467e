"""Token-guarded JSON over HTTP, with the standard library: the device's setup page and the station's labelling page.

``ThreadingHTTPServer`` is enough for one page and a handful of people: no framework to install
on the Pi. Everything but the page shell and its login needs the token, as ``Authorization:
Bearer TOKEN`` or the HttpOnly cookie ``POST /login`` sets; it is compared in constant time,
never logged, and never sent to the page. Over TLS with a configured certificate, or behind a
reverse proxy that terminates it.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import ssl
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from linewatch.edge.files import write_atomic

logger = logging.getLogger(__name__)

COOKIE = "linewatch_token"
MAX_BODY = 16 * 1024
TOKEN_FILE = "http-token"


def page_token(configured: str | None, folder: Path, page: str) -> str:
    """The configured token, or the one kept in ``folder/http-token`` (made at the first start, mode 0600)."""
    if configured:
        return configured
    path = folder / TOKEN_FILE
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    write_atomic(path, token + "\n", mode=0o600)
    logger.warning("%s: a token was made and kept in %s (read it there; it is never logged)", page, path)
    return token


class TokenServer:
    """An HTTP(S) server in a thread of its own whose API needs ``token``; ``start`` and ``stop`` follow its owner.

    ``page`` is the one HTML page it serves at ``/``, beside the script both pages share (``/page.js``).
    """

    name = "http"
    whose = "the page's"  # whose token to log in with, as a refusal says it

    def __init__(self, handler: type[BaseHTTPRequestHandler], page: bytes, host: str, port: int, token: str,
                 cert_file: str | None = None, key_file: str | None = None) -> None:
        self.page = page
        self.script = resources.files("linewatch.edge").joinpath("page.js").read_bytes()
        self.host = host
        self.token = token
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if cert_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_file, key_file)
            # The handshake happens in the request's thread, at its first read: a client that stalls in it
            # holds up its own thread only, never the accept loop.
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True,
                                                     do_handshake_on_connect=False)
            self.scheme = "https"
        self._thread = threading.Thread(target=self.server.serve_forever, name=self.name, daemon=True)
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.server.server_port}/"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def authorized(self, headers: Any) -> bool:
        given = ""
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):].strip()
        else:
            cookie = SimpleCookie(headers.get("Cookie", ""))
            if COOKIE in cookie:
                given = cookie[COOKIE].value
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


class JsonHandler(BaseHTTPRequestHandler):
    """Replies, JSON bodies and the login: what both pages' handlers share."""

    protocol_version = "HTTP/1.1"
    server_version = "linewatch"
    sys_version = ""  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http %s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any, extra: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", extra)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _body(self) -> dict[str, Any] | None:
        """The request's JSON object, or None after answering 400 or 413."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"more than {MAX_BODY} bytes")
            return None
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if not isinstance(body, dict):
            self._error(HTTPStatus.BAD_REQUEST, "send a JSON object")
            return None
        return body

    def _public(self, gate: TokenServer, path: str) -> bool:
        """Answer what needs no token (the page and its shared script), else say whether the token is there (after
        answering 401): True when the request may go on to the API."""
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, gate.page, "text/html; charset=utf-8")
        elif path == "/page.js":
            self._send(HTTPStatus.OK, gate.script, "text/javascript; charset=utf-8")
        elif not gate.authorized(self.headers):
            self._error(HTTPStatus.UNAUTHORIZED, f"log in with {gate.whose} token")
        else:
            return True
        return False

    def _posted(self, gate: TokenServer, path: str) -> dict[str, Any] | None:
        """A POST's JSON object when the token is there; None after answering it (a bad body, ``/login``, 401)."""
        body = self._body()
        if body is None:
            return None
        if path == "/login":  # ``{"token": ...}``: the HttpOnly cookie, for a browser
            token = str(body.get("token", ""))
            if not token or not hmac.compare_digest(token.encode(), gate.token.encode()):
                self._error(HTTPStatus.UNAUTHORIZED, "wrong token")
                return None
            secure = "; Secure" if gate.scheme == "https" else ""
            self._json(HTTPStatus.OK, {"ok": True},
                       {"Set-Cookie": f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure}"})
            return None
        if not gate.authorized(self.headers):
            self._error(HTTPStatus.UNAUTHORIZED, f"log in with {gate.whose} token")
            return None
        return body
