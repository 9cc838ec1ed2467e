"""The daemon's configuration: one TOML file, every key overridable by environment and flags.

Every setting is declared once, here, with its description, default and (where it has one)
its ``linewatch run`` flag. The flags, the ``LINEWATCH_<SECTION>_<KEY>`` environment overlay,
``--set section.key=value``, the help text and docs/configuration.md all come from these models.

Precedence, lowest first: the file (default /etc/linewatch/linewatch.toml), then the
environment, then command-line flags and ``--set``. Unknown keys are rejected and every value
is validated at start, with an error that names the key (exit 2).

pydantic-settings was weighed for the merge and left out: its CLI source would rename the
documented flags, ``LINEWATCH_MQTT_PASSWORD`` (a secret, not a key) would need carving out of
its environment nesting, and the whole merge here is a few dozen lines with no new package on the Pi.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from linewatch.edge import options
from linewatch.edge.device.sources import CAMERA_SIZE
from linewatch.edge.errors import UsageError

DEFAULT_PATH = Path("/etc/linewatch/linewatch.toml")
ENV_PREFIX = "LINEWATCH_"
PASSWORD_ENV = "LINEWATCH_MQTT_PASSWORD"  # the secret itself, not a config key: never in the file
OPCUA_PASSWORD_ENV = "LINEWATCH_OPCUA_PASSWORD"  # the OPC UA user's, likewise
SECRET_ENVS = (PASSWORD_ENV, OPCUA_PASSWORD_ENV)
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _flag(name: str, **extra: Any) -> dict[str, Any]:
    return {"flag": name, **extra}


# Marks on a setting's declaration (``keys_marked``): FILE names a file or folder (checked below an install's --root),
# SECRET never comes from argv, where every user sees it (``--set`` refuses it): the file or the environment only.
FILE: dict[str, Any] = {"file": True}
SECRET: dict[str, Any] = {"secret": True}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    path: str = Field(description="the .tflite made by 'linewatch convert'", json_schema_extra=_flag("--model", **FILE))
    labels: str | None = Field(default=None, description="labels file, for a .tflite without a model card",
                               json_schema_extra=_flag("--labels", **FILE))
    threads: int = Field(default=0, ge=0, description="interpreter threads; 0: one a core, less one on 3 cores or "
                                                      "more (left to capture and MQTT)",
                         json_schema_extra=_flag("--threads"))
    delegate: str | None = Field(default=None,
                                 description="edgetpu, or a delegate library path (an _edgetpu model asks "
                                             "by itself)", json_schema_extra=_flag("--delegate"))
    cpu_fallback: bool = Field(default=False, description="run on the CPU when the delegate cannot load",
                               json_schema_extra=_flag("--cpu-fallback"))


Rotation = Literal[0, 90, 180, 270]
ROTATIONS: tuple[Rotation, ...] = (0, 90, 180, 270)


class SourceSection(Section):
    spec: str = Field(description="folder, glob, image or video file, rtsp:// or http:// URL, usb:N, /dev/videoN, "
                                  "picamera:N, conveyor[:SEED]", json_schema_extra=_flag("--source"))
    fps: float | None = Field(default=None,
                              gt=0, description="frame rate of a Pi camera; pacing of a folder, file or the "
                                                "conveyor", json_schema_extra=_flag("--fps"))
    loop: bool = Field(default=False,
                       description="repeat a folder or video file; one that vanishes is reopened with backoff "
                                   "until it is back", json_schema_extra=_flag("--loop"))
    roi: tuple[float, float, float, float] | None = Field(
        default=None, description="region of interest x,y,w,h as fractions of the frame, e.g. 0.2,0,0.6,1",
        json_schema_extra=_flag("--roi"))
    rotate: Rotation = Field(default=0, description="clockwise, after the ROI",
                                             json_schema_extra=_flag("--rotate"))
    camera_size: tuple[int, int] = Field(
        default=CAMERA_SIZE,
        description="picamera: the size (w, h) of the camera's second, low-resolution (\"lores\") stream, the one "
                    "fed to the model; the model's own input size leaves nothing to resize on the device (the ISP "
                    "scales for free), at the cost of a smaller live view and snapshots; a whole multiple of it on "
                    "both axes resizes cheaply, other ratios several times slower")

    @field_validator("roi", mode="before")
    @classmethod
    def _roi(cls, value: Any) -> Any:
        from linewatch.edge.model.images import parse_roi

        return parse_roi(value) if isinstance(value, str) else value

    @field_validator("rotate", mode="before")
    @classmethod
    def _rotate(cls, value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.isdigit() else value


class MqttSection(Section):
    broker: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://HOST:PORT, or mqtts:// for TLS",
                        json_schema_extra=_flag("--broker"))
    prefix: str = Field(default="linewatch", pattern=r"^[^#+/][^#+]*$", description="topic prefix",
                        json_schema_extra=_flag("--prefix"))
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version",
                                            json_schema_extra=_flag("--protocol"))
    keepalive: int = Field(default=30, ge=5, le=3600, description="seconds between keepalive pings")
    username: str | None = Field(default=None, description="MQTT user name", json_schema_extra=_flag("--username"))
    password_file: str | None = Field(default=None, description=f"file holding the MQTT password (or {PASSWORD_ENV}); "
                                                                 "never logged",
                                      json_schema_extra=_flag("--password-file", **FILE))
    ca_file: str | None = Field(default=None, description="CA certificate for mqtts://",
                                json_schema_extra=_flag("--ca-file", **FILE))
    cert_file: str | None = Field(default=None, description="client certificate for mqtts://",
                                  json_schema_extra=_flag("--cert-file", **FILE))
    key_file: str | None = Field(default=None, description="client key for mqtts://",
                                 json_schema_extra=_flag("--key-file", **FILE))
    insecure: bool = Field(default=False,
                           description="mqtts:// without checking the broker's certificate or host name: for a "
                                       "first test only, warned about at every start")
    reconnect_max_s: float = Field(default=10.0,
                                   ge=1, le=300, description="the longest wait between connection attempts "
                                                             "(they back off from 1 s); the daemon never "
                                                             "stops trying")

    @field_validator("broker")
    @classmethod
    def _broker(cls, value: str) -> str:
        from linewatch.edge.comms.mqtt import parse_broker

        try:
            parse_broker(value)
        except UsageError as exc:
            raise ValueError(str(exc)) from None
        return value


class ResultsSection(Section):
    mode: Literal["every", "change", "sample"] = Field(
        default="every", description="which frames publish a result: every one, on a label change, or every Nth",
        json_schema_extra=_flag("--result-mode"))
    sample_every: int = Field(default=10, ge=1, description="with mode = sample: publish every Nth frame")
    top_k: int = Field(default=3, ge=1, description="scores to publish per result", json_schema_extra=_flag("--top-k"))


class EventsSection(Section):
    k: int = Field(default=3, ge=1, description="an event starts when a defect class passes its threshold in k of the "
                                                "last n frames")
    n: int = Field(default=5, ge=1, description="and ends when it passes in none of the last n")
    thresholds: dict[str, float] = Field(default_factory=dict,
                                         description="per class, e.g. { scratch = 0.6 }; others from the model card")
    snapshots: bool = Field(default=True, description="publish and keep a JPEG of each event's start frame")
    snapshot_quota_mb: float = Field(default=200.0, gt=0, description="disk quota of state_dir/snapshots")


class StatsSection(Section):
    interval_s: float = Field(default=10.0, gt=0, description="seconds between stats messages",
                              json_schema_extra=_flag("--stats-interval"))


class SpoolSection(Section):
    max_entries: int = Field(default=100_000,
                             ge=10, description="messages kept while the broker is away; then the oldest "
                                                "go first, counted in stats")
    max_mb: float = Field(default=512.0,
                          gt=0, description="disk the spool may take; then the oldest go first, as when the "
                                            "disk itself is full")


class ReviewSection(Section):
    dir: str | None = Field(default=None,
                            description="save low-confidence frames here, by predicted label, for labeling",
                            json_schema_extra=_flag("--review-dir", **FILE))
    below: float = Field(default=0.6, gt=0, le=1, description="score under which a frame is saved",
                         json_schema_extra=_flag("--review-below"))
    quota_mb: float = Field(default=500.0, gt=0, description="disk quota of the review folder",
                            json_schema_extra=_flag("--review-quota-mb"))


class SamplesSection(Section):
    """Frames worth labelling, sent to the station (``linewatch station``) over MQTT: docs/station.md."""

    enabled: bool = Field(default=False, description="send frames worth labelling on <prefix>/<device_id>/sample",
                          json_schema_extra=_flag("--samples"))
    below: float = Field(default=0.6, gt=0, le=1, description="a frame whose top score is under this is sent as "
                                                              "low_confidence")
    random_every: int = Field(default=1000, ge=0, description="one frame in this many is sent as random, an unbiased "
                                                              "measure of the live error rate; 0: none")
    per_hour: float = Field(default=60.0, gt=0, description="the most samples an hour for each reason (a burst of a "
                                                            "tenth of it at once); the rest are counted, not sent")
    quota_mb: float = Field(default=50.0, gt=0, description="disk for samples the station has not acknowledged yet "
                                                            "(state_dir/samples); then the oldest go first, counted")
    resend_s: float = Field(default=60.0, ge=1, description="a sample the station has not acknowledged is sent again "
                                                            "after this long")
    chunk_kb: int = Field(default=64, ge=1, le=1024, description="the JPEG travels in messages of this size")


class OtaSection(Section):
    enabled: bool = Field(default=True, description="accept new models over MQTT (cmd/ota) and cmd/rollback")
    public_key: str | None = Field(default=None,
                                   description="Ed25519 public key (PEM, from 'linewatch keygen'): when set, "
                                               "only models signed with its private key are accepted",
                                   json_schema_extra=FILE)
    max_mb: float = Field(default=64.0, gt=0, description="the largest model accepted over the air")


class HomeAssistantSection(Section):
    discovery: bool = Field(default=False, description="announce the device to Home Assistant (MQTT discovery)",
                            json_schema_extra=_flag("--ha-discovery"))
    prefix: str = Field(default="homeassistant", description="Home Assistant's discovery prefix")


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port)."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"'{value}' is not HOST:PORT, e.g. 0.0.0.0:8080")
    return host, int(port)


def _checked_listen(value: str | None) -> str | None:
    if value is not None:
        parse_listen(value)
    return value


Listen = Annotated[str | None, AfterValidator(_checked_listen)]  # HOST:PORT to listen on, or off


class LineSection(Section):
    """Line I/O (docs/line-io.md): BCM pin numbers, times in milliseconds from the trigger's edge."""

    mode: Literal["free", "gpio", "mqtt", "plc"] = Field(
        default="free",
        description="free: a result per frame, no parts; gpio: a photo-eye on trigger_pin marks each part; mqtt: "
                    "cmd/trigger does; plc: the PLC's Trigger over Modbus (docs/plc.md), and the reject output is "
                    "optional (the PLC may reject by NG and Error)", json_schema_extra=_flag("--line"))
    trigger_pin: int | None = Field(default=None, ge=0, le=27, description="the photo-eye's input (mode gpio)")
    trigger_edge: Literal["rising", "falling"] = Field(default="rising",
                                                       description="the electrical edge that means a part")
    trigger_pull: Literal["up", "down"] = Field(default="down", description="the input's pull resistor")
    debounce_ms: float = Field(default=5.0, ge=0, description="edges closer than this to the last are contact bounce")
    min_spacing_ms: float = Field(default=50.0,
                                  ge=0, description="a part closer than this to the last is a counted double "
                                                    "trigger, not a new part")
    capture_offset_ms: float = Field(default=0.0, description="the part is in view this long after its trigger")
    window_ms: float = Field(default=100.0,
                             gt=0, description="frames within half of this of trigger + offset are the part's")
    pick: Literal["nearest", "worst"] = Field(default="nearest",
                                              description="the part's frame: the nearest to trigger + "
                                                          "offset, or the worst in the window")
    reject_pin: int | None = Field(default=None, ge=0, le=27, description="the reject gate's output",
                                   json_schema_extra=_flag("--reject-pin"))
    reject_delay_ms: float = Field(default=1000.0, gt=0, description="from the trigger's edge to the reject pulse: the "
                                                                     "time the part takes to reach the gate",
                                   json_schema_extra=_flag("--reject-delay-ms"))
    reject_pulse_ms: float = Field(default=100.0, gt=0, description="how long the reject (and good) output is held")
    active_high: bool = Field(default=True,
                              description="outputs drive high when active (false: low, for sinking inputs)")
    good_pin: int | None = Field(default=None, ge=0, le=27, description="optional: a pulse for each good part")
    ready_pin: int | None = Field(default=None,
                                  ge=0, le=27, description="optional: held while the daemon inspects (frames "
                                                           "arriving, spool writable); the PLC watches it")
    fail_safe: bool = Field(default=True,
                            description="reject a part with no verdict by its deadline (late), never pass it")
    pin_factory: Literal["default", "mock"] = Field(default="default",
                                                    description="default: gpiozero's own (lgpio on a "
                                                                "Pi); mock: simulated pins (demo, tests)")

    @model_validator(mode="after")
    def _pins(self) -> LineSection:
        if self.mode == "gpio" and self.trigger_pin is None:
            raise ValueError("line.mode gpio needs line.trigger_pin (the photo-eye's input)")
        if self.mode in ("gpio", "mqtt") and self.reject_pin is None:
            raise ValueError(f"line.mode {self.mode} needs line.reject_pin (the reject gate's output)")
        if self.mode != "free" and self.reject_pulse_ms >= self.reject_delay_ms:
            raise ValueError("line.reject_pulse_ms must be shorter than line.reject_delay_ms")
        return self


