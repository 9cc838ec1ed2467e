"""What the setup page (``web.SetupServer``) sees of a running daemon, and the few things it may change.

Read: the model card, the newest result and frame, the view (ROI, rotation), the stats and the
last events, all from one ``view.DeviceReading``. Changed, through the one callable it is given
for each: the ROI and rotation (applied to the next frame, and kept in
``state_dir/setup.toml``, which the config loader reads after the config file, so a restart
keeps them while /etc stays read-only to the service) and "save this frame as LABEL" for the
next training round. No secret is ever put into what the page reads.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.edge.device.config import PAGE_KEYS, PAGE_SETTINGS, Rotation, env_name
from linewatch.edge.device.pipeline import Result
from linewatch.edge.device.samples import Sampler
from linewatch.edge.device.system import cpu_temperature
from linewatch.edge.device.view import DeviceReading
from linewatch.edge.files import write_atomic
from linewatch.edge.model.images import encode_jpeg

logger = logging.getLogger(__name__)



def latest_view(latest: Result) -> dict[str, Any]:
    """The newest result as the page shows it; ``defect`` by the rule of the model that made it."""
    p = latest.prediction
    return {"frame_id": latest.frame.id, "ts_ms": int(latest.frame.ts * 1000), "label": p.label,
            "score": round(p.score, 4), "defect": latest.model.verdict(p.label, p.anomalous) != "good",
            "anomaly_score": None if p.anomaly_score is None else round(p.anomaly_score, 4), "anomalous": p.anomalous}


class SetupView:
    """``web.DeviceView`` for a running daemon: reads a ``DeviceReading``, never the daemon, never blocks it."""

    def __init__(self, *, read: Callable[[], DeviceReading], apply_view: Callable[[Any, Rotation], None],
                 state_dir: Path, save_dir: Path, metrics: Callable[[], bytes], overridden: Collection[str],
                 sampler: Sampler | None = None) -> None:
        """``apply_view(roi, rotate)`` sets the next frames' view; ``overridden`` are the settings given by flag; a
        frame saved with ``sampler`` is also sent to the station, as an ``operator`` sample."""
        self.read = read
        self.apply_view = apply_view
        self.state_dir = state_dir
        self.save_dir = save_dir
        self.metrics = metrics
        self.overridden = overridden
        self.sampler = sampler
        self._rate: deque[tuple[float, int]] = deque(maxlen=20)  # (monotonic time, frames) for frames/s

    def _fps(self, frames: int) -> float:
        now = time.monotonic()
        if not self._rate or now - self._rate[-1][0] >= 0.5:
            self._rate.append((now, frames))
        start_time, start_frames = self._rate[0]
        return round((frames - start_frames) / (now - start_time), 2) if now > start_time else 0.0

    def status(self) -> dict[str, Any]:
        d = self.read()
        model, latest = d.model, d.latest
        card = model.card
        return {
            "device_id": d.device_id,
            "model": {"name": card.name, "version": card.version, "task": card.task, "labels": model.labels,
                      "outcomes": model.outcomes, "sha256": model.sha256, "architecture": card.architecture,
                      "quantization": card.quantization, "metrics": card.metrics, "parity": card.parity},
            "latest": None if latest is None else latest_view(latest),
            "view": {"roi": list(d.roi) if d.roi else None, "rotate": d.rotate},
            "stats": {"frames": d.frames, "fps": self._fps(d.frames), "dropped": d.dropped,
                      "source_state": d.source_state, "paused": d.paused, "broker": d.broker,
                      "spool_backlog": d.spool_backlog, "cpu_temp_c": cpu_temperature(),
                      "latency_ms_p50": {s: round(d.percentile(s, 50), 3) for s in d.latency_ms}},
            "events": list(d.recent_events),
            "save_dir": str(self.save_dir),
        }

    def latest_frame(self) -> tuple[int, np.ndarray] | None:
        latest = self.read().latest
        return None if latest is None else (latest.frame.id, latest.frame.image)

    def set_view(self, roi: tuple[float, float, float, float] | None, rotate: Rotation) -> dict[str, Any]:
        """Apply to the next frame at once, and keep it in ``state_dir/setup.toml`` for the next start."""
        self.apply_view(roi, rotate)
        logger.info("setup page: region of interest %s, rotation %d", roi, rotate)
        answer: dict[str, Any] = {"roi": list(roi) if roi else None, "rotate": rotate, "saved_to": None}
        try:
            answer["saved_to"] = str(save_view(self.state_dir, roi, rotate))
        except OSError as exc:
            answer["note"] = f"applied until the daemon restarts: cannot write in {self.state_dir} ({exc.strerror})"
        if any(key in self.overridden or env_name(key) in os.environ for key in PAGE_KEYS):
            answer["note"] = "a --roi or --rotate flag (or --set, or LINEWATCH_SOURCE_*) wins at the next start"
        return answer

    def save_frame(self, label: str) -> str:
        if not label or "/" in label or "\\" in label or label.startswith(".") or len(label) > 64:
            raise ValueError(f"label '{label}' cannot be a folder name: use letters, digits, - or _")
        latest = self.read().latest
        if latest is None:
            raise ValueError("no frame yet")
        path = self.save_dir / label / f"{label}_{time.strftime('%Y%m%dT%H%M%S')}_{latest.frame.id:08d}.jpg"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, encode_jpeg(latest.frame.image))
        except OSError as exc:
            raise ValueError(f"cannot write {path} ({exc.strerror})") from None
        if self.sampler is not None:
            self.sampler.take(latest, "operator", suggested=label)
        return str(path)

    def snapshot(self, name: str) -> bytes | None:
        path = self.state_dir / "snapshots" / name
        try:
            return path.read_bytes()
        except OSError:
            return None


def save_view(state_dir: Path, roi: tuple[float, float, float, float] | None, rotate: int) -> Path:
    """Keep the view in ``state_dir/setup.toml``, which ``config.load`` reads after the config file."""
    path = state_dir / PAGE_SETTINGS
    lines = ["# Set on the setup page; it wins over the config file (flags and LINEWATCH_* win over it).",
             "# Delete this file to go back to the config file's view.", "[source]", f"rotate = {rotate}"]
    if roi is not None:
        lines.append(f"roi = [{', '.join(repr(float(v)) for v in roi)}]")
    write_atomic(path, "\n".join(lines) + "\n")
    return path
