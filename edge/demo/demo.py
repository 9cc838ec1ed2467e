"""``linewatch demo``: the whole path on one machine, run through the real ``linewatch`` commands.

Each step is the command a user would type, printed before it runs: render the synthetic
factory line, train, convert to int8, start a broker, run the daemon on the simulated
conveyor, and watch what arrives over MQTT. The second act learns the same line from its good
parts and empty belt only, and flags on the conveyor the defects it has never seen. It ends
with a summary and ``summary.json``.
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
ANOMALY_DEVICE_ID = "demo-line-2"
GOOD = ("ok", "empty")  # what the second act's anomaly model learns from: no defect photos at all
ANOMALY_MINUTES = 1.5  # its training budget: the demo stays a few minutes long


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


def train_demo_model(work: Path, per_class: int = 300, epochs: int = 30) -> Path:
    """The demo's steps up to the device: render the line, train the default CNN, convert it to int8."""
    data, run, model = work / "data", work / "run", work / "model.tflite"
    _linewatch("demo-data", str(data), "--per-class", str(per_class), "--seed", "1")
    _linewatch("train", str(data), "-o", str(run), "--epochs", str(epochs))
    _linewatch("convert", str(run), "-o", str(model))
    return model


def run_demo(workdir: str, per_class: int = 300, epochs: int = 30, frames: int = 400) -> int:
    started = time.monotonic()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    model = train_demo_model(work, per_class, epochs)
    parity = json.loads(model.with_suffix(".report.json").read_text())["parity"]

    broker = local_broker(work / "broker")
    broker.start()
    print(f"\nbroker: {type(broker).__name__} at {broker.url}", flush=True)
    try:
        daemon, view, lines, labels_by_frame = _watch(broker, model, DEVICE_ID, frames, work / "state")
        print("\nthe subscriber saw (first lines):\n" + "".join(lines.splitlines(True)[:8]), end="")
        print("\nsecond act: a line with no photos of its defects. Learn it from the good parts and the empty belt "
              "only, then flag on the conveyor the defects it has never seen.", flush=True)
        anomaly_run, anomaly_model = work / "run-anomaly", work / "anomaly.tflite"
        # The conveyor's parts move about, where the default's memory of whole photos only adds false alarms
        # (docs/anomaly.md, known limitations): the scar network alone, as the docs advise for such a line.
        _linewatch("train", str(data), "-o", str(anomaly_run), "--task", "anomaly", "--good", ",".join(GOOD),
                   "--anomaly-method", "scars", "--epochs", str(epochs), "--minutes", str(ANOMALY_MINUTES))
        anomaly_view, deployed = None, False
        flagged_by_frame: dict[int, Any] = {}
        try:
            _linewatch("convert", str(anomaly_run), "-o", str(anomaly_model))
        except LinewatchError:  # the int8 gate said no (too little training, e.g. a quick run): nothing to deploy
            print("second act: the int8 gate rejected the anomaly model, so it is not deployed: the gate at work "
                  "(give it more photos or epochs)", flush=True)
        else:
            deployed = True
            _, anomaly_view, anomaly_lines, flagged_by_frame = _watch(broker, anomaly_model, ANOMALY_DEVICE_ID,
                                                                      frames, work / "state-anomaly")
            print("\nthe subscriber saw (first lines):\n" + "".join(anomaly_lines.splitlines(True)[:4]), end="")
    finally:
        broker.stop()
    received = view.results if view else 0
    anomaly_received = anomaly_view.results if anomaly_view else 0
    caught = anomaly_catch(flagged_by_frame, CONVEYOR_SEED)
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
        "anomaly_test_auroc": json.loads((anomaly_run / "metrics.json").read_text())["test"]["auroc"],
        "anomaly_messages_received": anomaly_received,
        "anomaly_flagged_defects": caught["defects"],
        "anomaly_flagged_good": caught["good"],
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
  anomaly model      learned from {' and '.join(GOOD)} only: test AUROC {summary['anomaly_test_auroc']}; {f"on the conveyor it flagged {_share(caught['defects'])} of defect frames and {_share(caught['good'])} of good ones ({anomaly_received} results)" if deployed else "rejected by the int8 gate, not deployed"}
  time               {summary['demo_seconds']} s; artifacts in {summary['artifacts']}""", flush=True)
    return 0 if received == daemon["frames"] and (anomaly_received == daemon["frames"] or not deployed) else 1


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def anomaly_catch(flagged_by_frame: dict[int, bool], seed: int) -> dict[str, float | None]:
    """The share of the conveyor's defect frames an anomaly model flagged, and of its good frames (false alarms)."""
    truth = list(itertools.islice(conveyor_truth(seed), max(flagged_by_frame, default=0)))
    shares: dict[str, float | None] = {}
    for kind, wanted in (("defects", False), ("good", True)):
        frames = [flagged for i, flagged in flagged_by_frame.items() if (truth[i - 1] in GOOD) == wanted]
        shares[kind] = round(sum(frames) / len(frames), 4) if frames else None
    return shares


def _watch(broker: Any, model: Path, device: str, frames: int,
           state: Path) -> tuple[dict[str, Any], Any, str, dict[int, Any]]:
    """Run the daemon on the conveyor for ``frames`` and watch it over MQTT: (exit summary, the monitor's view of
    the device, the monitor's lines, each frame's label, or for an anomaly model whether it was flagged)."""
    seen: dict[int, Any] = {}
    ready = threading.Event()
    lines = io.StringIO()
    box: dict[str, Any] = {}

    def on_result(device_id: str, result: dict[str, Any]) -> None:
        seen[int(result["frame_id"])] = result.get("anomalous", result["label"])

    watcher = threading.Thread(target=lambda: box.update(view=monitor(
        broker.url, protocol=broker.protocol, count=frames, timeout=300, out=lines, ready=ready,
        on_result=on_result)))
    watcher.start()
    ready.wait(15)
    out = _linewatch("run", "--model", str(model), "--source", f"conveyor:{CONVEYOR_SEED}", "--device-id", device,
                     "--broker", broker.url, "--protocol", broker.protocol, "--max-frames", str(frames),
                     "--state-dir", str(state), "--json")
    watcher.join(30)
    return json.loads(out.strip().splitlines()[-1]), box["view"].devices.get(device), lines.getvalue(), seen
