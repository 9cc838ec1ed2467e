"""``linewatch check``: would the daemon start with this configuration, and would the broker take it?

It runs what the daemon runs at start (the same loader with the same defaults, the TLS and
password files, the model through the interpreter) and lists every problem, each with the exit
code the daemon would give. Then it knocks on the broker with the configured credentials: a
refusal (a wrong password, a user the broker does not know) is the daemon's exit 6; a broker that
cannot be reached now is only a warning, because the daemon starts without it and spools.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linewatch.edge.comms.mqtt import Credentials, connect, make_client, parse_broker, tls_context, tls_problem
from linewatch.edge.comms.publisher import REFUSALS
from linewatch.edge.device import config
from linewatch.edge.device.config import Config
from linewatch.edge.device.daemon import make_engine
from linewatch.edge.errors import BrokerError, LinewatchError, ModelError, UsageError
from linewatch.edge.model import artifact, signing


@dataclass(frozen=True)
class Finding:
    """One thing to fix (``code``: the daemon's exit code for it) or to know (``code`` 0: a warning)."""

    code: int
    text: str


@dataclass
class Report:
    config: Config | None
    findings: list[Finding] = field(default_factory=list)
    broker: str = "not asked"  # accepted, refused, unreachable; not asked while the files have problems

    @property
    def exit_code(self) -> int:
        """What the daemon would exit with: the first problem's code, 0 when it would start."""
        return next((f.code for f in self.findings if f.code), 0)

    @property
    def errors(self) -> list[str]:
        return [f.text for f in self.findings if f.code]

    @property
    def warnings(self) -> list[str]:
        return [f.text for f in self.findings if not f.code]


def _rerooted(path: Path | None, overrides: dict[str, Any], cfg: Config, root: Path,
              environ: dict[str, str] | None) -> Config:
    """The configuration with every file setting looked up below ``root`` (an image or ``install --root``)."""
    values = cfg.model_dump()
    moved = dict(overrides)
    for key in config.keys_marked(config.FILE):
        value = config.get_key(values, key)
        if isinstance(value, str) and value.startswith("/"):
            moved[key] = str(root / value.lstrip("/"))
    return config.load_run(path, moved, environ)


def probe_broker(cfg: Config, timeout: float = 5.0, environ: dict[str, str] | None = None) -> tuple[str, Finding]:
    """Connect once with the configured credentials (a client id of its own: the running daemon keeps its
    session) and say how the broker answered."""
    mqtt_cfg = cfg.mqtt
    address = parse_broker(mqtt_cfg.broker)
    credentials = Credentials(mqtt_cfg.username, config.read_password(mqtt_cfg.password_file, environ),
                              mqtt_cfg.ca_file, mqtt_cfg.cert_file, mqtt_cfg.key_file)
    client = make_client(f"linewatch-{cfg.device_id}-check", mqtt_cfg.protocol)
    answered, replies = threading.Event(), []  # the CONNACK's reason code, when one came

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        replies.append(reason)
        answered.set()

    def on_connect_fail(client: Any, userdata: Any) -> None:
        answered.set()

    client.on_connect, client.on_connect_fail = on_connect, on_connect_fail
    where = f"{address.host}:{address.port}"
    try:
        connect(client, address, mqtt_cfg.keepalive, credentials, max_delay=timeout, insecure=mqtt_cfg.insecure)
        answered.wait(timeout)
    except OSError as exc:  # no network at all (not even a loopback for paho's own wake-up socket)
        return _unreachable(where, exc.strerror or str(exc))
    finally:
        client.disconnect()
        client.loop_stop()
    reason = replies[0] if replies else None
    if reason is not None and not reason.is_failure:
        return "accepted", Finding(0, f"the broker at {where} accepted user {mqtt_cfg.username or '(anonymous)'}")
    if reason is not None and reason.value in REFUSALS:
        return "refused", Finding(BrokerError.exit_code, f"the broker at {where} refused user "
                                                         f"{mqtt_cfg.username or '(none)'} ({reason}): check "
                                                         "mqtt.username, the password and the broker's password file")
    problem = tls_problem(tls_context(credentials, mqtt_cfg.insecure), address) if address.tls else None
    return _unreachable(where, f"TLS: {problem}" if problem else str(reason) if reason is not None else "no answer")


def _unreachable(where: str, why: str) -> tuple[str, Finding]:
    """Not a failure: the daemon starts without the broker and spools until it answers."""
    return "unreachable", Finding(0, f"the broker at {where} cannot be reached now ({why}): the daemon will start, "
                                     "inspect and spool until it can")


def check(path: Path | None, overrides: dict[str, Any] | None = None, root: Path = Path("/"),
          probe_s: float | None = 5.0, environ: dict[str, str] | None = None) -> Report:
    """Every problem the daemon would meet at start with this configuration; ``probe_s`` None: no broker probe."""
    overrides = overrides or {}
    try:
        cfg = config.load_run(path, overrides, environ)
        if root != Path("/"):
            cfg = _rerooted(path, overrides, cfg, root, environ)
    except UsageError as exc:
        return Report(None, [Finding(exc.exit_code, str(exc))])
    report = Report(cfg)
    errors, warnings = config.file_findings(cfg.mqtt, environ)
    report.findings += [Finding(UsageError.exit_code, e) for e in errors] + [Finding(0, w) for w in warnings]
    if cfg.ota.public_key:
        try:
            signing.load_public(Path(cfg.ota.public_key))
        except UsageError as exc:
            report.findings.append(Finding(exc.exit_code, f"ota.public_key: {exc}"))
    try:
        make_engine(cfg, artifact.load(cfg.model.path, cfg.model.labels))
    except (ModelError, UsageError) as exc:
        report.findings.append(Finding(exc.exit_code, str(exc)))
    if probe_s is not None and not errors:
        try:
            report.broker, finding = probe_broker(cfg, probe_s, environ)
        except LinewatchError as exc:
            report.broker, finding = "not asked", Finding(exc.exit_code, str(exc))
        report.findings.append(finding)
    return report
