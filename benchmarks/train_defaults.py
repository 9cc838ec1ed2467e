"""Plain ``linewatch train`` against a hand-tuned classic CNN, on several data sets and seeds.

    .venv/bin/python benchmarks/train_defaults.py [--sets digits,glyphs,textures,line-hard] [--seeds 0,1,2]
                                                  [--out build/bench-train] [--no-baseline] [--json] [--record]

For every set and seed it runs ``linewatch train SET -o RUN --seed S`` exactly as a user would
(a subprocess, default settings, wall time measured) and then trains the reference on the very
same split (``RUN/splits.json``) at the photos' own size: the Keras MNIST example's CNN (two
convolutions, max pooling, a 128-unit dense layer, dropout), Adam 1e-3, batch 128, 30 epochs,
the epoch with the best validation accuracy kept: the classic CNN tuned by hand. It prints
mean ± standard deviation over the seeds, and ``--json`` writes them to OUT/results.json.
The data sets come from ``benchmarks/datasets.py`` (built on first use, nothing downloaded).
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import SETS, build  # noqa: E402
from benchmarks.recording import record, spread  # noqa: E402


def run_linewatch(data: Path, run: Path, seed: int) -> dict:
    """``linewatch train`` as a user runs it; a run already measured (``RUN/bench.json``) is read back."""
    done = run / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.monotonic()
    linewatch = Path(sys.executable).with_name("linewatch")
    proc = subprocess.run([str(linewatch), "train", str(data), "-o", str(run), "--seed", str(seed)],
                          capture_output=True, text=True)
    seconds = time.monotonic() - started
    if proc.returncode:
        sys.exit(f"linewatch train {data} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    metrics = json.loads((run / "metrics.json").read_text())
    result = {"accuracy": metrics["test"]["accuracy"], "seconds": round(seconds, 1),
              "epochs": len(metrics["history"]["loss"]), "best_epoch": metrics["best_epoch"]}
    done.write_text(json.dumps(result))
    return result


def native_size(items: list, limit: int = 128) -> tuple[int, int]:
    """The photos' own median size, brought down only when the long side is over ``limit``."""
    import numpy as np

    from linewatch.edge.model.images import read_image

    shapes = [read_image(path).shape[:2] for path, _ in items[:200]]
    h, w = np.median(np.array(shapes), axis=0)
    scale = min(1.0, limit / max(h, w))
    return max(8, round(h * scale)), max(8, round(w * scale))


def run_baseline(run: Path, seed: int, epochs: int = 30) -> dict:
    """The classic CNN on the run's own split, at the photos' own size (as it was designed: 28x28 for MNIST)."""
    import keras
    from keras import layers

    from linewatch.train import data

    started = time.monotonic()
    splits = data.load_splits(run / "splits.json")
    height, width = native_size(splits["train"])
    classes = json.loads((run / "splits.json").read_text())["classes"]
    arrays = {name: data.load_images(items, classes, height, width)[:2] for name, items in splits.items()}
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((height, width, 3)), layers.Rescaling(1 / 255),
        layers.Conv2D(32, 3, activation="relu"), layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(2), layers.Dropout(0.25), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(len(classes), activation="softmax")])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    best = keras.callbacks.ModelCheckpoint(str(run / "baseline.weights.h5"), monitor="val_accuracy",
                                           save_best_only=True, save_weights_only=True)
    model.fit(*arrays["train"], validation_data=arrays["val"], batch_size=128, epochs=epochs, verbose=0,
              callbacks=[best])
    model.load_weights(run / "baseline.weights.h5")
    x, y = arrays["test"]
    accuracy = float((model.predict(x, verbose=0).argmax(1) == y).mean())
    return {"accuracy": accuracy, "seconds": round(time.monotonic() - started, 1)}


def table(results: dict[str, dict], seeds: list[int]) -> str:
    """The markdown table of a run: mean ± standard deviation over the seeds, mean wall time."""
    lines = [f"Measured {date.today().isoformat()} on {os.cpu_count()} cores of {platform.machine()}, seeds "
             f"{', '.join(map(str, seeds))}: `make bench-train` (`python benchmarks/train_defaults.py`).",
             "",
             "| data set | images | `linewatch train`, defaults: test accuracy | time | classic CNN, same split "
             "| time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        ours = [r["linewatch"] for r in result["runs"]]
        line = (f"| {name} | {result['images']:,} | {spread([r['accuracy'] for r in ours])} "
                f"| {statistics.mean(r['seconds'] for r in ours):.0f} s |")
        ref = [r["baseline"] for r in result["runs"] if "baseline" in r]
        line += (f" {spread([r['accuracy'] for r in ref])} | {statistics.mean(r['seconds'] for r in ref):.0f} s |"
                 if ref else " | |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench-train")
    parser.add_argument("--no-baseline", action="store_true", help="only linewatch train")
    parser.add_argument("--json", action="store_true", help="write OUT/results.json")
    parser.add_argument("--record", action="store_true", help="write the table into docs/training.md")
    parser.add_argument("--from-json", type=Path, help="only print (and --record) the table of an earlier run's "
                                                       "results.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        text = table(earlier, sorted({r["seed"] for result in earlier.values() for r in result["runs"]}))
        print(text)
        if args.record:
            record(ROOT / "docs" / "training.md", "bench-train", text)
        return
    folders = build(ROOT / "build" / "sets", tuple(args.sets.split(",")))
    results: dict[str, dict] = {}
    for name, folder in folders.items():
        rows = []
        for seed in seeds:
            run = args.out / name / f"seed{seed}"
            row = {"seed": seed, "linewatch": run_linewatch(folder, run, seed)}
            if not args.no_baseline:
                row["baseline"] = run_baseline(run, seed)
            rows.append(row)
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v['accuracy']:.4f} in {v['seconds']} s"
                                                        for k, v in row.items() if k != "seed"), flush=True)
        results[name] = {"runs": rows, "images": sum(1 for _ in folder.rglob("*.png"))}
    text = table(results, seeds)
    print("\n" + text)
    if args.record:
        record(ROOT / "docs" / "training.md", "bench-train", text)
    if args.json:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
