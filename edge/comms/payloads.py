"""The JSON payloads subscribers rely on, as pydantic models: the one source of the MQTT contract.

docs/schemas/*.json are generated from these models (``make docs``) and a test fails when
the committed files differ. Bump ``SCHEMA`` on any breaking change. Fields that are absent
rather than null when they do not apply (``path``, ``snapshot``, a reply's ``result``) are
marked with ``exclude_if``; every other field is always sent.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = 1
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def rfc3339(epoch: float) -> str:
    """UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-23T23:12:56.042Z``."""
    return rfc3339_ms(int(epoch * 1000))


def rfc3339_ms(ms: int) -> str:
    """``rfc3339`` of a time in epoch milliseconds, as the messages' ``ts_ms`` carry it (the same instant)."""
    return f"{_seconds(ms // 1000)}.{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4)  # one result a frame, hundreds a second: format each second once
def _seconds(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


def _absent_if_none(value: Any) -> bool:
    return value is None


DeviceStatus = Literal["online", "offline", "stopped"]  # the retained status: connected, the will, a clean exit
PartVerdict = Literal["good", "defect", "anomaly", "late", "no-frame"]  # a part's verdict (line I/O)
SourceState = Literal["starting", "ok", "reconnecting", "ended", "failed"]  # the frame source, as stats say it
# Why a device sent a frame to be labelled (samples): the first that applies, in this order.
SampleReason = Literal["operator", "random", "disagreement", "anomalous", "low_confidence"]
# What teaches most first: the order a device sends its samples in, and the station shows them to be labelled.
SAMPLE_PRIORITY: tuple[SampleReason, ...] = ("operator", "disagreement", "anomalous", "low_confidence", "random")
SAMPLE_ID = r"^[0-9]{13}-[0-9]{1,12}$"  # the frame's capture time in epoch ms, then its frame id

class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Payload(_Part):
    """What every message of a device carries."""

    schema_: Literal[1] = Field(default=1, alias="schema")  # SCHEMA
    device_id: str = Field(min_length=1)

    def encode(self) -> bytes:
        """Compact JSON, as published."""
        return self.model_dump_json(by_alias=True).encode()


class Status(Payload):
    """online on every (re)connect, offline as the last will (connection lost), stopped on a clean exit."""

    model_config = ConfigDict(title="linewatch status (topic <prefix>/<device_id>/status, retained)")

    state: DeviceStatus
    since: str = Field(description="When the daemon started, UTC, RFC 3339.")
    model: str | None = Field(default=None, exclude_if=_absent_if_none)
    version: str | None = Field(default=None, exclude_if=_absent_if_none)
    sha256: str | None = Field(default=None, exclude_if=_absent_if_none, pattern=r"^[0-9a-f]{64}$",
                               description="Of the model running now; changes with an over-the-air update.")
    notices: list[str] | None = Field(default=None, exclude_if=_absent_if_none,
                                      description="What the device healed by itself since it started, e.g. a spool "
                                                  "file moved aside, or a spool kept in memory on a full disk.")


class Score(_Part):
    label: str
    score: float = Field(ge=0, le=1)


class ModelRef(_Part):
    name: str
    version: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Result(Payload):
    """One classified frame. QoS 1. Subscribers drop duplicates by (device_id, seq)."""

    model_config = ConfigDict(title="linewatch result (topic <prefix>/<device_id>/result)")

    seq: int = Field(ge=1, description="Per device, increasing by one per result.")
    ts: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$",
                    description="Capture time, UTC, RFC 3339.")
    ts_ms: int = Field(description="Capture time, Unix epoch milliseconds.")
    frame_id: int = Field(ge=1, description="Monotonic per daemon run; gaps are frames dropped as stale.")
    path: str | None = Field(default=None, exclude_if=_absent_if_none,
                             description="The image file, for folder and file sources.")
    label: str = Field(description="The class; for an anomaly model anomaly or normal.")
    score: float = Field(ge=0, le=1, description="The label's score; for an anomaly model anomaly_score / "
                                                 "(anomaly_score + threshold), 0.5 at the threshold.")
    defect: bool = Field(description="The label is not one of the model's good labels (ok, empty...); for an "
                                     "anomaly model, anomalous.")
    top: list[Score] = Field(min_length=1)
    model: ModelRef
    latency_ms: float = Field(ge=0, description="From capture to publishing: preprocess, wait, invoke, postprocess.")
    anomaly_score: float | None = Field(default=None, ge=0, exclude_if=_absent_if_none,
                                        description="Anomaly models only: the heat map's largest cell, 1.0 where "
                                                    "the model's false-alarm rate was set at training.")
    anomalous: bool | None = Field(default=None, exclude_if=_absent_if_none,
                                   description="Anomaly models only: anomaly_score reached the threshold (the "
                                               "card's, or as set by cmd/threshold).")


