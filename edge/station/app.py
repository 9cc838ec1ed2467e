"""``linewatch station``: the inbox, the receiver and the labelling page, composed and run until a signal."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linewatch.edge.comms.mqtt import Credentials, parse_broker
from linewatch.edge.device.config import LOOPBACK, parse_listen
from linewatch.edge.errors import UsageError
from linewatch.edge.http import page_token
from linewatch.edge.station.inbox import Inbox
from linewatch.edge.station.receiver import Receiver
from linewatch.edge.station.web import StationServer

logger = logging.getLogger(__name__)

TOKEN_ENV = "LINEWATCH_STATION_TOKEN"


@dataclass
class StationOptions:
    broker: str
    data: Path
    http: str = "127.0.0.1:8090"
    prefix: str = "linewatch"
    protocol: str = "5"
    credentials: Credentials = Credentials()
    devices: set[str] | None = None
    per_hour: float = 3600.0
    max_inbox: int = 5000
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class Station:
    """``start`` receives and serves; ``stop`` ends both. The page's token: ``--token-file``, the environment, or
    one made at the first start and kept in ``DATA/_inbox/http-token``."""

    def __init__(self, options: StationOptions) -> None:
        self.options = options
        self.init_inbox(options.data, options.max_inbox)
        self.init_receiver(options)
        self.init_http(options)

    def init_inbox(self, data: Path, max_inbox: int) -> None:
        if data.exists() and not data.is_dir():
            raise UsageError(f"--data {data} is a file: give the dataset's folder (DATA/<label>/ photos)")
        try:
            self.inbox = Inbox(data, max_inbox)
        except OSError as exc:
            raise UsageError(f"--data {data}: {exc.strerror or exc}") from None

    def init_receiver(self, options: StationOptions) -> None:
        self.receiver = Receiver(self.inbox, parse_broker(options.broker), options.prefix, options.protocol,
                                 options.credentials, options.devices, options.per_hour)

    def init_http(self, options: StationOptions) -> None:
        """The page's server, bound now so that a port in use is a one-line error at start (exit 2)."""
        try:
            host, port = parse_listen(options.http)
        except ValueError as exc:
            raise UsageError(f"--http: {exc}") from None
        if host not in LOOPBACK and not options.cert_file:
            logger.warning("--http %s is not loopback and has no --cert-file: the token and the photos cross the "
                           "network in clear text", options.http)
        token = self._token(options.token_file)
        try:
            self.web = StationServer(self.inbox, host, port, token, self.counters, options.cert_file, options.key_file)
        except OSError as exc:
            raise UsageError(f"--http {options.http}: {exc.strerror or exc} (another program on that port? choose "
                             "another, or check --cert-file and --key-file)") from None

    def _token(self, token_file: str | None) -> str:
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as exc:
                raise UsageError(f"--token-file {token_file} cannot be read ({exc.strerror})") from None
            if not token:
                raise UsageError(f"--token-file {token_file} is empty: write the page's token into it")
            return token
        return page_token(os.environ.get(TOKEN_ENV), self.inbox.folder, "station page")

    def counters(self) -> dict[str, Any]:
        return {"uploads": len(self.receiver.uploads), "devices": sorted(self.receiver.models)}

    @property
    def url(self) -> str:
        return self.web.url

    def start(self) -> None:
        self.receiver.start()
        self.web.start()
        logger.info("station: samples from %s into %s; labelling page at %s", self.options.broker,
                    self.inbox.folder, self.web.url)

    def stop(self) -> None:
        self.web.stop()
        self.receiver.stop()
        self.inbox.close()

    def run(self) -> None:
        """Until SIGTERM or SIGINT."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *args: stop.set())
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()