class ModbusSection(Section):
    """The PLC's handshake over Modbus TCP (docs/plc.md): the smart camera's Trigger, ResultsReady and ResultsAck."""

    listen: Listen = Field(default=None, description="serve Modbus TCP at HOST:PORT, e.g. 0.0.0.0:502 (off by default; "
                                                     "--modbus alone: 127.0.0.1:5020); needs line.mode plc, gpio or "
                                                     "mqtt. Modbus has no authentication: bind it to the controls "
                                                     "network and set allow",
                           json_schema_extra=_flag("--modbus", const="127.0.0.1:5020"))
    unit_id: int = Field(default=1, ge=1, le=247, description="the unit (slave) id the PLC addresses; other ids are "
                                                               "answered with exception 11")
    allow: list[str] = Field(default_factory=list,
                             description="the PLC addresses or networks that may connect (e.g. [\"10.0.0.5\", "
                                         "\"10.0.1.0/24\"]; a flag or the environment: comma-separated); empty: "
                                         "any", json_schema_extra=_flag("--modbus-allow"))

    @field_validator("allow", mode="before")
    @classmethod
    def _allow(cls, value: Any) -> Any:
        return [entry.strip() for entry in value.split(",") if entry.strip()] if isinstance(value, str) else value

    @field_validator("allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"'{entry}' is not an address or network, e.g. 10.0.0.5 or 10.0.0.0/24") from None
        return value


class OpcUaSection(Section):
    """The PLC's handshake as an OPC UA server after OPC 40100 Machine Vision (docs/plc.md)."""

    listen: Listen = Field(default=None, description="serve OPC UA at HOST:PORT, e.g. 0.0.0.0:4840 (off by default; "
                                                     "--opcua alone: 127.0.0.1:4840); needs line.mode plc, gpio or "
                                                     "mqtt", json_schema_extra=_flag("--opcua", const="127.0.0.1:4840"))
    username: str | None = Field(default=None, description="the user a client logs in as (with the password)",
                                 json_schema_extra=_flag("--opcua-username"))
    password_file: str | None = Field(default=None, description=f"file holding that user's password (or "
                                                                 f"{OPCUA_PASSWORD_ENV}); never logged",
                                      json_schema_extra=FILE)
    trust_dir: str | None = Field(default=None, description="folder of the client certificates (DER or PEM) trusted "
                                                             "to open the encrypted channel and to log in by "
                                                             "certificate; unset: any client certificate opens the "
                                                             "channel, the user and password still decide",
                                  json_schema_extra=FILE)
    anonymous: bool = Field(default=False, description="let clients in without a user or certificate (only on a "
                                                       "closed controls network)")
    insecure: bool = Field(default=False, description="also offer the unencrypted endpoint (security policy None): "
                                                      "for clients without Basic256Sha256; the password then crosses "
                                                      "the network in clear")
    cert_file: str | None = Field(default=None, description="the server's certificate (DER); unset: one made by "
                                                             "`linewatch install` (or at the first start) and kept "
                                                             "in state_dir/opcua",
                                  json_schema_extra=FILE)
    key_file: str | None = Field(default=None, description="its private key (PEM)", json_schema_extra=FILE)


class SparkplugSection(Section):
    """The device as a Sparkplug B edge node on the MQTT broker, for Ignition and other Sparkplug hosts
    (docs/plc.md)."""

    enabled: bool = Field(default=False, description="publish NBIRTH, DBIRTH, DDATA and NDEATH under spBv1.0/ on a "
                                                      "connection of its own, beside the JSON topics",
                          json_schema_extra=_flag("--sparkplug"))
    group_id: str = Field(default="linewatch", pattern=r"^[^#+/]+$", description="the Sparkplug group")
    edge_node_id: str | None = Field(default=None, pattern=r"^[^#+/]+$",
                                     description="the edge node's id (default: device_id, which the shipped ACL "
                                                 "expects)")
    interval_s: float = Field(default=1.0, ge=0.1, description="how often the metrics are checked; DDATA carries "
                                                               "those that changed")
    primary_host_id: str | None = Field(default=None, pattern=r"^[^#+/]+$",
                                        description="the Sparkplug primary host (e.g. Ignition's MQTT Engine): the "
                                                    "births wait for its STATE to say online, and the session ends "
                                                    "(NDEATH, a new connection) while it says offline; unset: born "
                                                    "at once")


class HttpSection(Section):
    listen: Listen = Field(default=None, description="serve the setup page at HOST:PORT, e.g. 0.0.0.0:8080 (off by "
                                                     "default; --http alone: 127.0.0.1:8080). docs/http.md",
                           json_schema_extra=_flag("--http", const="127.0.0.1:8080"))
    token: str | None = Field(default=None, description="the page's access token (a secret: the config file or "
                                                        "LINEWATCH_HTTP_TOKEN); when unset, one is made at the first "
                                                        "start and kept in state_dir/http-token",
                              json_schema_extra=SECRET)
    fps: float = Field(default=4.0, gt=0, le=30, description="most frames a second the live view shows")
    cert_file: str | None = Field(default=None,
                                  description="TLS certificate (PEM) for https; or put a reverse proxy in front",
                                  json_schema_extra=FILE)
    key_file: str | None = Field(default=None, description="its private key", json_schema_extra=FILE)


class MetricsSection(Section):
    listen: Listen = Field(default=None,
                           description="serve Prometheus metrics alone at HOST:PORT, without a token (they "
                                       "are also at /metrics on the setup page, with its token)",
                           json_schema_extra=_flag("--metrics"))


def default_state_dir() -> str:
    """/var/lib/linewatch for the service; a folder of the user's own for a quick start."""
    system = Path("/var/lib/linewatch")
    if system.is_dir() and os.access(system, os.W_OK):
        return str(system)
    return str(Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "linewatch")


# What ``linewatch run`` fills in where the file and flags say nothing (``load_run``): as people read it, and how.
RUN_DEFAULTS: dict[str, tuple[str, Callable[[], str]]] = {
    "device_id": ("the host name", socket.gethostname),
    "state_dir": ("/var/lib/linewatch when writable, else ~/.local/state/linewatch", default_state_dir),
}


class Config(Section):
    """Everything ``linewatch run`` needs; see docs/configuration.md."""

    device_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$",
                           description="device id in topics, topic-safe: letters, digits, _ . - "
                                       f"(default: {RUN_DEFAULTS['device_id'][0]})",
                           json_schema_extra=_flag("--device-id"))
    state_dir: str = Field(default="/var/lib/linewatch", description="spool and snapshots "
                                                                     f"(default: {RUN_DEFAULTS['state_dir'][0]})",
                           json_schema_extra=_flag("--state-dir", **FILE))
    model: ModelSection
    source: SourceSection
    mqtt: MqttSection = MqttSection()
    results: ResultsSection = ResultsSection()
    events: EventsSection = EventsSection()
    stats: StatsSection = StatsSection()
    spool: SpoolSection = SpoolSection()
    review: ReviewSection = ReviewSection()
    samples: SamplesSection = SamplesSection()
    ota: OtaSection = OtaSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()
    http: HttpSection = HttpSection()
    line: LineSection = LineSection()
    modbus: ModbusSection = ModbusSection()
    opcua: OpcUaSection = OpcUaSection()
    sparkplug: SparkplugSection = SparkplugSection()
    metrics: MetricsSection = MetricsSection()

    @model_validator(mode="after")
    def _plc_needs_parts(self) -> Config:
        for name, section in (("modbus", self.modbus), ("opcua", self.opcua)):
            if section.listen and self.line.mode == "free":
                raise ValueError(f"{name}.listen needs parts to hand shake about: set line.mode to plc (or gpio, "
                                 "mqtt)")
        if self.line.mode == "plc" and not (self.modbus.listen or self.opcua.listen):
            raise ValueError("line.mode plc takes its triggers from the PLC: set modbus.listen (e.g. 0.0.0.0:502) or "
                             "opcua.listen")
        opcua = self.opcua
        if opcua.listen and not (opcua.username or opcua.trust_dir or opcua.anonymous):
            raise ValueError("opcua.listen: nobody could log in: set opcua.username (its password in "
                             f"opcua.password_file or {OPCUA_PASSWORD_ENV}), or opcua.trust_dir, or opcua.anonymous")
        return self


