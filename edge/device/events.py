"""Defect alarms with debouncing: one ``start`` and one ``end`` per defect, not one per frame.

A class starts an event when its score passes its own threshold in ``k`` of the last ``n``
frames, and ends it when it passes in none of the last ``n``. Good classes (ok, empty) never
raise events. A PLC bridge can act on ``start`` without filtering flicker itself.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class _Open:
    event_id: str
    started: float
    peak: float
    frames: int
    frame_id: int


@dataclass(frozen=True)
class Alarm:
    """An event's start or end, as ``comms.payloads.Event`` publishes it."""

    type: Literal["start", "end"]
    event_id: str
    label: str
    peak_score: float
    frames: int
    started_ms: int
    ts_ms: int
    frame_id: int


@dataclass
class EventTracker:
    """Per-class sliding windows over the frames; ``update`` returns the alarms a frame causes."""

    labels: list[str]
    good: list[str]
    thresholds: dict[str, float]
    k: int = 3
    n: int = 5
    _windows: dict[str, deque[bool]] = field(default_factory=dict)
    _open: dict[str, _Open] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"events need 1 <= k <= n (k={self.k}, n={self.n})")
        self._windows = {c: deque(maxlen=self.n) for c in self.labels if c not in self.good}

    @property
    def open_labels(self) -> list[str]:
        """The classes with an event open now."""
        return sorted(self._open)

    def set_threshold(self, label: str, value: float) -> None:
        if label not in self.labels:
            raise KeyError(label)
        self.thresholds[label] = value

    def update(self, scores: dict[str, float], frame_id: int, ts: float | None = None) -> list[Alarm]:
        ts = time.time() if ts is None else ts
        alarms = []
        for label, window in self._windows.items():
            score = scores.get(label, 0.0)
            window.append(score >= self.thresholds.get(label, 0.5))
            open_event = self._open.get(label)
            if open_event is None and sum(window) >= self.k:
                open_event = self._open[label] = _Open(uuid.uuid4().hex[:12], ts, score, 0, frame_id)
                alarms.append(self._alarm("start", label, open_event, ts))
            if open_event is not None:
                open_event.frames += window[-1]
                if score > open_event.peak:
                    open_event.peak, open_event.frame_id = score, frame_id
                if not any(window):
                    del self._open[label]
                    alarms.append(self._alarm("end", label, open_event, ts))
        return alarms

    @staticmethod
    def _alarm(kind: Literal["start", "end"], label: str, event: _Open, ts: float) -> Alarm:
        return Alarm(kind, event.event_id, label, round(event.peak, 4), event.frames, int(event.started * 1000),
                     int(ts * 1000), event.frame_id)
