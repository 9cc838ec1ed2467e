"""The JSON payloads subscribers rely on (schemas in docs/schemas/). Bump ``SCHEMA`` on any breaking change."""

from __future__ import annotations

import time
from typing import Any

from edge.artifact import ModelArtifact
from edge.pipeline import Result

SCHEMA = 1


def rfc3339(epoch: float) -> str:
    """UTC time as RFC 3339 with milliseconds, e.g. ``2026-11-23T23:12:56.042Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}Z"


def status_payload(state: str, device_id: str, since: float, extra: dict[str, Any]) -> dict[str, Any]:
    """The retained ``<prefix>/<device>/status``: online, offline (the will) or stopped."""
    return {"schema": SCHEMA, "state": state, "device_id": device_id, "since": rfc3339(since), **extra}


def result_payload(result: Result, device_id: str, seq: int, model: ModelArtifact, top_k: int = 3) -> dict[str, Any]:
    """One frame's classification, as published on ``<prefix>/<device>/result``."""
    frame, prediction = result.frame, result.prediction
    good = model.card.get("good_labels", [])
    payload: dict[str, Any] = {
        "schema": SCHEMA,
        "device_id": device_id,
        "seq": seq,
        "ts": rfc3339(frame.ts),
        "ts_ms": int(frame.ts * 1000),
        "frame_id": frame.id,
        "label": prediction.label,
        "score": round(prediction.score, 4),
        "defect": bool(good) and prediction.label not in good,
        "top": [{"label": label, "score": round(score, 4)} for label, score in prediction.top(top_k)],
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "latency_ms": round(1000 * (time.time() - frame.ts), 2),
    }
    if frame.path is not None:
        payload["path"] = frame.path
    if frame.truth is not None:
        payload["truth"] = frame.truth
    return payload


def event_payload(event: dict[str, Any], device_id: str, seq: int, snapshot: str | None) -> dict[str, Any]:
    """A defect alarm, as published on ``<prefix>/<device>/event``: ``start`` or ``end``."""
    payload = {"schema": SCHEMA, "device_id": device_id, "seq": seq, "ts": rfc3339(event["ts_ms"] / 1000), **event}
    if snapshot is not None:
        payload["snapshot"] = snapshot
    return payload
