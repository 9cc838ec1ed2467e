"""Prometheus metrics at ``/metrics``: what the daemon counts, read when Prometheus scrapes, never per frame.

A custom collector reads the counters the daemon keeps anyway (pipeline, sink, spool, line), so
metrics cost nothing between scrapes. The one histogram, the parts' decision latency, is
observed once a part (a few a second). Served by the setup page's server (with its token) and,
with ``metrics.listen``, on an address of its own without a token, as Prometheus expects
(docs/line-io.md has a scrape config).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from linewatch.edge.device.daemon import Daemon

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DaemonCollector(Collector):
    """The daemon's own counters as Prometheus metrics, read at scrape time."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        stats, spool = d.pipeline.stats, d.spool
        labels = ["device_id"]
        device = [d.cfg.device_id]

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=labels)
            family.add_metric(device, value)
            return family

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=labels)
            family.add_metric(device, value)
            return family

        yield counter("linewatch_frames", "Frames classified since start.", stats.frames)
        yield counter("linewatch_frames_dropped", "Stale camera frames skipped for newer ones.", stats.dropped)
        yield counter("linewatch_events", "Defect (or anomaly) events started since start.", d.sink.events_started)
        yield counter("linewatch_acknowledged", "Spooled messages the broker acknowledged.", d.publisher.acked)
        yield counter("linewatch_spool_dropped", "Messages dropped because the spool or disk was full.",
                      spool.dropped())
        yield gauge("linewatch_spool_backlog", "Messages waiting for the broker.", spool.backlog())
        yield gauge("linewatch_broker_connected", "1 while connected to the MQTT broker.",
                    float(d.publisher.state == "connected"))
        stages = GaugeMetricFamily("linewatch_stage_latency_seconds", "Per pipeline stage, over the last 1000 frames.",
                                   labels=[*labels, "stage", "quantile"])
        for stage in stats.timings_ms:
            for q in (50, 99):
                stages.add_metric([*device, stage, str(q / 100)], stats.percentile(stage, q) / 1000)
        yield stages
        if d.line is not None:
            counts = d.line.counters
            parts = CounterMetricFamily("linewatch_parts", "Parts by verdict.", labels=[*labels, "verdict"])
            parts.add_metric([*device, "good"], counts.good)
            rejects = CounterMetricFamily("linewatch_rejects", "Parts pushed off, by reason.",
                                          labels=[*labels, "reason"])
            for reason, count in counts.rejected.items():
                parts.add_metric([*device, reason], count)
                rejects.add_metric([*device, reason], count)
            yield parts
            yield rejects
            yield counter("linewatch_double_triggers", "Trigger edges too close to the last part.",
                          counts.double_triggers)


class Metrics:
    """The registry: the collector, and the parts' decision-latency histogram."""

    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(DaemonCollector(daemon))
        self.decision = Histogram("linewatch_part_decision_seconds", "From a part's trigger to its verdict.",
                                  buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
                                  registry=self.registry)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """The metrics alone on an address of their own (no token: put it on a network Prometheus owns)."""
        start_http_server(port, host, registry=self.registry)
