"""``linewatch demo``: the whole path on one machine, run through the real ``linewatch`` commands.

Each step is the command a user would type, printed before it runs: render the synthetic
factory line, train, convert to int8, start a broker, run the daemon on the simulated
conveyor, and watch what arrives over MQTT. It ends with a summary and ``summary.json``.
"""

from __future__ import annotations

import io
import itertools
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from linewatch.edge.demo.brokers import local_broker
from linewatch.edge.errors import LinewatchError
from linewatch.edge.simulator import conveyor_truth
from linewatch.edge.tools.monitor import monitor

DEVICE_ID = "demo-line-1"
# LiteRT's C++ start-up notice, which no setting silences; the device's own log keeps it (it says XNNPACK is on).
RUNTIME_NOTICES = ("INFO: Created TensorFlow Lite",)
CONVEYOR_SEED = 7


def _linewatch(*args: str) -> str:
    """Run one ``linewatch`` command as its own process, echoing it; its stdout is returned."""
    print(f"\n$ linewatch {shlex.join(args)}", flush=True)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "linewatch.edge.cli", *args], capture_output=True, text=True)
    print("".join(line for line in proc.stderr.splitlines(True) if not line.startswith(RUNTIME_NOTICES)),
          end="", file=sys.stderr, flush=True)
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise LinewatchError(f"'linewatch {args[0]}' failed with exit code {proc.returncode}")
    print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
    return proc.stdout


def conveyor_accuracy(labels_by_frame: dict[int, str], seed: int) -> float | None:
    """The share of results whose label is the simulator's ground truth for that frame id."""
    if not labels_by_frame:
        return None
    truth = list(itertools.islice(conveyor_truth(seed), max(labels_by_frame)))
    return round(sum(truth[i - 1] == label for i, label in labels_by_frame.items()) / len(labels_by_frame), 4)


def run_demo(workdir: str, per_class: int = 300, epochs: int = 30, frames: int = 400) -> int:
    started = time.monotonic()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    data, run, model = work / "data", work / "run", work / "model.tflite"
    _linewatch("demo-data", str(data), "--per-class", str(per_class), "--seed", "1")
    _linewatch("train", str(data), "-o", str(run), "--epochs", str(epochs))
    _linewatch("convert", str(run), "-o", str(model))
    parity = json.loads(model.with_suffix(".report.json").read_text())["parity"]
    labels_by_frame: dict[int, str] = {}

    broker = local_broker(work / "broker")
    broker.start()
    print(f"\nbroker: {type(broker).__name__} at {broker.url}", flush=True)
    try:
        ready = threading.Event()
        lines = io.StringIO()
        box: dict[str, Any] = {}
        watcher = threading.Thread(target=lambda: box.update(view=monitor(
            broker.url, protocol=broker.protocol, count=frames, timeout=300, out=lines, ready=ready,
            on_result=lambda device, r: labels_by_frame.__setitem__(int(r["frame_id"]), str(r["label"])))))
        watcher.start()
        ready.wait(15)
        out = _linewatch("run", "--model", str(model), "--source", f"conveyor:{CONVEYOR_SEED}",
                         "--device-id", DEVICE_ID,
                         "--broker", broker.url, "--protocol", broker.protocol, "--max-frames", str(frames),
                         "--state-dir", str(work / "state"), "--json")
        daemon = json.loads(out.strip().splitlines()[-1])
        watcher.join(30)
    finally:
        broker.stop()
    view = box["view"].devices.get(DEVICE_ID)
    received = view.results if view else 0
    print("\nthe subscriber saw (first lines):\n" + "".join(lines.getvalue().splitlines(True)[:8]), end="")
    summary = {
        "float_test_accuracy": parity["float_accuracy"],
        "int8_test_accuracy": parity["quantized_accuracy"],
        "int8_float_agreement": parity["agreement"],
        "daemon_fps": daemon["fps"],
        "frames": daemon["frames"],
        "messages_received": received,
        "seq_gaps": view.gaps if view else None,
        "defects_flagged": view.defects if view else 0,
        "conveyor_accuracy": conveyor_accuracy(labels_by_frame, CONVEYOR_SEED),
        "labels": view.labels if view else {},
        "demo_seconds": round(time.monotonic() - started, 1),
        "artifacts": str(work.resolve()),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"""
linewatch demo summary
  test accuracy      float {summary['float_test_accuracy']:.4f}   int8 {summary['int8_test_accuracy']:.4f}   agreement {summary['int8_float_agreement']:.4f}
  daemon             {summary['frames']} conveyor frames at {summary['daemon_fps']} frames/s
  over MQTT          {received} result messages received, {summary['seq_gaps']} missing, {summary['defects_flagged']} defects flagged
  on the conveyor    {summary['conveyor_accuracy']} of frames labeled as the simulator's ground truth
  time               {summary['demo_seconds']} s; artifacts in {summary['artifacts']}""", flush=True)
    return 0 if received == daemon["frames"] else 1
