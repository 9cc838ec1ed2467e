"""Connecting to the plant's broker with paho-mqtt 2.x: addresses, credentials, TLS, the client.

Shared by the device (``comms.publisher``) and the operator tools (``tools.monitor``).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt

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


def make_client(client_id: str, protocol: str) -> mqtt.Client:
    """A paho client with the version-2 callback API, the asked-for protocol, and our logger.

    With ``suppress_exceptions`` paho logs an exception raised in a callback (through
    ``enable_logger``) and keeps its network thread alive: a bug in a handler never stops the
    device from publishing.
    """
    if protocol not in PROTOCOLS:
        raise UsageError(f"MQTT protocol '{protocol}' is not supported: use 5 or 3.1.1")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=PROTOCOLS[protocol])
    client.suppress_exceptions = True
    client.enable_logger(logging.getLogger("linewatch.edge.comms.paho"))
    return client


def connect(client: mqtt.Client, broker: BrokerAddress, keepalive: int = 30,
            credentials: Credentials = Credentials(), max_delay: float = 10.0) -> None:
    """Start connecting in the background; paho retries with backoff (1 s doubling to ``max_delay``), forever."""
    if credentials.username:
        client.username_pw_set(credentials.username, credentials.password)
    if broker.tls:
        try:
            client.tls_set(ca_certs=credentials.ca_file, certfile=credentials.cert_file,
                           keyfile=credentials.key_file, cert_reqs=ssl.CERT_REQUIRED)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the TLS files ({exc}): check ca_file, cert_file and key_file") from None
    client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(max_delay)))
    client.connect_async(broker.host, broker.port, keepalive=keepalive)
    client.loop_start()
