"""``make bench``: linewatch's own figures on this host, in one bounded run (about 12 minutes on 2 cores).

    .venv/bin/python benchmarks/suite.py [--work build/bench] [--out benchmarks]

One run, on one host, side by side, so the ratios hold where absolute figures drift (shared
machines are noisy):

1. training: the default CNN and MobileNetV2 (alpha 0.35) on the demo's synthetic line, and a
   small 10-class CNN at 32x32 on rendered digits: images/s and time to the demo's accuracy;
2. quantization: float32, float16, dynamic and int8 of both line models (the comparison table
   of ``linewatch convert``): file size, invoke p50/p99 at 1 thread and all, test accuracy;
3. the device loop: the pipeline against the bare invoke loop and a tutorial's serial loop,
   for the three models, at 1 thread and all (``linewatch bench``), and a live-paced run;
4. the daemon through a real loopback mosquitto: capture-to-subscriber latency (p50, p99,
   histogram), cold start to the first result, peak memory, the edge import time;
5. published Raspberry Pi and Coral figures (``benchmarks/reference-figures.md``), quoted as
   such: nothing here runs on a Pi.

Writes ``results.md`` (its summary block goes into the README with ``make docs``), ``results.json``
and ``latency.png``, ``quantization.png``, ``pipeline.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import glyphs  # noqa: E402

LINEWATCH = Path(sys.executable).with_name("linewatch")
EDGE_PYTHON = ROOT / ".venv-edge" / "bin" / "python"  # the device tier's venv: what a Pi imports, no TensorFlow
DEMO_ACCURACY = 0.99  # validation accuracy the demo's model reaches; "time to demo accuracy" is to this
STEPS = 9
_started = time.monotonic()


def step(number: int, text: str) -> None:
    print(f"[{number}/{STEPS}] {text} ({time.monotonic() - _started:.0f} s so far)", flush=True)


def linewatch(*args: str, log: Path | None = None) -> str:
    """Run the CLI as a user would; its output goes to ``log`` (kept for a post-mortem) and is returned."""
    proc = subprocess.run([str(LINEWATCH), *args], capture_output=True, text=True)
    if log is not None:
        log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        sys.exit(f"linewatch {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


# --- 1. training ---------------------------------------------------------------------------------

def train(name: str, data: Path, work: Path, *extra: str) -> dict[str, Any]:
    run = work / name
    if not (run / "metrics.json").is_file():
        linewatch("train", str(data), "-o", str(run), "--seed", "0", *extra, log=work / f"{name}.train.log")
    metrics = json.loads((run / "metrics.json").read_text())
    history = metrics["history"]
    splits = json.loads((run / "splits.json").read_text())
    images = len(splits["train"]) + len(splits["val"])  # an epoch trains on one and validates on the other
    epochs = len(history["loss"])
    reached = next((i for i, a in enumerate(history["val_accuracy"]) if a >= DEMO_ACCURACY), None)
    return {
        "epochs": epochs, "train_seconds": metrics["train_seconds"], "test_accuracy": metrics["test"]["accuracy"],
        "images_per_s": round(images * epochs / history["seconds"][-1], 1),
        "seconds_to_demo_accuracy": history["seconds"][reached] if reached is not None else None,
        "epochs_to_demo_accuracy": reached + 1 if reached is not None else None,
        "input": json.loads((run / "model_card.json").read_text())["input"],
    }


# --- 2. quantization -----------------------------------------------------------------------------

def convert(name: str, work: Path, compare: bool) -> dict[str, Any]:
    """``linewatch convert``'s report; a model its parity gate rejects is measured all the same, and said so."""
    out = work / f"{name}.tflite"
    rejected = out.with_suffix(".rejected.tflite")
    if not out.is_file() and not rejected.is_file():
        proc = subprocess.run([str(LINEWATCH), "convert", str(work / name), "-o", str(out),
                               *([] if compare else ["--no-compare"])], capture_output=True, text=True)
        (work / f"{name}.convert.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode not in (0, 5):  # 5: the gate said no, and kept the model as .rejected.tflite
            sys.exit(f"linewatch convert {name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    path = out if out.is_file() else rejected
    report = json.loads(path.with_suffix(".report.json").read_text())
    return {"path": str(path), "comparison": report["quantizations"], "parity": report["parity"],
            "rejected_by_gate": report["failures"]}


# --- 3. the device loop --------------------------------------------------------------------------

def at_model_size(line: Path, model: str, work: Path) -> tuple[Path, str]:
    """The line's photos at the model's own input size, as a camera stream set to it delivers them (a Pi's
    ISP scales for free): the pipeline then has nothing to resize. PNG, so the frames are exactly that."""
    import cv2

    from linewatch.edge.model import artifact

    card = artifact.load(model).card
    assert card.input is not None
    size = f"{card.input.width}x{card.input.height}"
    out = work / f"line-{size}"
    if not out.is_dir():
        for photo in sorted(line.rglob("*.jpg")):
            image = cv2.imread(str(photo))
            target = out / photo.parent.name / f"{photo.stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), cv2.resize(image, (card.input.width, card.input.height),
                                                interpolation=cv2.INTER_AREA))
    return out, size


