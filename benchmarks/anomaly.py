"""Anomaly detection from good photos only: both methods, several seeds, on the line and on real scans.

    .venv/bin/python benchmarks/anomaly.py [--seeds 0,1,2] [--methods scars,autoencoder] [--record]

For each data set, method and seed it runs ``linewatch train DATA -o RUN --task anomaly --good G
--anomaly-method M --seed S`` exactly as a user would (a subprocess, wall time measured) and
reads ``RUN/metrics.json``: test AUROC over all anomalous classes and per class, and the false
alarms and detections at the threshold. Data sets (nothing downloaded):

- ``line``: ``linewatch demo-data`` (300 photos a class, seed 1) without its ``empty`` folder:
  good = ``ok``; anomalies = ``scratch``, ``crack``, ``stain``, never trained on.
- ``digits``: scikit-learn's 1,797 real scans of handwritten digits (``benchmarks/datasets.py``):
  good = ``3``; anomalies = the nine other digits: a whole other object, not a mark on a part.

It prints mean ± standard deviation over the seeds; ``--record`` writes the table into
docs/anomaly.md (``make docs`` copies it into the README). About 25 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import build  # noqa: E402
from benchmarks.recording import record, spread  # noqa: E402

LINEWATCH = Path(sys.executable).with_name("linewatch")
GOOD = {"line": "ok", "digits": "3"}


def line_set(out: Path) -> Path:
    """The synthetic line without its empty belt: ok, and three kinds of defect."""
    rendered, line = out / "line-all", out / "line"
    if not line.is_dir():
        subprocess.run([str(LINEWATCH), "demo-data", str(rendered), "--per-class", "300", "--seed", "1"], check=True,
                       capture_output=True)
        line.mkdir(parents=True)
        for folder in rendered.iterdir():
            if folder.name != "empty":
                (line / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return line


def run(data: Path, good: str, method: str, seed: int, out: Path) -> dict:
    """One ``linewatch train --task anomaly``; a run already measured (``RUN/bench.json``) is read back."""
    done = out / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.monotonic()
    proc = subprocess.run([str(LINEWATCH), "train", str(data), "-o", str(out), "--task", "anomaly", "--good", good,
                           "--anomaly-method", method, "--seed", str(seed)], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"linewatch train {data} --task anomaly failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    test = json.loads((out / "metrics.json").read_text())["test"]
    result = {"auroc": test["auroc"], "per_class": {k: v["auroc"] for k, v in test["per_class"].items()},
              "false_alarm_rate": test["false_alarm_rate"], "detection_rate": test["detection_rate"],
              "seconds": round(time.monotonic() - started, 1)}
    done.write_text(json.dumps(result))
    return result


def table(results: dict[str, dict[str, list[dict]]], seeds: list[int]) -> str:
    """Markdown: per data set and method, AUROC mean ± standard deviation over the seeds, and the worst class."""
    lines = [f"Measured {date.today().isoformat()} on {os.cpu_count()} cores of {platform.machine()}, seeds "
             f"{', '.join(map(str, seeds))}: `make bench-anomaly` (`python benchmarks/anomaly.py`).", "",
             "| data set (good) | method | test AUROC | hardest class | false alarms / caught at the threshold "
             "| time |", "| --- | --- | --- | --- | --- | --- |"]
    for name, methods in results.items():
        for method, runs in methods.items():
            classes = runs[0]["per_class"]
            hardest = min(classes, key=lambda c: statistics.mean(r["per_class"][c] for r in runs))
            lines.append(
                f"| {name} ({GOOD[name]}) | {method} | {spread([r['auroc'] for r in runs], 3)} | {hardest} "
                f"{spread([r['per_class'][hardest] for r in runs], 3)} | "
                f"{statistics.mean(r['false_alarm_rate'] for r in runs):.1%} / "
                f"{statistics.mean(r['detection_rate'] for r in runs):.0%} | "
                f"{statistics.mean(r['seconds'] for r in runs):.0f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="scars,autoencoder")
    parser.add_argument("--sets", default="line,digits")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-anomaly")
    parser.add_argument("--record", action="store_true", help="write the table into docs/anomaly.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    folders = {"line": line_set(args.out)} if "line" in args.sets else {}
    if "digits" in args.sets:
        folders |= build(ROOT / "build" / "sets", ("digits",))
    results: dict[str, dict[str, list[dict]]] = {}
    for name, folder in folders.items():
        for method in args.methods.split(","):
            for seed in seeds:
                result = run(folder, GOOD[name], method, seed, args.out / "runs" / name / method / f"seed{seed}")
                results.setdefault(name, {}).setdefault(method, []).append(result)
                print(f"{name} {method} seed {seed}: AUROC {result['auroc']:.4f} in {result['seconds']} s", flush=True)
    text = table(results, seeds)
    print("\n" + text)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if args.record:
        record(ROOT / "docs" / "anomaly.md", "bench-anomaly", text)


if __name__ == "__main__":
    main()