SECTIONS = tuple(name for name, field in Config.model_fields.items()
                 if isinstance(field.annotation, type) and issubclass(field.annotation, Section))


def env_name(dotted: str) -> str:
    """``mqtt.password_file`` → ``LINEWATCH_MQTT_PASSWORD_FILE``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def get_key(tree: dict[str, Any], dotted: str) -> Any:
    """``a.b.c`` of a nested dict (``KeyError`` when a part is missing)."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            raise KeyError(dotted)
        tree = tree[part]
    return tree


def _env_overrides(environ: dict[str, str]) -> dict[str, str]:
    """``LINEWATCH_MQTT_PASSWORD_FILE`` → ``mqtt.password_file``; ``LINEWATCH_DEVICE_ID`` → ``device_id``."""
    out = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in SECRET_ENVS:
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        out[f"{section}.{rest[len(section) + 1:]}" if section else rest] = value
    return out


def load(path: Path | None, overrides: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None, defaults: dict[str, Any] | None = None) -> Config:
    """Read, merge (defaults < file < the setup page's ``state_dir/setup.toml`` < environment < overrides) and
    validate.

    Any problem is a ``UsageError`` naming the key.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise UsageError(f"config file {path} does not exist: see docs/configuration.md") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    for dotted, value in (defaults or {}).items():
        try:
            get_key(tree, dotted)
        except KeyError:
            options.set_key(tree, dotted, value)
    given = {**_env_overrides(dict(os.environ if environ is None else environ)), **(overrides or {})}
    for dotted, value in given.items():
        options.set_key(tree, dotted, value)
    config: Config = options.build(Config, tree)
    page_settings = {key: value for key, value in read_page_settings(Path(config.state_dir)).items()
                     if key not in given}
    if page_settings:
        for dotted, value in page_settings.items():
            options.set_key(tree, dotted, value)
        config = options.build(Config, tree, noun=f"{Path(config.state_dir) / PAGE_SETTINGS} key")
    return config


def load_run(path: Path | None, overrides: dict[str, Any] | None = None,
             environ: dict[str, str] | None = None) -> Config:
    """The configuration as ``linewatch run`` sees it, with its defaults (the host name as ``device_id``): the
    start, a reload (SIGHUP, ``cmd/reload``) and ``linewatch check`` all read it here."""
    return load(path, overrides, environ, defaults={key: find() for key, (_, find) in RUN_DEFAULTS.items()})


def keys_marked(mark: dict[str, Any]) -> list[str]:
    """The dotted settings whose declaration carries ``mark`` (``FILE``, ``SECRET``)."""
    (name,) = mark
    return [key for key, field in options.settings(Config)
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get(name)]


PAGE_SETTINGS = "setup.toml"  # in state_dir: what the setup page set
PAGE_KEYS = ("source.roi", "source.rotate")


def read_page_settings(state_dir: Path) -> dict[str, Any]:
    """The settings made on the setup page, kept in ``state_dir/setup.toml``: they win over the config file,
    the environment and flags win over them. The config file stays read-only to the service (systemd's
    ProtectSystem=strict), so the page writes where the daemon may."""
    path = state_dir / PAGE_SETTINGS
    try:
        tree = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read ({exc}): delete it to go back to the config file's view") from None
    found = {}
    for dotted in PAGE_KEYS:
        with contextlib.suppress(KeyError):
            found[dotted] = get_key(tree, dotted)
    return found


def file_findings(mqtt: MqttSection, environ: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the TLS (for mqtts://) and password files and how they are kept: every one, so that
    ``linewatch check`` can list all there is to fix."""
    from linewatch.edge.comms.mqtt import parse_broker

    address = parse_broker(mqtt.broker)
    password_in_env = bool((os.environ if environ is None else environ).get(PASSWORD_ENV))
    errors, warnings = [], []
    for key in (("ca_file", "cert_file", "key_file") if address.tls else ()) + ("password_file",):
        name = getattr(mqtt, key)
        if name is None:
            continue
        try:
            with open(name, "rb") as f:
                empty = not f.read().strip()
            mode = os.stat(name).st_mode
        except OSError as exc:
            errors.append(f"mqtt.{key} {name} cannot be read ({exc.strerror}): check the path and its permissions")
            continue
        if key in ("password_file", "key_file") and mode & 0o077:
            warnings.append(f"mqtt.{key} {name} can be read by other users (mode {mode & 0o777:o}): chmod 600 {name}")
        if key == "password_file" and empty and mqtt.username and not mqtt.cert_file and not password_in_env:
            errors.append(f"mqtt.password_file {name} is empty: write the MQTT password of user {mqtt.username} "
                          "into it (or remove the password_file line where a client certificate identifies us)")
    if mqtt.insecure:
        warnings.append("mqtt.insecure = true: the broker's certificate and host name are not checked; anyone on "
                        "the path can read and forge this device's messages")
    if not address.tls and address.host not in LOOPBACK:
        secrets = "results and the password" if mqtt.username else "results"
        warnings.append(f"mqtt.broker {mqtt.broker} is not TLS: {secrets} cross the network in clear text; use "
                        "mqtts://")
    return errors, warnings


def check_files(mqtt: MqttSection) -> list[str]:
    """Refuse unreadable TLS (for mqtts://) and password files by their key (exit 2); return warnings about how
    they are kept."""
    errors, warnings = file_findings(mqtt)
    if errors:
        raise UsageError("; ".join(errors))
    return warnings


def read_password(password_file: str | None, environ: dict[str, str] | None = None, env: str = PASSWORD_ENV,
                  whose: str = "MQTT") -> str | None:
    """A password: the environment's ``env`` (``LINEWATCH_MQTT_PASSWORD`` by default), else the password file. Never
    logged."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get(env):
        return environ[env]
    if not password_file:
        return None
    try:
        return Path(password_file).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the {whose} password file {password_file}: {exc.strerror}") from None