class Event(Payload):
    """start when a defect class passes its threshold in k of the last n frames, end when it passes in none
    of the last n. QoS 1 through the spool; drop duplicates by (device_id, seq)."""

    model_config = ConfigDict(title="linewatch defect event (topic <prefix>/<device_id>/event)")

    seq: int = Field(ge=1, description="Per device, its own sequence for events.")
    ts: str
    ts_ms: int
    type: Literal["start", "end"]
    event_id: str = Field(min_length=1, description="The same for an event's start and end.")
    class_: str = Field(alias="class")
    peak_score: float = Field(ge=0, le=1)
    frames: int = Field(ge=0, description="Frames above the threshold so far.")
    started_ms: int
    frame_id: int = Field(description="The frame with the peak score.")
    snapshot: str | None = Field(default=None, exclude_if=_absent_if_none,
                                 description="File name of the JPEG published on <prefix>/<device_id>/snapshot and "
                                             "kept in state_dir/snapshots.")


class PartMessage(Payload):
    """One part on a triggered line: its verdict and whether the reject gate took it. QoS 1 through the spool."""

    model_config = ConfigDict(title="linewatch part (topic <prefix>/<device_id>/part)")

    seq: int = Field(ge=1, description="The part number: per device, increasing by one per part, across restarts.")
    external_id: str | None = Field(default=None, exclude_if=_absent_if_none, description="The id cmd/trigger gave it.")
    trigger_ts: str = Field(description="When the trigger saw it, UTC, RFC 3339.")
    trigger_ts_ms: int
    frame_ts_ms: int | None = Field(description="Capture time of the frame that judged it; null for no-frame, late.")
    frame_id: int | None
    label: str | None
    score: float | None = Field(ge=0, le=1)
    anomaly_score: float | None = Field(default=None, ge=0, exclude_if=_absent_if_none)
    verdict: PartVerdict
    rejected: bool = Field(description="The reject output pulsed for it.")
    reason: str | None = Field(description="Why it was rejected (its verdict); null when it passed.")
    decision_ms: float | None = Field(description="From the trigger to its verdict; null when it had none in time.")


class Sample(Payload):
    """A frame worth labelling, announced before its JPEG: QoS 1, not spooled (it never takes a result's room).

    The JPEG follows in ``chunks`` binary messages on ``<prefix>/<device_id>/sample/<sample_id>/<index>``. The
    station answers ``cmd/samples`` ``{"ack": [sample_id, ...]}`` once the photo is stored; until then the device
    sends it again every ``samples.resend_s``. Receivers drop duplicates by (device_id, sample_id).
    """

    model_config = ConfigDict(title="linewatch sample (topic <prefix>/<device_id>/sample)")

    sample_id: str = Field(pattern=SAMPLE_ID, description="Per device: the frame's capture time in epoch ms, a dash, "
                                                          "its frame id.")
    reason: SampleReason = Field(description="operator: saved on the setup page; random: one frame in "
                                             "samples.random_every, an unbiased measure of the live error rate; "
                                             "disagreement: a candidate in shadow gave another verdict or label; "
                                             "anomalous: an anomaly model's score passed its threshold; "
                                             "low_confidence: the top score was under samples.below.")
    ts: str = Field(description="Capture time, UTC, RFC 3339.")
    ts_ms: int
    frame_id: int = Field(ge=1)
    label: str = Field(description="The model's label for the frame.")
    score: float = Field(ge=0, le=1)
    top: list[Score] = Field(min_length=1)
    anomaly_score: float | None = Field(default=None, ge=0, exclude_if=_absent_if_none)
    suggested: str | None = Field(default=None, exclude_if=_absent_if_none,
                                  description="operator: the label given on the setup page.")
    model: ModelRef
    candidate: ModelRef | None = Field(default=None, exclude_if=_absent_if_none,
                                       description="disagreement: the candidate in shadow.")
    candidate_label: str | None = Field(default=None, exclude_if=_absent_if_none,
                                        description="disagreement: the candidate's label for the frame.")
    candidate_score: float | None = Field(default=None, ge=0, le=1, exclude_if=_absent_if_none)
    size: int = Field(ge=1, description="Bytes of the JPEG.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the JPEG.")
    chunk_size: int = Field(ge=1, description="Bytes a chunk (the last may be shorter).")
    chunks: int = Field(ge=1)


