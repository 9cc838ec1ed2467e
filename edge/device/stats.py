"""The ``stats`` message every ``stats.interval_s``: throughput, per-stage latency, spool, machine.

Published at QoS 0 and never spooled: a stale figure is worth nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from linewatch.edge.comms.payloads import LineStats, Percentiles, SampleStats, SpoolStats, Stats, rfc3339
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.device.pipeline import PipelineStats
from linewatch.edge.device.system import cpu_temperature, max_rss_mb

logger = logging.getLogger(__name__)


class StatsReporter:
    """A thread that reads the pipeline's counters and publishes them; ``stop`` ends it."""

    def __init__(self, device_id: str, publisher: DevicePublisher, paused: threading.Event,
                 interval: Callable[[], float], line: Callable[[], dict[str, Any]] | None = None,
                 on_fps: Callable[[float], None] | None = None,
                 samples: Callable[[], SampleStats] | None = None,
                 on_tick: Callable[[], None] | None = None) -> None:
        """``interval`` is read before each wait, so a reloaded config takes effect; ``line`` gives part counts,
        ``samples`` the samples' counters; ``on_tick`` runs after each stats message (a shadow's own)."""
        self.device_id = device_id
        self.publisher = publisher
        self.paused = paused
        self.interval = interval
        self.line = line
        self.samples = samples
        self.on_tick = on_tick
        self.on_fps = on_fps  # the state topic shows frames/s as of the last stats message
        self.started = time.time()
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def payload(self, stats: PipelineStats, fps: float) -> Stats:
        spool = self.publisher.spool
        return Stats(
            device_id=self.device_id, ts=rfc3339(time.time()), uptime_s=round(time.time() - self.started, 1),
            frames=stats.frames, fps=round(fps, 2), dropped=stats.dropped, paused=self.paused.is_set(),
            source_state=stats.source_state,
            latency_ms={s: Percentiles(p50=round(stats.percentile(s, 50), 3), p99=round(stats.percentile(s, 99), 3))
                        for s in stats.timings_ms},
            spool=SpoolStats(backlog=spool.backlog(), dropped=spool.dropped(), recovered=len(spool.recovered)),
            acknowledged=self.publisher.acked, cpu_temp_c=cpu_temperature(), max_rss_mb=max_rss_mb(),
            line=LineStats.model_validate(self.line()) if self.line else None,
            samples=self.samples() if self.samples else None)

    def start(self, stats: PipelineStats) -> None:
        self._thread = threading.Thread(target=self._run, args=(stats,), name="stats", daemon=True)
        self._thread.start()

    def _run(self, stats: PipelineStats) -> None:
        last_frames, last_time = 0, time.monotonic()
        while not self._stopping:
            if self._wake.wait(max(0.0, last_time + self.interval() - time.monotonic())):
                self._wake.clear()  # stopping, or a new interval: count it from the last message
                continue
            now = time.monotonic()
            fps = (stats.frames - last_frames) / (now - last_time)
            payload = self.payload(stats, fps)
            if self.on_fps is not None:
                self.on_fps(round(fps, 1))
            last_frames, last_time = stats.frames, now  # drops are logged by the spool itself, and counted here
            self.publisher.publish_now(self.publisher.topic("stats"), payload.encode())
            if self.on_tick is not None:
                self.on_tick()

    def reschedule(self) -> None:
        """The interval changed (a reload): take it into account now, not after the old one ends."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