CAMERA_SIZES = ((160, 120), (256, 192), (320, 240), (640, 480), (1280, 720), (1920, 1080))


def prepare_costs(photo: Path, model: str) -> list[dict[str, Any]]:
    """Microseconds on one core to prepare a frame for ``model`` (resize, colour order), by the camera's frame size:
    what choosing ``source.camera_size`` (or a region of interest) costs the device a frame."""
    import timeit

    import cv2
    import numpy as np

    from linewatch.edge.model import artifact
    from linewatch.edge.model.images import prepare

    card = artifact.load(model).card
    assert card.input is not None
    height, width = card.input.height, card.input.width
    cv2.setNumThreads(1)  # as the device's pipeline runs it
    photo_bgr, out = cv2.imread(str(photo)), np.empty((height, width, 3), np.uint8)
    rows = []
    for w, h in ((width, height), *CAMERA_SIZES):
        frame = cv2.resize(photo_bgr, (w, h), interpolation=cv2.INTER_CUBIC)
        number = max(10, 2_000_000 // (w * h))
        timer = timeit.Timer(lambda frame=frame: prepare(frame, height, width, out=out))
        best = min(timer.repeat(number=number, repeat=5)) / number
        rows.append({"frame": f"{w}x{h}", "model": f"{width}x{height}", "us": round(1e6 * best, 1)})
    return rows


def device_loop(model: str, source: Path, threads: int) -> dict[str, Any]:
    return json.loads(linewatch("bench", model, "--source", str(source), "--threads", str(threads), "--json",
                                "--frames", "600"))


# --- 4. the daemon through a broker --------------------------------------------------------------

def daemon_latency(model: str, work: Path, framed: Path, frames: int = 600, fps: int = 60) -> dict[str, Any]:
    """Run the daemon on the conveyor at ``fps`` against a loopback mosquitto; a subscriber times each result.

    Then its throughput, everything included (the spool, MQTT, mosquitto on the same cores): the
    daemon on ``framed`` (photos at the model's size) looped, unpaced, at its default threads."""
    import paho.mqtt.client as mqtt

    from linewatch.edge.demo.brokers import MosquittoBroker, find_mosquitto

    if find_mosquitto() is None:
        sys.exit("mosquitto is missing: `make broker` installs it")
    broker = MosquittoBroker(workdir=work / "broker")
    broker.start()
    latencies: list[float] = []
    stages: dict[str, Any] = {}  # the daemon's own stage timings (p50, p99), from its last stats message
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/stats"):
            stages.update(json.loads(message.payload)["latency_ms"])
            return
        latencies.append(1000 * time.time() - json.loads(message.payload)["ts_ms"])
        if len(latencies) >= frames:
            done.set()

    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
    subscriber.on_message = on_message
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.subscribe([("linewatch/bench/result", 1), ("linewatch/bench/stats", 1)])
    subscriber.loop_start()
    try:
        out = linewatch("run", "--model", model, "--source", "conveyor:7", "--fps", str(fps), "--device-id", "bench",
                        "--broker", broker.url, "--max-frames", str(frames), "--state-dir", str(work / "state"),
                        # a stats message or two before the end: the daemon's stage timings of the frames so far
                        "--stats-interval", str(frames / fps / 3), "--json", log=work / "daemon.log")
        done.wait(30)
        shutil.rmtree(work / "state-throughput", ignore_errors=True)
        throughput = json.loads(linewatch("run", "--model", model, "--source", str(framed), "--loop", "--device-id",
                                          "throughput", "--broker", broker.url, "--max-frames", "20000",
                                          "--state-dir", str(work / "state-throughput"), "--stats-interval", "3600",
                                          "--json").strip().splitlines()[-1])
        cold = [json.loads(linewatch("run", "--model", model, "--source", str(work / "line" / "ok"), "--device-id",
                                     "cold", "--broker", broker.url, "--max-frames", "1", "--state-dir",
                                     str(work / "state-cold"), "--json").strip().splitlines()[-1])["cold_start_s"]
                for _ in range(3)]
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()
        broker.stop()
    summary = json.loads(out.strip().splitlines()[-1])
    return {"frames": frames, "fps": fps, "received": len(latencies), "latencies_ms": latencies,
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "stages_ms": stages, "wake_us": wake_us(1 / fps), "daemon": summary, "cold_start_s": sorted(cold)[1],
            "cold_starts_s": cold, "throughput": throughput}


def wake_us(idle_s: float, count: int = 300) -> dict[str, float]:
    """How long a thread takes to run once woken, after idling ``idle_s`` (p50, p99 in us): a result crosses
    several such hand-offs between threads and processes, each waiting while the line is between frames."""
    woken: list[float] = []
    box: list[float | None] = []
    ready = threading.Condition()

    def waiter() -> None:
        while True:
            with ready:
                while not box:
                    ready.wait()
                sent = box.pop()
            if sent is None:
                return
            woken.append(1e6 * (time.perf_counter() - sent))

    thread = threading.Thread(target=waiter)
    thread.start()
    for _ in range(count):
        time.sleep(idle_s)
        with ready:
            box.append(time.perf_counter())
            ready.notify()
    with ready:
        box.append(None)
        ready.notify()
    thread.join()
    return {"p50": round(percentile(woken, 50)), "p99": round(percentile(woken, 99))}


def import_seconds(python: Path) -> float:
    """Best of five: importing what the daemon imports, in a fresh interpreter."""
    code = ("import time; t = time.perf_counter(); import linewatch.edge.cli, linewatch.edge.device.daemon, "
            "linewatch.edge.model.engine; print(time.perf_counter() - t)")
    return round(min(float(subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                          check=True).stdout) for _ in range(5)), 3)