class SampleStats(_Part):
    sent: int = Field(ge=0, description="Samples sent since start (a resend counts again).")
    acked: int = Field(ge=0, description="Samples the station stored and acknowledged since start.")
    pending: int = Field(ge=0, description="Samples on disk waiting for the station's acknowledgement.")
    limited: dict[str, int] = Field(description="Frames not sent, per reason, because that reason's rate was spent.")
    dropped: int = Field(ge=0, description="Samples deleted unsent: the oldest first, to keep samples.quota_mb, or "
                                           "behind a busy writer.")


ShadowState = Literal["running", "promoted", "aborted", "failed"]


class Pair(_Part):
    current: float | None
    candidate: float | None


class Shadow(Payload):
    """A candidate model run beside the current one on the same frames (``linewatch deploy --shadow``): QoS 1, every
    stats.interval_s while it runs, and once when it ends."""

    model_config = ConfigDict(title="linewatch shadow (topic <prefix>/<device_id>/shadow)")

    ts: str
    state: ShadowState = Field(description="running; promoted (the candidate is the current model now); aborted; "
                                            "failed (it would not load or check on this device: nothing changed).")
    reason: str | None = Field(default=None, exclude_if=_absent_if_none, description="Why it ended.")
    current: ModelRef
    candidate: ModelRef | None = Field(description="null when it failed before it could be read.")
    frames: int = Field(ge=0, description="Frames both models classified.")
    skipped: int = Field(ge=0, description="Frames the candidate had no time for: it takes the newest frame when it "
                                           "is free, so on a busy device it sees one frame in every.")
    every: float = Field(ge=1, description="Frames seen per frame the candidate classified (1.0: it keeps up).")
    agreement: float | None = Field(ge=0, le=1, description="Share of the frames where both gave the same label.")
    confusion: dict[str, dict[str, int]] = Field(description="Current label -> candidate label -> frames.")
    defect_rate: Pair = Field(description="Share of the frames each called not good (the model's own rule).")
    latency_ms: Pair = Field(description="Median invoke per frame: the current model's in the pipeline (in blocks), "
                                         "the candidate's alone, one frame at a time.")
    cpu_percent: Pair = Field(description="Of one core, since the shadow started: the candidate's thread, and the "
                                          "rest of the process.")


class LineStats(_Part):
    parts: int = Field(ge=0)
    good: int = Field(ge=0)
    rejected: int = Field(ge=0)
    rejected_by_reason: dict[str, int]
    double_triggers: int = Field(ge=0)
    late: int = Field(ge=0)
    yield_: float | None = Field(alias="yield", description="good / parts")


