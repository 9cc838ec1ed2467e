"""The simulated line, as the issues ask it measured: 300 parts at 5 a second, inference stalled, and the parts
triggered by a PLC through the handshake over Modbus and OPC UA.

    .venv/bin/python benchmarks/line.py [--model M.tflite] [--record]

Runs ``linewatch demo --line --parts 300 --rate 5`` (the demo's model: trained into build/demo when
missing), ``--parts 30 --stall-ms 600`` (above the 500 ms reject delay) and ``--plc modbus`` and
``--plc opcua`` at 300 parts, and with ``--record`` writes the tables into docs/line-io.md and
docs/plc.md (``make docs`` copies the first into the README). About 6 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.recording import record  # noqa: E402


def demo(*args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as summary:
        command = [sys.executable, "-m", "linewatch.edge.cli", "demo", "--line", "--summary", summary.name, *args]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        return json.loads(Path(summary.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="default: the demo's model (build/demo/model.tflite)")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--plc-only", action="store_true", help="only the PLC runs, and only their table")
    args = parser.parse_args()
    model = ("--model", args.model) if args.model else ()
    runs = {} if args.plc_only else {
        "300 parts at 5 a second": demo(*model, "--parts", "300", "--rate", "5"),
        "30 parts, every inference stalled 600 ms (> the 500 ms delay)":
            demo(*model, "--parts", "30", "--rate", "5", "--stall-ms", "600", "--workdir", "build/demo-stall")}
    for protocol, name in (("modbus", "Modbus TCP"), ("opcua", "OPC UA")):
        runs[f"300 parts at 5 a second, triggered by a PLC over {name}"] = demo(
            *model, "--parts", "300", "--rate", "5", "--plc", protocol)
    lines = [f"Measured {date.today().isoformat()} on {os.cpu_count()} cores of {platform.machine()}, simulated pins: "
             "`make bench-line` (`python benchmarks/line.py`); reject gate 500 ms after the photo-eye.", "",
             "| run | parts (MQTT `part` messages) | true defects | rejected: caught / good parts | verdicts "
             "| not good but passed | reject timing error p50 / p99 / max |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in runs.items():
        timing = s["timing_error_ms"] or {"p50": "-", "p99": "-", "max": "-"}
        verdicts = ", ".join(f"{k} {v}" for k, v in s["verdicts"].items() if v)
        lines.append(f"| {name} | {s['parts']} ({s['mqtt_parts']}) | {s['defects_true']} | {s['rejected']}: "
                     f"{s['defects_caught']} / {s['good_rejected']} | {verdicts} | {s['not_good_but_passed']} | "
                     f"{timing['p50']} / {timing['p99']} / {timing['max']} ms |")
    text = "\n".join(lines) + "\n"
    handshake = [f"Measured {date.today().isoformat()} on {os.cpu_count()} cores of {platform.machine()}: "
                 f"`make bench-line` (`python benchmarks/line.py{' --plc-only' if args.plc_only else ''}`), "
                 f"{'model ' + args.model if args.model else 'the demo model'}: the demo's line at 5 parts a second, "
                 "40 frames a second, its photo-eye wired to a simulated PLC (the protocol's own client library in a "
                 "1 ms scan).",
                 "", "| protocol | triggers | results (same verdicts as the `part` messages) | overruns "
                 "| trigger to ResultsReady p50 / p99 / max | invoke p99 |", "| --- | --- | --- | --- | --- | --- |"]
    for s in runs.values():
        plc = s.get("plc")
        if plc is None:
            continue
        latency = plc["trigger_to_results_ready_ms"] or {"p50": "-", "p99": "-", "max": "-"}
        same = "yes" if plc["same_verdicts_as_part_messages"] else "**no**"
        handshake.append(f"| {plc['protocol']} | {plc['triggers']} | {plc['results']} ({same}) | {plc['overruns']} "
                         f"| {latency['p50']} / {latency['p99']} / {latency['max']} ms | {plc['invoke_p99_ms']} ms |")
    table = "\n".join(handshake) + "\n"
    print(text + "\n" + table)
    if args.record:
        if not args.plc_only:
            record(ROOT / "docs" / "line-io.md", "line-demo", text)
        record(ROOT / "docs" / "plc.md", "plc-line", table)


if __name__ == "__main__":
    main()
