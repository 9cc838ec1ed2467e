"""A running device read at one moment: the one typed, read-only view the setup page and the metrics get.

They never hold the daemon or its parts: ``DeviceReader`` copies what they show into a frozen
``DeviceReading`` each time they ask (a page poll, a Prometheus scrape), so nothing they do can
change a part, and none of them blocks the frame loop beyond a copy.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.device.line import LineController, LineCounters
from linewatch.edge.device.pipeline import Pipeline, Result, latency_percentile
from linewatch.edge.device.results import ResultSink
from linewatch.edge.model.artifact import ModelArtifact


@dataclass(frozen=True)
class DeviceReading:
    """What the device is doing: its model, counters, the newest result, recent events and part counts."""

    device_id: str
    model: ModelArtifact  # the model classifying now (it changes with an over-the-air update)
    frames: int
    dropped: int
    source_state: str
    latency_ms: Mapping[str, tuple[float, ...]]  # per pipeline stage, its recent frames
    paused: bool
    broker: str  # connecting, connected, disconnected, refused
    acknowledged: int
    spool_backlog: int
    spool_dropped: int
    events_started: int
    recent_events: tuple[Mapping[str, object], ...]
    latest: Result | None
    roi: tuple[float, float, float, float] | None
    rotate: int
    line: LineCounters | None  # with line I/O

    def percentile(self, stage: str, q: float) -> float:
        """A stage's latency percentile in milliseconds (0 before its first frame)."""
        return latency_percentile(self.latency_ms[stage], q)


class DeviceReader:
    """Reads the daemon's parts into a ``DeviceReading``; calling it is the only way the page and metrics look."""

    def __init__(self, *, device_id: str, pipeline: Pipeline, sink: ResultSink, publisher: DevicePublisher,
                 paused: threading.Event, line: LineController | None) -> None:
        self.device_id = device_id
        self._pipeline, self._sink, self._publisher, self._paused, self._line = pipeline, sink, publisher, paused, line

    def __call__(self) -> DeviceReading:
        stats, sink, spool, line = self._pipeline.stats, self._sink, self._publisher.spool, self._line
        counts = None
        if line is not None:
            counts = dataclasses.replace(line.counters, rejected=dict(line.counters.rejected))
        return DeviceReading(
            device_id=self.device_id, model=self._pipeline.engine.model, frames=stats.frames, dropped=stats.dropped,
            source_state=stats.source_state,
            latency_ms={stage: tuple(window) for stage, window in stats.timings_ms.items()},
            paused=self._paused.is_set(), broker=self._publisher.state, acknowledged=self._publisher.acked,
            spool_backlog=spool.backlog(), spool_dropped=spool.dropped(), events_started=sink.events_started,
            recent_events=tuple(sink.recent_events), latest=sink.latest, roi=self._pipeline.roi,
            rotate=self._pipeline.rotate, line=counts)