class DeviceState(Payload):
    """What dashboards show, changing slowly: published retained on change, at most a few times a second, and
    again on every reconnect. Never a per-frame value: Home Assistant's entities follow this, not ``result``."""

    model_config = ConfigDict(title="linewatch state (topic <prefix>/<device_id>/state, retained)")

    ts: str
    defect: bool = Field(description="An event is open: a defect class (or an anomaly model's score) passed its "
                                     "threshold in k of the last n frames.")
    anomaly: bool = Field(description="An anomaly model's event is open.")
    open_events: list[str] = Field(description="The classes with an open event.")
    events: int = Field(ge=0, description="Events started since the daemon started.")
    fps: float = Field(ge=0, description="Frames a second, as of the last stats message.")
    last_verdict: str | None = Field(default=None,
                                     exclude_if=_absent_if_none, description="With line I/O: the last part's.")
    parts: int | None = Field(default=None, exclude_if=_absent_if_none, description="With line I/O: parts since start.")
    rejected: int | None = Field(default=None,
                                 exclude_if=_absent_if_none, description="With line I/O: parts pushed off.")
    yield_: float | None = Field(default=None, alias="yield", exclude_if=_absent_if_none,
                                 description="With line I/O: good parts / parts.")


class Percentiles(_Part):
    p50: float
    p99: float


class SpoolStats(_Part):
    backlog: int = Field(ge=0, description="Messages waiting for the broker.")
    dropped: int = Field(ge=0, description="Messages dropped because the spool or its disk was full: the oldest "
                                           "first, then any that could not be stored.")
    recovered: int = Field(ge=0, description="Unreadable spool files moved aside since start.")


class Stats(Payload):
    """QoS 0, not spooled: a stale figure is worth nothing."""

    model_config = ConfigDict(title="linewatch stats (topic <prefix>/<device_id>/stats, every stats.interval_s)")

    ts: str
    uptime_s: float = Field(ge=0)
    frames: int = Field(ge=0, description="Frames classified since start.")
    fps: float = Field(ge=0, description="Over the last interval.")
    dropped: int = Field(ge=0, description="Stale camera frames skipped for newer ones.")
    paused: bool
    source_state: SourceState
    latency_ms: dict[str, Percentiles] = Field(description="Per pipeline stage, over the last 1000 frames.")
    spool: SpoolStats
    acknowledged: int = Field(ge=0, description="Spooled messages the broker has acknowledged since start.")
    cpu_temp_c: float | None
    max_rss_mb: float
    line: LineStats | None = Field(default=None, exclude_if=_absent_if_none, description="With line I/O: part counts.")
    samples: SampleStats | None = Field(default=None, exclude_if=_absent_if_none,
                                        description="With samples.enabled: frames sent to be labelled.")


class Reply(Payload):
    """Every command on <prefix>/<device_id>/cmd/<name> gets one; MQTT 5 correlation data is echoed."""

    model_config = ConfigDict(title="linewatch command reply (MQTT 5 response topic, or "
                                    "<prefix>/<device_id>/cmd/<name>/reply)")

    command: str
    id: str | int | float | None = Field(description='The request\'s own "id" (a string or a number), echoed; null '
                                                    'when it had none or it was neither.')
    ok: bool
    result: Any = Field(default=None, exclude_if=_absent_if_none, description="What the command did, when ok.")
    error: str | None = Field(default=None, exclude_if=_absent_if_none, description="Why it was refused, when not ok.")


TOPIC_PAYLOADS: dict[str, type[Payload]] = {"status": Status, "result": Result, "event": Event, "stats": Stats,
                                              "reply": Reply, "part": PartMessage, "state": DeviceState,
                                              "sample": Sample, "shadow": Shadow}


def json_schema(model: type[Payload], name: str) -> dict[str, Any]:
    """The JSON Schema of a payload as published: every field required but those absent when unused."""
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    parts: dict[str, type[BaseModel]] = {model.__name__: model, "Score": Score, "ModelRef": ModelRef,
                                         "Percentiles": Percentiles, "SpoolStats": SpoolStats, "LineStats": LineStats,
                                         "SampleStats": SampleStats, "Pair": Pair}
    for node_name, node in [(model.__name__, schema), *schema.get("$defs", {}).items()]:
        cls = parts[node_name]
        node["required"] = [f.alias or key for key, f in cls.model_fields.items() if f.exclude_if is None]
    return {"$schema": SCHEMA_DIALECT, "$id": f"linewatch/{name}/{SCHEMA}", **schema}
