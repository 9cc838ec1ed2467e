"""The handshake as an OPC UA server (asyncua), laid out after OPC 40100-1 Machine Vision where it applies.

A documented subset of the companion specification (docs/plc.md): one ``VisionSystem`` object
with its ``VisionStateMachine`` (``CurrentState``: Operational while the device inspects, else
Preoperational), its ``ResultManagement`` (the shown result's points) and ``Statistics`` (the
counters, heartbeat and model); the PLC's two writes are methods on the vision system,
``Trigger`` (the specification's single job, returning the part's id) and ``ResultsAck``. Every
point of the handshake's map is a variable with a string node id of its own name in the
``urn:linewatch:machine-vision`` namespace; values are pushed as the handshake changes, for
data-change subscriptions.

Security: the only endpoint is Basic256Sha256 Sign&Encrypt unless ``insecure`` adds the open
one; clients log in with the configured user and password, or a certificate from ``trust_dir``;
anonymous access only when ``anonymous`` is set. The server's own certificate is made at the first
start and kept in ``state_dir/opcua``. A refusal is logged once per user or certificate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from linewatch.edge.device.plc.handshake import BY_NAME, OPCUA_NAMESPACE, POINTS, Handshake, opcua_path
from linewatch.edge.errors import UsageError

logger = logging.getLogger(__name__)

NAMESPACE = OPCUA_NAMESPACE
VARIANTS = {"bool": ua.VariantType.Boolean, "uint16": ua.VariantType.UInt16, "uint32": ua.VariantType.UInt32}
START_TIMEOUT_S = 30.0


def _ids(index: int, name: str) -> tuple[str, str]:
    """A node's id and browse name in the namespace at ``index``."""
    return f"ns={index};s={name}", f"{index}:{name}"


def application_uri(device_id: str) -> str:
    return f"urn:linewatch:{device_id}"


def own_certificate(state_dir: Path) -> tuple[Path, Path]:
    """Where the server keeps the certificate and key it made: (certificate, key)."""
    return state_dir / "opcua" / "server-cert.der", state_dir / "opcua" / "server-key.pem"


async def ensure_certificate(cert_file: Path, key_file: Path, device_id: str) -> None:
    """The server's own certificate: made when missing, made again when expired or not this device's (asyncua's
    rule), kept otherwise, so that a client that trusted it once goes on trusting it. The key is the service's
    alone."""
    cert_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    await setup_self_signed_certificate(key_file, cert_file, application_uri(device_id), socket.gethostname(),
                                        [ExtendedKeyUsageOID.SERVER_AUTH], {"commonName": f"linewatch {device_id}"})
    key_file.chmod(0o600)


class _Users:
    """asyncua's user manager: the configured user, trusted certificates, anonymous when allowed; each refusal
    logged once."""

    def __init__(self, username: str | None, password: str | None, anonymous: bool,
                 trusted: Callable[[bytes], bool]) -> None:
        self.username, self.password, self.anonymous, self.trusted = username, password, anonymous, trusted
        self.refused: set[str] = set()

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None:
            if self.username is not None and self.password is not None and hmac.compare_digest(
                    username.encode(), self.username.encode()) and hmac.compare_digest(
                    (password or "").encode(), self.password.encode()):
                return User(role=UserRole.User, name=username)
            self._refuse(f"user {username!r}", "wrong user name or password")
            return None
        if certificate is not None:
            if self.trusted(certificate):
                return User(role=UserRole.User, name="certificate")
            self._refuse(f"certificate {hashlib.sha256(certificate).hexdigest()[:16]}", "not in opcua.trust_dir")
            return None
        if self.anonymous:
            return User(role=UserRole.User, name="anonymous")
        self._refuse("anonymous", "anonymous access is off (opcua.anonymous)")
        return None

    def _refuse(self, who: str, why: str) -> None:
        if who not in self.refused:
            self.refused.add(who)
            logger.warning("opcua: refused %s: %s (logged once)", who, why)


