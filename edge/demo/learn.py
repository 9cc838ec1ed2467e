"""``linewatch demo --learn``: the line drifts, the devices send what they are unsure of, a better model proves itself.

Three devices run the demo's model on simulated conveyors that drift after a while: the light
dims and turns colder, and a defect nobody trained for (``chip``) appears. The devices send samples
to ``linewatch station``; a scripted labeller labels them through the station's API from the
simulator's truth, as a person would, within a budget; RUN2 is trained ``--from`` RUN1,
converted, run in shadow on one device and promoted by ``deploy --auto`` to all three. Every
step is a public command or the station's API. The summary gives, per phase, the accuracy on
the conveyor against the simulator's truth, the labels spent and each step's time.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from linewatch.edge.comms.mqtt import connect, make_client, parse_broker
from linewatch.edge.demo.brokers import local_broker
from linewatch.edge.demo.demo import RUNTIME_NOTICES, _linewatch, train_demo_model
from linewatch.edge.errors import LinewatchError
from linewatch.edge.model import artifact
from linewatch.edge.simulator import conveyor_truth
from linewatch.edge.station.client import StationClient

DEVICES = {"learn-1": 11, "learn-2": 12, "learn-3": 13}  # device id -> its conveyor's seed
DRIFT_FROM = 120  # frames on the line as it was, then it drifts
FPS = 8.0
BEFORE_FRAMES = 300  # drifted frames each device classifies with RUN1 before the labelling starts
AFTER_FRAMES = 300  # and with RUN2, once it is promoted
SHADOW_FRAMES = 150  # frames the candidate is compared on before --auto decides
JUDGED = 20  # of the labelling budget: the frames where RUN1 and RUN2 disagree in shadow, labelled to judge RUN2
LABELLER = "demo-labeller"


@dataclass
class Seen:
    """Each device's results: frame id -> (label, model sha256), from a plain subscriber."""

    frames: dict[str, dict[int, tuple[str, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, device: str, body: dict[str, Any]) -> None:
        with self.lock:
            self.frames.setdefault(device, {})[int(body["frame_id"])] = (body["label"], body["model"]["sha256"])

    def count(self, device: str, model: str, after: int) -> int:
        """Frames past ``after`` that ``model`` classified."""
        with self.lock:
            return sum(1 for n, (_, sha) in self.frames.get(device, {}).items() if n > after and sha == model)

    def accuracy(self, model: str, truth: Callable[[str, int], str], after: int = 0,
                 before: int | None = None) -> tuple[float | None, int]:
        """The share of frames after ``after`` (and before ``before``) classified by ``model`` whose label is the
        truth, and how many."""
        with self.lock:
            judged = [label == truth(device, n) for device, frames in self.frames.items()
                      for n, (label, sha) in frames.items()
                      if after < n and (before is None or n < before) and sha == model]
        return (round(sum(judged) / len(judged), 4) if judged else None), len(judged)


class Truth:
    """The simulator's ground truth of each device's conveyor, by frame id."""

    def __init__(self) -> None:
        self._labels: dict[str, list[str]] = {device: [] for device in DEVICES}

    def __call__(self, device: str, frame: int) -> str:
        labels = self._labels[device]
        if frame > len(labels):
            labels += itertools.islice(conveyor_truth(DEVICES[device], drift_from=DRIFT_FROM), len(labels),
                                       frame + 1000)
        return labels[frame - 1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A long-running ``linewatch`` command in the background, its output in ``log``."""
    print(f"$ linewatch {' '.join(args)} &", flush=True)
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "linewatch.edge.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise LinewatchError(f"demo --learn: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)


def _label(station: StationClient, truth: Truth, budget: int, timeout: float = 300.0, reason: str = "",
           stop: threading.Event | None = None) -> dict[str, int]:
    """Label the inbox in the page's order (of one ``reason``, when given) from the simulator's truth, as a person
    told when the line changed would: what came after the drift, ``budget`` photos at most, until ``stop``. Labels
    given, by class."""
    given: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while sum(given.values()) < budget and time.monotonic() < deadline and not (stop and stop.is_set()):
        waiting = [s for s in station.call(f"/api/samples?reason={reason}")["samples"] if s["frame_id"] >= DRIFT_FROM]
        if not waiting:
            time.sleep(1.0)
            continue
        for sample in waiting[:budget - sum(given.values())]:
            label = truth(sample["device_id"], sample["frame_id"])
            try:
                station.call("/api/label", {"device_id": sample["device_id"], "sample_id": sample["sample_id"],
                                            "label": label, "by": LABELLER})
            except urllib.error.HTTPError as exc:  # decided meanwhile (a second labeller): not ours to count
                if exc.code != 409:
                    raise
                continue
            given[label] = given.get(label, 0) + 1
    return given


def run_learn_demo(workdir: str, broker_url: str | None = None, summary_path: str | None = None,
                   per_class: int = 300, epochs: int = 30, budget: int = 150) -> dict[str, Any]:
    """The loop, end to end; the summary (also in ``WORKDIR/learn/summary.json``)."""
    started = time.monotonic()
    steps: dict[str, float] = {}

    def step(name: str, since: float) -> None:
        steps[name] = round(time.monotonic() - since, 1)

    work = Path(workdir)
    learn = work / "learn"
    shutil.rmtree(learn, ignore_errors=True)
    learn.mkdir(parents=True)
    t = time.monotonic()
    model1 = work / "model.tflite"
    if not model1.is_file():
        train_demo_model(work, per_class, epochs)
    run1, data = work / "run", learn / "data"
    shutil.copytree(work / "data", data)  # the station labels into a copy: the demo's own data stays as it was
    step("train RUN1", t)

    broker = None
    if broker_url is None:
        broker = local_broker(learn / "broker")
        broker.start()
        broker_url, protocol = broker.url, broker.protocol
    else:
        protocol = "5"
    token = secrets.token_urlsafe(16)
    port = _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    seen, truth = Seen(), Truth()
    listener = make_client(f"linewatch-learn-{os.getpid()}", protocol)
    try:
        procs.append(_start(["station", "--broker", broker_url, "--protocol", protocol, "--data", str(data),
                             "--http", f"127.0.0.1:{port}"], learn / "station.log",
                            env={"LINEWATCH_STATION_TOKEN": token}))
        station = StationClient(f"http://127.0.0.1:{port}", token)
        _wait(station.answers, 60, "the station's page answering")
        _listen(listener, broker_url, seen)
        for device, seed in DEVICES.items():
            state = learn / device
            state.mkdir()
            shutil.copy(model1, state / "model.tflite")  # each device's own copy: updates swap it in place
            procs.append(_start(["run", "--model", str(state / "model.tflite"), "--source",
                                 f"conveyor:{seed}:drift={DRIFT_FROM}", "--fps", str(FPS), "--device-id", device,
                                 "--broker", broker_url, "--protocol", protocol, "--state-dir", str(state),
                                 "--samples", "--set", "samples.random_every=10", "--set", "samples.below=0.9",
                                 "--set", "samples.per_hour=1800", "--stats-interval", "2"],
                                learn / f"{device}.log"))
        sha1 = _sha(model1)
        t = time.monotonic()
        _wait(lambda: all(seen.count(d, sha1, DRIFT_FROM) >= BEFORE_FRAMES for d in DEVICES), 600,
              f"{BEFORE_FRAMES} drifted frames on each device")
        before, before_frames = seen.accuracy(sha1, truth, after=DRIFT_FROM)
        undrifted, _ = seen.accuracy(sha1, truth, before=DRIFT_FROM)
        step("the drifted line, RUN1", t)
        print(f"\nthe line drifted at frame {DRIFT_FROM}: RUN1 is right on {before} of {before_frames} drifted frames "
              f"({undrifted} before the drift)", flush=True)

        t = time.monotonic()
        given = _label(station, truth, budget - JUDGED)
        step("labelling", t)
        print(f"labelled {sum(given.values())} photos through the station's API: {given}", flush=True)

        t = time.monotonic()
        run2, model2 = learn / "run2", learn / "model2.tflite"
        _linewatch("train", str(data), "-o", str(run2), "--from", str(run1), "--epochs", str(epochs))
        step("train RUN2 --from RUN1", t)
        t = time.monotonic()
        _linewatch("convert", str(run2), "-o", str(model2))
        step("convert RUN2", t)

        t = time.monotonic()
        first, *rest = DEVICES
        done = threading.Event()
        judged: dict[str, int] = {}
        judging = threading.Thread(target=lambda: judged.update(_label(
            station, truth, budget - sum(given.values()), timeout=900, reason="disagreement", stop=done)))
        judging.start()
        try:
            verdicts = _deploy_auto(model2, broker_url, protocol, first, rest, station.url, token)
        finally:
            done.set()
            judging.join(60)
        for label, count in judged.items():
            given[label] = given.get(label, 0) + count
        step("shadow and promotion", t)
        sha2 = _sha(model2)
        promoted = bool(verdicts.get(first, {}).get("promoted"))
        after = after_frames = None
        if promoted:
            t = time.monotonic()
            marks = {d: max(seen.frames.get(d, {}), default=0) for d in DEVICES}
            _wait(lambda: all(seen.count(d, sha2, marks[d]) >= AFTER_FRAMES for d in DEVICES), 600,
                  f"{AFTER_FRAMES} frames of RUN2 on each device")
            after, after_frames = seen.accuracy(sha2, truth, after=DRIFT_FROM)
            step("the drifted line, RUN2", t)
        stats = station.call("/api/stats")
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        listener.disconnect()
        listener.loop_stop()
        if broker is not None:
            broker.stop()
    verdict = verdicts.get(first, {})
    shadow = verdict.get("shadow") or {}
    summary = {
        "accuracy_undrifted": undrifted,
        "accuracy_before": before, "frames_before": before_frames,
        "accuracy_after": after, "frames_after": after_frames,
        "labels": sum(given.values()), "labels_by_class": given,
        "samples_received": sum(v for k, v in stats["states"].items()),
        "promotion": {"promoted": promoted, "reason": verdict.get("reason"),
                      "devices": sorted(DEVICES) if promoted else []},
        "shadow": {"device": first, "frames": shadow.get("frames"), "agreement": shadow.get("agreement"),
                   "defect_rate": shadow.get("defect_rate"), "confusion": shadow.get("confusion")},
        "steps_s": steps, "demo_seconds": round(time.monotonic() - started, 1), "artifacts": str(learn.resolve()),
    }
    text = json.dumps(summary, indent=2)
    (learn / "summary.json").write_text(text)
    if summary_path:
        Path(summary_path).write_text(text)
    _print(summary)
    return summary


def _listen(client: mqtt.Client, url: str, seen: Seen) -> None:
    """A plain subscriber to every device's results."""
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        seen.add(msg.topic.split("/")[1], json.loads(msg.payload))

    def on_connect(c: mqtt.Client, *args: Any) -> None:
        c.subscribe("linewatch/+/result", qos=1)  # again on every reconnect

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = on_message
    connect(client, parse_broker(url))
    if not subscribed.wait(15):
        raise LinewatchError(f"demo --learn: cannot subscribe at {url}")


def _deploy_auto(model: Path, url: str, protocol: str, first: str, rest: list[str], station: str,
                 token: str) -> dict[str, Any]:
    """``deploy --shadow --auto`` on ``first``, then to ``rest``: the verdicts.

    RUN2 is meant to change RUN1's mind where the line drifted, so agreement between the two says
    little: it is judged on the frames where they disagree, as labelled at the station.
    """
    args = ["deploy", str(model), "--broker", url, "--protocol", protocol, "--device-id", first, "--shadow", "--auto",
            "--min-frames", str(SHADOW_FRAMES), "--min-agreement", "0", "--max-defect-rate-change", "1",
            "--labelled-from", station, "--min-labelled", str(JUDGED), "--json",
            *itertools.chain.from_iterable(("--then", d) for d in rest)]
    print(f"\n$ linewatch {' '.join(args)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "linewatch.edge.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "LINEWATCH_STATION_TOKEN": token})
    print("".join(line for line in proc.stderr.splitlines(True) if not line.startswith(RUNTIME_NOTICES)), end="",
          file=sys.stderr, flush=True)
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _sha(model: Path) -> str:
    return artifact.load(model).sha256


def _print(summary: dict[str, Any]) -> None:
    steps = ", ".join(f"{name} {seconds} s" for name, seconds in summary["steps_s"].items())
    shadow = summary["shadow"]
    print(f"""
linewatch demo --learn summary
  the line drifted   the light dimmer and colder, and a defect never seen (chip)
  before             RUN1: {summary['accuracy_before']} right on {summary['frames_before']} drifted frames \
({summary['accuracy_undrifted']} before the drift)
  labelled           {summary['labels']} photos through the station ({summary['samples_received']} samples received)
  shadow             {shadow['frames']} frames on {shadow['device']}, agreement {shadow['agreement']}
  promotion          {summary['promotion']['reason']}
  after              RUN2: {summary['accuracy_after']} right on {summary['frames_after']} drifted frames
  steps              {steps}
  time               {summary['demo_seconds']} s; artifacts in {summary['artifacts']}""", flush=True)
