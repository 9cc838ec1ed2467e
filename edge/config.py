"""The daemon's configuration: one TOML file, every key overridable by environment and flags.

Precedence, lowest first: the file (default /etc/linewatch/linewatch.toml), then
``LINEWATCH_<SECTION>_<KEY>`` environment variables (``LINEWATCH_MQTT_BROKER``,
``LINEWATCH_DEVICE_ID``), then command-line flags (``--broker``, or ``--set mqtt.broker=…``
for any key). Unknown keys are rejected and every value is validated at start, with an
error that names the key. The documented example is docs/linewatch.example.toml.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge.errors import UsageError

DEFAULT_PATH = Path("/etc/linewatch/linewatch.toml")
ENV_PREFIX = "LINEWATCH_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    path: str
    labels: str | None = None
    threads: int = Field(0, ge=0, description="0: all cores")
    delegate: str | None = Field(None, description="edgetpu, or a delegate library path")
    cpu_fallback: bool = False


class SourceSection(Section):
    spec: str = Field(description="folder, file, URL, usb:N, /dev/videoN, picamera:N, conveyor[:SEED]")
    fps: float | None = Field(None, gt=0)
    loop: bool = False
    roi: tuple[float, float, float, float] | None = None
    rotate: Literal[0, 90, 180, 270] = 0
    camera_size: tuple[int, int] = Field((320, 240), description="picamera: the lores stream fed to the model (w, h)")

    @field_validator("roi", mode="before")
    @classmethod
    def _roi(cls, value: Any) -> Any:
        from edge.preprocess import parse_roi

        return parse_roi(value) if isinstance(value, str) else value


class MqttSection(Section):
    broker: str = "mqtt://127.0.0.1:1883"
    prefix: str = Field("linewatch", pattern=r"^[^#+/][^#+]*$")
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    connect_timeout: float = Field(10.0, gt=0)

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        from edge.mqtt import parse_broker

        try:
            parse_broker(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return value


class ResultsSection(Section):
    mode: Literal["every", "change", "sample"] = "every"
    sample_every: int = Field(10, ge=1, description="with mode = sample: publish every Nth frame")
    top_k: int = Field(3, ge=1)


class EventsSection(Section):
    k: int = Field(3, ge=1)
    n: int = Field(5, ge=1)
    thresholds: dict[str, float] = Field(default_factory=dict, description="per class; default from the model card")
    snapshots: bool = True
    snapshot_quota_mb: float = Field(200.0, gt=0)


class StatsSection(Section):
    interval_s: float = Field(10.0, gt=0)


class SpoolSection(Section):
    max_entries: int = Field(100_000, ge=10)


class ReviewSection(Section):
    dir: str | None = None
    below: float = Field(0.6, gt=0, le=1)
    quota_mb: float = Field(500.0, gt=0)


class HomeAssistantSection(Section):
    discovery: bool = False
    prefix: str = "homeassistant"


class Config(Section):
    """Everything ``linewatch run`` needs; see docs/linewatch.example.toml."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="topic-safe: letters, digits, _ . -")
    state_dir: str = "/var/lib/linewatch"
    model: ModelSection
    source: SourceSection
    mqtt: MqttSection = MqttSection()
    results: ResultsSection = ResultsSection()
    events: EventsSection = EventsSection()
    stats: StatsSection = StatsSection()
    spool: SpoolSection = SpoolSection()
    review: ReviewSection = ReviewSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()


SECTIONS = {name for name, field in Config.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, Section)}


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, key = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise UsageError(f"config key {dotted}: {part} is not a section")
    tree[key] = value


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            raise KeyError(dotted)
        tree = tree[part]
    return tree


def _env_overrides(environ: dict[str, str]) -> dict[str, str]:
    """``LINEWATCH_MQTT_PASSWORD_FILE`` → ``mqtt.password_file``; ``LINEWATCH_DEVICE_ID`` → ``device_id``."""
    out = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "LINEWATCH_MQTT_PASSWORD":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        out[f"{section}.{rest[len(section) + 1:]}" if section else rest] = value
    return out


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"config key {where}: {first['msg']}{more}"


def load(path: Path | None, overrides: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None, defaults: dict[str, Any] | None = None) -> Config:
    """Read, merge (defaults < file < environment < overrides) and validate.

    Any problem is a ``UsageError`` naming the key.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UsageError(f"config file {path} does not exist: see docs/linewatch.example.toml") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    for dotted, value in (defaults or {}).items():
        try:
            _get(tree, dotted)
        except KeyError:
            _set(tree, dotted, value)
    for dotted, value in {**_env_overrides(dict(os.environ if environ is None else environ)),
                          **(overrides or {})}.items():
        _set(tree, dotted, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise UsageError(_describe(exc)) from None


def read_password(password_file: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The MQTT password: ``LINEWATCH_MQTT_PASSWORD``, else the password file. Never logged."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get("LINEWATCH_MQTT_PASSWORD"):
        return environ["LINEWATCH_MQTT_PASSWORD"]
    if not password_file:
        return None
    try:
        return Path(password_file).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the MQTT password file {password_file}: {exc.strerror}") from None
