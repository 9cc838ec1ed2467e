"""Prometheus metrics at ``/metrics``: what the daemon counts, read when Prometheus scrapes, never per frame.

A custom collector reads the counters the daemon keeps anyway, through the one read-only view
(``view.DeviceReading``), so metrics cost nothing between scrapes. The one histogram, the parts' decision latency, is
observed once a part (a few a second). Every metric carries ``device_id``; ``linewatch_info``
and ``linewatch_model_info`` name the release and the running model (with its sha256). Served
by the setup page's server (with its token) and, with ``metrics.listen``, on an address of its
own without a token, as Prometheus expects (docs/line-io.md has a scrape config).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from linewatch.edge import __version__
from linewatch.edge.device.view import DeviceReading

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ReadingCollector(Collector):
    """The daemon's own counters as Prometheus metrics, read at scrape time."""

    def __init__(self, read: Callable[[], DeviceReading]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        d = self.read()
        labels = ["device_id"]
        device = [d.device_id]

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, text, labels=labels)
            family.add_metric(device, value)
            return family

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, text, labels=labels)
            family.add_metric(device, value)
            return family

        yield counter("linewatch_frames", "Frames classified since start.", d.frames)
        yield counter("linewatch_frames_dropped", "Stale camera frames skipped for newer ones.", d.dropped)
        yield counter("linewatch_events", "Defect (or anomaly) events started since start.", d.events_started)
        yield counter("linewatch_acknowledged", "Spooled messages the broker acknowledged.", d.acknowledged)
        yield counter("linewatch_spool_dropped", "Messages dropped because the spool or disk was full.",
                      d.spool_dropped)
        yield gauge("linewatch_spool_backlog", "Messages waiting for the broker.", d.spool_backlog)
        yield gauge("linewatch_broker_connected", "1 while connected to the MQTT broker.",
                    float(d.broker == "connected"))
        # A summary over the last 1000 frames of each stage, as the pipeline keeps them: quantiles, _count and _sum.
        stages = Metric("linewatch_stage_latency_seconds", "Per pipeline stage, over the last 1000 frames.", "summary")
        for stage, values_ms in d.latency_ms.items():
            where = {"device_id": d.device_id, "stage": stage}
            for q in (0.5, 0.99):
                stages.add_sample(stages.name, {**where, "quantile": str(q)}, d.percentile(stage, q * 100) / 1000)
            stages.add_sample(f"{stages.name}_count", where, len(values_ms))
            stages.add_sample(f"{stages.name}_sum", where, sum(values_ms) / 1000)
        yield stages
        info = InfoMetricFamily("linewatch", "The linewatch release this device runs.", labels=labels)
        info.add_metric(device, {"version": __version__})
        yield info
        model = InfoMetricFamily("linewatch_model", "The model this device classifies with.", labels=labels)
        model.add_metric(device, {"name": d.model.name, "version": d.model.version, "sha256": d.model.sha256,
                                  "task": d.model.card.task})
        yield model
        if d.line is not None:
            counts = d.line
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

    def __init__(self, device_id: str, read: Callable[[], DeviceReading]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(ReadingCollector(read))
        self.decision = Histogram("linewatch_part_decision_seconds", "From a part's trigger to its verdict.",
                                  labelnames=["device_id"], buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                                                                     5.0),
                                  registry=self.registry).labels(device_id)  # every metric's labels

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """The metrics alone on an address of their own (no token: put it on a network Prometheus owns)."""
        start_http_server(port, host, registry=self.registry)