def processor() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


# --- plots and tables ----------------------------------------------------------------------------

def plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = results["daemon"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(lat["latencies_ms"], bins=60, color="#4c72b0")
    for q, style in (("p50_ms", "--"), ("p99_ms", ":")):
        ax.axvline(lat[q], color="k", linestyle=style, label=f"{q[:3]} {lat[q]} ms")
    ax.set(xlabel="capture to subscriber, ms", ylabel="results",
           title=f"daemon -> loopback mosquitto -> subscriber, conveyor at {lat['fps']} frames/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, key, label in ((axes[0], "kib", "file size, KiB"), (axes[1], "p50_1", "invoke p50 at 1 thread, ms")):
        names = list(results["quantization"])
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            rows = results["quantization"][name]
            values = [row["bytes"] / 1024 if key == "kib" else row["latency_ms"]["1_thread"]["p50"] for row in rows]
            ax.bar([j + i * width for j in range(len(rows))], values, width, label=name)
            ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(rows))],
                          [row["quantization"] for row in rows])
        ax.set(ylabel=label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "quantization.png", dpi=110)
    plt.close(fig)

    plot_pipeline(results["pipeline"], out)


def plot_pipeline(rows: list[dict[str, Any]], out: Path) -> None:
    """pipeline.png: each loop's frames/s as a ratio to the bare loop, against the goal."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.2))
    names = [f"{r['name'].replace(', ', chr(10))}\n{r['threads']} thr" for r in rows]
    for offset, key, label in ((-0.2, "ratio", "pipeline / bare"), (0.2, "serial_ratio", "serial loop / bare")):
        ax.bar([i + offset for i in range(len(rows))], [r[key] for r in rows], 0.4, label=label)
    ax.axhline(0.95, color="k", linestyle="--", label="goal 0.95")
    ax.set_xticks(range(len(rows)), names)
    ax.set(ylabel="frames/s, ratio to the bare invoke loop", ylim=(0, 1.25))
    ax.legend(loc="upper left", ncols=3)
    fig.tight_layout()
    fig.savefig(out / "pipeline.png", dpi=110)
    plt.close(fig)


# The summary's rows a newcomer reads first (the README): what the whole daemon does, and what int8 costs.
HEADLINE = ("| the whole daemon", "| capture to subscriber", "| daemon cold start", "| default CNN int8")


def markdown(results: dict[str, Any], reference: str) -> str:
    host = results["host"]
    lat, cores = results["daemon"], host["cores"]
    by_name = {r["name"]: r for r in results["pipeline"] if r["threads"] == cores}
    by_name_1 = {r["name"]: r for r in results["pipeline"] if r["threads"] == 1}
    framed = next(name for name in by_name if name.startswith("cnn, "))  # "cnn, 128x96 frames"
    mobile = next(name for name in by_name if name.startswith("mobilenetv2, "))
    cnn_q = {row["quantization"]: row for row in results["quantization"]["cnn"]}
    train_cnn = results["training"]["cnn"]
    summary = [
        "| figure | measured | command |",
        "| --- | --- | --- |",
        f"| pipeline / bare invoke loop, default CNN, {cores} threads (1 thread) | {by_name['cnn']['ratio']} "
        f"({by_name_1['cnn']['ratio']}); serial loop {by_name['cnn']['serial_ratio']} "
        f"({by_name_1['cnn']['serial_ratio']}) | `make bench` |",
        f"| the same, frames at the CNN's own {framed[5:-7]} (a Pi camera stream set to it), {cores} threads "
        f"(1 thread) | {by_name[framed]['ratio']} ({by_name_1[framed]['ratio']}); CPU outside `invoke()` "
        f"{by_name[framed]['cpu_us_per_frame']['outside_share_of_invoke']:.0%} "
        f"({by_name_1[framed]['cpu_us_per_frame']['outside_share_of_invoke']:.0%}) of invoke's | `make bench` |",
        f"| pipeline / bare, MobileNetV2 a0.35, the line's photos; frames at its own {mobile[13:-7]}; {cores} threads "
        f"(1 thread) | {by_name['mobilenetv2']['ratio']} ({by_name_1['mobilenetv2']['ratio']}); "
        f"{by_name[mobile]['ratio']} ({by_name_1[mobile]['ratio']}) | `make bench` |",
        f"| pipeline / bare, small 32x32 CNN, {cores} threads (1 thread) | {by_name['small']['ratio']} "
        f"({by_name_1['small']['ratio']}) | `make bench` |",
        f"| CPU outside `invoke()`, default CNN, the line's 160x120 photos (resized), {cores} threads (1 thread) | "
        f"{by_name['cnn']['cpu_us_per_frame']['outside_share_of_invoke']:.0%} "
        f"({by_name_1['cnn']['cpu_us_per_frame']['outside_share_of_invoke']:.0%}) of invoke's | `make bench` |",
        f"| the daemon's spool (a result stored, then forgotten once acknowledged), CPU a frame, default CNN | "
        f"{by_name_1['cnn']['spool_us_per_frame']['in_blocks']} us in blocks of "
        f"{by_name_1['cnn']['frames_per_call']} frames, one transaction each "
        f"({by_name_1['cnn']['spool_us_per_frame']['one_by_one']} us a message at a time) | `make bench` |",
        f"| the whole daemon on a folder of {framed[5:-7]} PNGs (decoding, spool, MQTT, mosquitto on the same "
        f"cores), default CNN, {cores} threads | {lat['throughput']['fps']:,.0f} frames/s, "
        f"{lat['throughput']['fps'] / by_name[framed]['bare_fps']:.2f} of the bare invoke loop | `make bench` |",
        f"| capture to subscriber through mosquitto, conveyor at {lat['fps']} frames/s | p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms | `make bench` |",
        f"| daemon cold start to first result; peak memory; edge imports | {lat['cold_start_s']} s; "
        f"{lat['daemon']['max_rss_mb']} MB; {results['import_s']} s | `make bench` |",
        f"| default CNN int8 vs float32 | {cnn_q['float32']['bytes'] / cnn_q['int8']['bytes']:.2f}x smaller, "
        f"invoke p50 {cnn_q['int8']['latency_ms']['1_thread']['p50']} vs "
        f"{cnn_q['float32']['latency_ms']['1_thread']['p50']} ms at 1 thread, test accuracy "
        f"{cnn_q['int8']['accuracy']:.4f} vs {cnn_q['float32']['accuracy']:.4f} | `make bench` |",
        f"| training, default CNN on the demo's line | {train_cnn['images_per_s']} images/s; "
        f"{DEMO_ACCURACY:.0%} validation accuracy after {train_cnn['seconds_to_demo_accuracy']} s | `make bench` |",
    ]
    headline = summary[:2] + [row for row in summary[2:] if row.startswith(HEADLINE)]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['date']} by `make bench` (`python benchmarks/suite.py`, {results['seconds']:.0f} s) on "
        f"{cores} cores of {host['machine']} ({host['processor']}), Python {host['python']}. One run, one host: "
        "compare the ratios, not absolute figures across machines. Nothing here ran on a Raspberry Pi; the "
        "published Pi and Coral figures at the end are quoted, not measured.",
        "",
        "## Summary (copied into the README by `make docs`)",
        "",
        "<!-- bench:begin -->",
        *summary,
        "<!-- bench:end -->",
        "",
        "The headline, on the README's front page:",
        "",
        "<!-- bench-headline:begin -->",
        *headline,
        "<!-- bench-headline:end -->",
        "",
        "## Training (the demo's line: 5 classes, 300 photos each; digits: 10 classes, 200 each)",
        "",
        "| model | input | epochs | images/s (train + validation) | time to "
        f"{DEMO_ACCURACY:.0%} validation accuracy | test accuracy (float) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in results["training"].items():
        to = f"{t['seconds_to_demo_accuracy']} s (epoch {t['epochs_to_demo_accuracy']})" \
            if t["seconds_to_demo_accuracy"] is not None else "not reached"
        lines.append(f"| {name} | {t['input']['height']}x{t['input']['width']} | {t['epochs']} | "
                     f"{t['images_per_s']} | {to} | {t['test_accuracy']:.4f} |")
    lines += ["", "## Quantization (`linewatch convert`'s comparison; invoke of one frame, LiteRT with XNNPACK)", "",
              "![quantization](quantization.png)", "",
              *[f"The int8 {name} model was rejected by the parity gate ({'; '.join(reasons)}); it is measured "
                "all the same, as `.rejected.tflite`." for name, reasons in results["rejected_by_gate"].items()],
              "", "| model | format | size, KiB | invoke p50 / p99, 1 thread, ms | invoke p50 / p99, all cores, ms "
              "| test accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    for name, rows in results["quantization"].items():
        for row in rows:
            threads = [k for k in row["latency_ms"] if k != "1_thread"]
            many = row["latency_ms"][threads[0]] if threads else row["latency_ms"]["1_thread"]
            lines.append(f"| {name} | {row['quantization']} | {row['bytes'] / 1024:.0f} | "
                         f"{row['latency_ms']['1_thread']['p50']} / {row['latency_ms']['1_thread']['p99']} | "
                         f"{many['p50']} / {many['p99']} | {row['accuracy']:.4f} |")
    lines += ["", "## The device loop (`linewatch bench MODEL --source DIR --threads N --json`)", "",
              "![pipeline](pipeline.png)", "",
              "bare: `invoke()` on frames prepared beforehand; pipeline: the daemon's, from the decoded frame to "
              "the result's JSON bytes; serial: resize, invoke and JSON in turn on one thread, as a tutorial "
              "writes it. Cores busy: the pipeline's CPU (every thread's) over its run's time, a share of all the "
              "cores; near 1, no core ever waits, and only less CPU a frame can make it faster. CPU outside invoke: "
              "what the pipeline's threads spent outside their `invoke()` calls, read from each thread's own clock; "
              "its parts are each step timed alone, and the rest is what running among threads adds. After idling: "
              "the same steps on one thread, a block at a time, the thread idling before each block as long as the "
              "interpreter takes for it, as the pipeline's threads idle while it works (what this host charges a "
              "thread that slept). "
              "Live: the pipeline fed as a camera at half the bare loop's rate (held: the rate it kept; a replayed "
              "camera that cannot deliver on time falls behind rather than dropping). The daemon's spool (SQLite: "
              "each result stored until the broker acknowledges it, then forgotten) is timed apart, a block of "
              "frames in one transaction as the daemon does, and a message at a time as it did before.", "",
              "| model | threads | bare, frames/s | pipeline | ratio | cores busy | serial | ratio | frames a call | "
              "CPU outside invoke, us a frame (share of invoke's) | of which prepare / quantize / results / JSON / "
              "rest | the same steps after idling, us a frame | live: frames at the rate asked (held), dropped | "
              "the daemon's spool besides, us a frame: in blocks (one by one) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["pipeline"]:
        cpu = r["cpu_us_per_frame"]
        parts = " / ".join(str(cpu["outside_parts"][k]) for k in ("prepare", "quantize", "predictions", "json",
                                                                  "rest"))
        lines.append(f"| {r['name']} | {r['threads']} | {r['bare_fps']:,.0f} | {r['pipeline_fps']:,.0f} | "
                     f"**{r['ratio']}** | {r['cores_busy']} | {r['serial_fps']:,.0f} | {r['serial_ratio']} | "
                     f"{r['frames_per_call']} | "
                     f"{cpu['outside_invoke']} ({cpu['outside_share_of_invoke']:.0%}) | {parts} | "
                     f"{cpu['steps_after_idle']} | "
                     f"{r['live']['frames']} at {r['live']['fps']:,.0f}/s ({r['live']['held_fps']:,.0f}), "
                     f"{r['live']['dropped']} dropped | "
                     f"{r['spool_us_per_frame']['in_blocks']} ({r['spool_us_per_frame']['one_by_one']}) |")
    small_1, cnn_1 = by_name_1["small"], by_name_1["cnn"]
    prepare_us, invoke_us = 1000 * cnn_1["stage_ms_p50"]["preprocess"], 1e6 / cnn_1["bare_fps"]
    framed_1 = by_name_1[framed]
    rest = framed_1["cpu_us_per_frame"]["outside_parts"]
    alone_us = sum(v for k, v in rest.items() if k != "rest")
    lines += ["", "What limits the ratio on this host:", "",
              f"- At {cores} threads the interpreter takes every core, so whatever else the pipeline does (resize, "
              "quantize, JSON) is taken from it: the ratio can only be invoke's CPU over the total. Preparing a frame "
              f"of the line (160x120 to 128x96, area averaging as in training) takes {prepare_us:.0f} us, against "
              f"{invoke_us:.0f} us for the default CNN's invoke at 1 thread. A Raspberry Pi 4 or 5 has 4 cores and "
              "runs 3 interpreter threads by default, leaving one to capture and MQTT: the 1-thread rows are the "
              "ones that compare.",
              f"- Fed frames at its own size ({framed}), as a Pi camera stream set to the model's size gives them "
              "(`source.camera_size`; the ISP scales for free), the pipeline has nothing to resize: preparing is "
              f"{rest['prepare']} us (colour order only), quantizing {rest['quantize']} us. What is left is Python a "
              f"frame: the result objects ({rest['predictions']} us), the result's JSON ({rest['json']} us) and "
              f"{rest['rest']} us that running among threads adds: hand-offs, per-frame bookkeeping, and threads "
              "woken from sleep. Part of it is this host's price for sleeping rather than the code's: the same "
              "steps, timed on one thread idling between blocks as the pipeline's threads do, took "
              f"{framed_1['cpu_us_per_frame']['steps_after_idle']} us a frame against {alone_us:.1f} us back to "
              f"back ({framed_1['cpu_us_per_frame']['steps_after_idle'] / alone_us:.1f} times; a virtual machine's "
              "idle vCPU comes back with cold caches). So capture prepares several blocks a wake-up, and results go "
              "to the publish thread 32 frames at a time when nobody waits for them.",
              f"- With a core left (1 thread), the pipeline's Python work runs beside `invoke()` on the other core, "
              "and only the inference thread's own share (taking a block, the result objects) slows the interpreter. "
              f"The small 32x32 CNN invokes in {1e6 / small_1['bare_fps']:.0f} us, about as long as the Python a "
              f"frame needs ({small_1['cpu_us_per_frame']['outside_invoke']} us of CPU outside invoke: preparing, "
              "the result object, its JSON), and Python runs one thread at a time; what lets the pipeline keep up "
              "at all is that capture hands it blocks of frames, one interpreter call each "
              f"({small_1['frames_per_call']} frames a call here, at most 32).",
              "- Each loop runs for at least half a second, the frames replayed as often as that takes: the "
              "pipeline starts its threads, fills and drains once a run, which the daemon pays once a start "
              "(measured as its cold start below), and a run of 300 frames of the small model (5 ms) would count "
              "it as a cost of every frame.",
              "- The serial loop is what the pipeline replaces: it pays every step in turn on one core.",
              f"- The whole daemon on a folder ({lat['throughput']['fps']:,.0f} frames/s) also decodes each PNG, "
              "spools its result and publishes it, and mosquitto takes its share of the same cores: a ceiling for "
              "batch work, far above a camera's 30 to 120 frames/s.",
              "", f"Preparing one frame for the default CNN ({results['prepare_us'][0]['model']}: resize and colour "
              "order, one core), by the camera's frame size; `source.camera_size` (or a region of interest) chooses "
              "it. Area averaging, as in training, is cheap where the frame is a whole multiple of the model's input "
              "on both axes (256x192 and 640x480 are 2 and 5 times 128x96); any other ratio takes OpenCV's general "
              "path, several times slower (320x240 is 2.5 times, 1280x720 7.5 times 96 high).", "",
              "| frame | " + " | ".join(row["frame"] for row in results["prepare_us"]) + " |",
              "| --- |" + " --- |" * len(results["prepare_us"]),
              "| us a frame | " + " | ".join(str(row["us"]) for row in results["prepare_us"]) + " |"]
    lines += ["", "## The daemon through a loopback mosquitto", "", "![latency](latency.png)", "",
              f"- {lat['frames']} conveyor frames at {lat['fps']} frames/s, QoS 1 through the spool, {lat['received']} "
              f"received: capture to subscriber p50 **{lat['p50_ms']} ms**, p99 **{lat['p99_ms']} ms** (invoke p99 of "
              f"the model alone: {cnn_q['int8']['latency_ms'][next(iter(cnn_q['int8']['latency_ms']))]['p99']} ms "
              "at 1 thread).",
              "- Where it goes, from the daemon's own stage timings (p50 / p99, ms): "
              + ", ".join(f"{stage} {t['p50']} / {t['p99']}" for stage, t in lat["stages_ms"].items()
                          if stage != "capture")
              + f". Invoke here is a frame every {1000 / lat['fps']:.1f} ms, each after the interpreter idled, not "
              "back to back as in the model-alone figure. The rest is hand-offs: a result crosses five (capture to "
              "inference to publish, paho's network thread, mosquitto, the subscriber's network thread), and on "
              f"this host a thread woken after idling as long takes {lat['wake_us']['p50']} us to run (p99 "
              f"{lat['wake_us']['p99']} us).",
              f"- Cold start, process start to first result: {lat['cold_start_s']} s (median of "
              f"{', '.join(str(c) for c in lat['cold_starts_s'])} s); peak resident memory "
              f"{lat['daemon']['max_rss_mb']} MB; importing the edge modules {results['import_s']} s "
              f"({results['import_python']}).",
              "", "## Published figures, not measured here", "", reference.strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    work, out = args.work.resolve(), args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1

    step(1, "data: the demo's synthetic line (5 x 300) and rendered digits (10 x 200)")
    if not (work / "line").is_dir():
        linewatch("demo-data", str(work / "line"), "--per-class", "300", "--seed", "1")
    if not (work / "digits").is_dir():
        glyphs(work / "digits", seed=0, per_class=200)
    step(2, "training the default CNN on the line (at most 30 epochs, as the demo)")
    training = {"cnn": train("cnn", work / "line", work, "--epochs", "30")}
    step(3, "training MobileNetV2 (alpha 0.35) on the line (at most 30 epochs or 3 minutes)")
    training["mobilenetv2"] = train("mobilenetv2", work / "line", work, "--architecture", "mobilenetv2",
                                    "--width", "0.35", "--epochs", "30", "--minutes", "3")
    step(4, "training the small CNN on 32x32 digits (at most 30 epochs)")
    training["small"] = train("small", work / "digits", work, "--size", "32", "--epochs", "30")
    step(5, "converting: float32, float16, dynamic and int8 for cnn and mobilenetv2; int8 for small")
    converted = {name: convert(name, work, compare=name != "small") for name in ("cnn", "mobilenetv2", "small")}
    quantization = {name: converted[name]["comparison"] for name in ("cnn", "mobilenetv2")}
    gate = {name: c["rejected_by_gate"] for name, c in converted.items() if c["rejected_by_gate"]}
    step(6, f"the device loop: pipeline, bare and serial loops, 3 models at 1 and {cores} threads (and the CNN fed "
            "frames at its own size)")
    pipeline = []
    framed, size = at_model_size(work / "line", converted["cnn"]["path"], work)
    mobile_framed, mobile_size = at_model_size(work / "line", converted["mobilenetv2"]["path"], work)
    for name, model, source in (("cnn", "cnn", work / "line"), (f"cnn, {size} frames", "cnn", framed),
                                ("mobilenetv2", "mobilenetv2", work / "line"),
                                (f"mobilenetv2, {mobile_size} frames", "mobilenetv2", mobile_framed),
                                ("small", "small", work / "digits")):
        for threads in sorted({1, cores}):
            row = device_loop(converted[model]["path"], source, threads)
            pipeline.append({"name": name, **row})
            print(f"  {name} at {threads} thread(s): pipeline {row['ratio']} of bare, serial {row['serial_ratio']}",
                  flush=True)
    prepare_us = prepare_costs(next((work / "line" / "ok").glob("*.jpg")), converted["cnn"]["path"])
    step(7, "the daemon through a loopback mosquitto: latency, cold start, memory")
    daemon = daemon_latency(str(work / "cnn.tflite"), work, framed)
    step(8, "import time of the edge modules")
    python = EDGE_PYTHON if EDGE_PYTHON.is_file() else Path(sys.executable)
    results = {
        "date": date.today().isoformat(),
        "host": {"cores": cores, "machine": platform.machine(), "processor": processor(),
                 "python": platform.python_version()},
        "training": training, "quantization": quantization, "rejected_by_gate": gate, "pipeline": pipeline,
        "prepare_us": prepare_us, "daemon": daemon,
        "import_s": import_seconds(python),
        "import_python": "device venv, no TensorFlow" if python == EDGE_PYTHON else "this venv",
        "seconds": round(time.monotonic() - _started, 1),
    }
    step(9, f"writing {out / 'results.md'}, results.json and the plots")
    out.mkdir(parents=True, exist_ok=True)
    plots(results, out)
    stored = {**results, "daemon": {k: v for k, v in daemon.items() if k != "latencies_ms"}}
    (out / "results.json").write_text(json.dumps(stored, indent=2) + "\n")
    reference = (ROOT / "benchmarks" / "reference-figures.md").read_text()
    (out / "results.md").write_text(markdown(results, reference.split("\n", 1)[1]))
    print(f"done in {results['seconds']:.0f} s; run `make docs` to copy the summary into the README", flush=True)
    print("\n".join(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")
                    and "`make bench`" in line), flush=True)


if __name__ == "__main__":
    main()