class OpcUaServer:
    """The OPC UA server on a thread of its own; listening once ``start()`` returns (an error at start otherwise)."""

    def __init__(self, handshake: Handshake, host: str, port: int, *, device_id: str, state_dir: Path,
                 username: str | None = None, password: str | None = None, anonymous: bool = False,
                 insecure: bool = False, cert_file: str | None = None, key_file: str | None = None,
                 trust_dir: str | None = None) -> None:
        self.handshake = handshake
        self.host, self.port, self.device_id = host, port, device_id
        self.insecure = insecure
        own_cert, own_key = own_certificate(state_dir)
        self.cert_file = Path(cert_file) if cert_file else own_cert
        self.key_file = Path(key_file) if key_file else own_key
        self.made_certificate = not cert_file
        self.trust_dir = Path(trust_dir) if trust_dir else None
        self.trusted = self._load_trusted(self.trust_dir) if self.trust_dir else set()
        self.users = _Users(username, password, anonymous, lambda der: der in self.trusted)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._failure: str | None = None
        self._pending = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="opcua", daemon=True)

    @staticmethod
    def _load_trusted(folder: Path) -> set[bytes]:
        """The client certificates in ``trust_dir`` (DER or PEM), as DER."""
        trusted = set()
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".der", ".pem", ".crt"))
        except OSError as exc:
            raise UsageError(f"opcua.trust_dir {folder}: {exc.strerror}: a folder of trusted client certificates") \
                from None
        for path in files:
            data = path.read_bytes()
            try:
                cert = x509.load_pem_x509_certificate(data) if b"BEGIN CERTIFICATE" in data else \
                    x509.load_der_x509_certificate(data)
            except ValueError:
                raise UsageError(f"opcua.trust_dir: {path} is not a certificate (DER or PEM)") from None
            trusted.add(uacrypto.der_from_x509(cert))
        return trusted

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S) or self._failure:
            raise UsageError(f"opcua.listen {self.host}:{self.port}: cannot serve ({self._failure or 'timed out'}): "
                             "choose another port, or check opcua.cert_file and opcua.key_file")
        logger.info("opcua: serving the handshake at %s (%s)", self.url,
                    "Basic256Sha256 Sign&Encrypt" + (" and unencrypted" if self.insecure else " only"))

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/linewatch/"

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # refusals are logged here, once each
        try:
            server = await self._build()
            await server.start()
        except (OSError, ValueError, ua.UaError) as exc:
            self._failure = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self._started.set()
            return
        self._started.set()
        self.handshake.on_change(self._schedule)
        await self._refresh()
        try:
            await self._stop.wait()
        finally:
            await server.stop()

    async def _build(self) -> Server:
        server = Server(user_manager=self.users)  # type: ignore[arg-type]  # asyncua's protocol, duck-typed
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(f"linewatch {self.device_id}")
        await server.set_application_uri(application_uri(self.device_id))
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        server.set_security_policy(policies + ([ua.SecurityPolicyType.NoSecurity] if self.insecure else []))
        tokens: list[type] = [ua.UserNameIdentityToken, ua.X509IdentityToken]
        server.set_identity_tokens(tokens + ([ua.AnonymousIdentityToken] if self.users.anonymous else []))
        if self.made_certificate:
            await ensure_certificate(self.cert_file, self.key_file, self.device_id)
        await server.load_certificate(str(self.cert_file))
        await server.load_private_key(str(self.key_file))
        if self.trust_dir is not None:
            server.set_certificate_validator(self._validate)
        index = await server.register_namespace(NAMESPACE)
        system = await server.nodes.objects.add_object(*_ids(index, "VisionSystem"))
        folders = {name: await system.add_object(*_ids(index, name))
                   for name in ("VisionStateMachine", "ResultManagement", "Statistics")}
        self.state_node = await folders["VisionStateMachine"].add_variable(
            *_ids(index, "CurrentState"), "Preoperational")
        self.nodes: dict[str, ua.NodeId] = {}
        self.values: dict[str, int] = {}
        for point in POINTS:
            where = opcua_path(point).split("/")
            if len(where) != 3:  # the PLC's writes: the methods below
                continue
            node = await folders[where[1]].add_variable(*_ids(index, point.name),
                                                     ua.Variant(0, VARIANTS[point.type]))
            self.nodes[point.name] = node.nodeid
        await system.add_method(*_ids(index, "Trigger"), self._trigger, [],
                                [ua.VariantType.UInt32])
        await system.add_method(*_ids(index, "ResultsAck"), self._ack, [],
                                [])
        self.server = server
        return server

    async def _validate(self, certificate: x509.Certificate, application: ua.ApplicationDescription) -> None:
        """The secure channel's client certificate must be one of ``trust_dir``'s."""
        der = uacrypto.der_from_x509(certificate)
        if der not in self.trusted:
            self.users._refuse(f"certificate {hashlib.sha256(der).hexdigest()[:16]} "
                               f"({application.ApplicationUri})", "not in opcua.trust_dir")
            raise ServiceError(StatusCodes.BadCertificateUntrusted)

    def _trigger(self, parent: ua.NodeId) -> list[ua.Variant]:
        part_id = self.handshake.trigger_part()
        return [ua.Variant(part_id, ua.VariantType.UInt32)]

    def _ack(self, parent: ua.NodeId) -> list[ua.Variant]:
        self.handshake.write("ResultsAck", 1)
        return []

    def _schedule(self) -> None:
        """From any thread: refresh the variables soon, once however many changes come first."""
        if self._loop is None or self._pending:
            return
        self._pending = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._refresh()))

    async def _refresh(self) -> None:
        """Write the values that changed, ``ResultsReady`` last: a client that sees it sees its result's values."""
        self._pending = False
        values = self.handshake.values()
        for name in sorted(values, key=lambda name: name == "ResultsReady"):
            value = values[name]
            if name in self.nodes and self.values.get(name) != value:
                self.values[name] = value
                kind = VARIANTS[BY_NAME[name].type]
                await self.server.write_attribute_value(
                    self.nodes[name], ua.DataValue(ua.Variant(bool(value) if kind == ua.VariantType.Boolean
                                                              else value, kind)))
        state = "Operational" if values["Ready"] else "Preoperational"
        if self.values.get("CurrentState") != int(values["Ready"]):
            self.values["CurrentState"] = int(values["Ready"])
            await self.server.write_attribute_value(self.state_node.nodeid, ua.DataValue(ua.Variant(state)))

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._started.is_set() and not self._failure:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
