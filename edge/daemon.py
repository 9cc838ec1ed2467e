"""The device daemon: a frame source, the int8 engine and the MQTT publisher, wired together."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge import artifact
from edge.engine import Engine
from edge.errors import UsageError
from edge.messages import result_payload
from edge.mqtt import DevicePublisher, parse_broker
from edge.pipeline import Pipeline, Result
from edge.review import ReviewSaver
from edge.sources import open_source

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """What ``linewatch run`` is asked to do."""

    model: str
    source: str
    device_id: str
    broker: str = "mqtt://127.0.0.1:1883"
    labels: str | None = None
    prefix: str = "linewatch"
    protocol: str = "5"
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    threads: int | None = None
    delegate: str | None = None
    cpu_fallback: bool = False
    roi: tuple[float, float, float, float] | None = None
    rotate: int = 0
    review_dir: str | None = None
    review_below: float = 0.6
    review_quota_mb: float = 500.0
    fps: float | None = None
    loop: bool = False
    once: bool = False
    max_frames: int | None = None
    top_k: int = 3


def _password(path: str | None) -> str | None:
    """The MQTT password from a file (never from the command line, where ``ps`` shows it)."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the MQTT password file {path}: {exc.strerror}") from None


def run(opts: RunOptions) -> dict[str, float]:
    """Run until the source ends (with ``once``), ``max_frames`` are done, or SIGTERM/SIGINT."""
    started = time.monotonic()
    model = artifact.load(opts.model, opts.labels)
    engine = Engine(model, opts.threads, opts.delegate, opts.cpu_fallback)
    source = open_source(opts.source, fps=opts.fps, loop=opts.loop)
    publisher = DevicePublisher(
        parse_broker(opts.broker), opts.device_id, opts.prefix, opts.protocol,
        status_extra=lambda: {"model": model.name, "version": model.version},
        username=opts.username, password=_password(opts.password_file), ca_file=opts.ca_file,
    )
    publisher.start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    review = ReviewSaver(Path(opts.review_dir), opts.review_below, int(opts.review_quota_mb * 2**20)) \
        if opts.review_dir else None
    seq = 0

    def publish(result: Result) -> None:
        nonlocal seq
        seq += 1
        publisher.publish("result", result_payload(result, opts.device_id, seq, model, opts.top_k))
        if review is not None:
            review.offer(result.frame.image, result.prediction.label, result.prediction.score, result.frame.id)

    logger.info("classifying %s with %s (%d threads)", source.name, model.path, engine.num_threads)
    pipeline = Pipeline(source, engine, publish, max_frames=opts.max_frames, roi=opts.roi, rotate=opts.rotate)
    first = time.monotonic()
    try:
        stats = pipeline.run(stop)
        elapsed = time.monotonic() - first
        if pipeline.exhausted and not opts.once:
            logger.info("source %s ended; waiting for SIGTERM (use --once to exit at the end)", source.name)
            stop.wait()
    finally:
        publisher.stop()
        if review is not None:
            review.close()
    summary = {
        "frames": stats.frames,
        "dropped": stats.dropped,
        "seconds": round(elapsed, 3),
        "fps": round(stats.frames / elapsed, 2) if elapsed > 0 else 0.0,
        "published": publisher.sent,
        "acknowledged": publisher.acked,
        "invoke_ms_p50": round(stats.percentile("invoke", 50), 3),
        "startup_s": round(first - started, 3),
        "review_saved": review.saved if review else 0,
    }
    return summary
