"""Connecting to the plant's broker with paho-mqtt 2.x: addresses, credentials, TLS, the client.

Shared by the device (``comms.publisher``) and the operator tools (``tools.monitor``).
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from linewatch.edge.errors import UsageError

logger = logging.getLogger(__name__)

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class Credentials:
    """Who we are to the broker. The password is never logged or put in a repr."""

    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={'***' if self.password else None})"


def parse_broker(url: str) -> BrokerAddress:
    """``mqtt://host:port`` or ``mqtts://host:port`` (TLS); ports default to 1883 and 8883."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise UsageError(f"broker '{url}' is not a broker URL: use mqtt://HOST:PORT or mqtts://HOST:PORT")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise UsageError(f"broker '{url}' has a bad port number") from None
    return BrokerAddress(parts.hostname, port, tls)


class _RetryNoise(logging.Filter):
    """paho logs every failed reconnect attempt at ERROR; the publisher already says so once per outage.

    Those lines are kept at DEBUG, where they help; every other paho message passes as it is.
    """

    REPEATS = ("Client is not connected", "failed to receive on socket")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.getMessage().startswith(self.REPEATS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


PAHO_LOGGER = logging.getLogger("linewatch.edge.comms.paho")
PAHO_LOGGER.addFilter(_RetryNoise())


def make_client(client_id: str, protocol: str) -> mqtt.Client:
    """A paho client with the version-2 callback API, the asked-for protocol, and our logger.

    With ``suppress_exceptions`` paho logs an exception raised in a callback (through
    ``enable_logger``) and keeps its network thread alive: a bug in a handler never stops the
    device from publishing.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"MQTT protocol '{protocol}' is not supported: use 5 or 3.1.1")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS[protocol])
    client.suppress_exceptions = True
    client.enable_logger(PAHO_LOGGER)
    return client


def tls_context(credentials: Credentials, insecure: bool = False) -> ssl.SSLContext:
    """The broker's certificate is checked against ``ca_file`` (else the system's CAs) and the host name.

    ``insecure`` turns both checks off: for a first test only; the daemon warns at every start.
    """
    # As paho's own tls_set builds it: no VERIFY_X509_STRICT (Python 3.13's default context), which refuses the
    # plant CAs made without a key-usage extension that trixie's test run met.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if credentials.ca_file:
            context.load_verify_locations(credentials.ca_file)
        else:
            context.load_default_certs()
        if credentials.cert_file:
            context.load_cert_chain(credentials.cert_file, credentials.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load the TLS files ({exc}): check ca_file, cert_file and key_file") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_problem(context: ssl.SSLContext, broker: BrokerAddress, timeout: float = 5.0) -> str | None:
    """Why a TLS handshake with the broker fails (a certificate the CA did not sign, a host name that does not
    match, a client certificate the broker wants), or None when it succeeds or the broker cannot be reached."""
    try:
        with socket.create_connection((broker.host, broker.port), timeout) as raw, \
                context.wrap_socket(raw, server_hostname=broker.host) as tls:
            tls.recv(1)  # TLS 1.3: a refused client certificate only shows on the first read
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}"
    except ssl.SSLError as exc:
        return exc.reason or str(exc)
    except OSError:
        return None
    return None


def connect(client: mqtt.Client, broker: BrokerAddress, keepalive: int = 30,
            credentials: Credentials = Credentials(), max_delay: float = 10.0, insecure: bool = False) -> None:
    """Start connecting in the background; paho retries with backoff (1 s doubling to ``max_delay``), forever."""
    if credentials.username:
        client.username_pw_set(credentials.username, credentials.password)
    if broker.tls:
        client.tls_set_context(tls_context(credentials, insecure))
        client.tls_insecure_set(insecure)
    client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(max_delay)))
    client.connect_async(broker.host, broker.port, keepalive=keepalive)
    client.loop_start()
