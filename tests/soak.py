"""``make soak``: a bounded run that tries to break the daemon, and one table that says whether anything was lost.

A real mosquitto (persistence on), two devices and an independent subscriber with a persistent
session (``SeqLedger``) that accounts for every ``seq`` per device and topic:

- ``soak-line`` classifies the simulated conveyor at its full rate;
- ``soak-file`` plays a looped video file at 25 fps (the source that vanishes and comes back).

In this order, at moments drawn from ``--seed``:

1. power-cut boot order: both devices start with no broker; mosquitto starts 20 s later;
2. ``soak-line`` is killed (``kill -9``) twice while messages are in flight to the live broker,
   and started again after the unit's ``RestartSec``, as systemd would;
3. the broker is killed (SIGKILL) and restarted 5 times, once after 30 s away;
4. a network partition: the broker sits in a network namespace made here, and the link is cut
   (half-open TCP: only MQTT keepalive can tell) for 25 s, then healed; skipped where ``ip netns``
   cannot be used;
5. the disk of ``soak-line``'s state directory (a small tmpfs) fills up for 20 s and is freed;
   skipped where no tmpfs can be mounted;
6. ``soak-file``'s video file vanishes for 10 s and comes back;
7. 10,000 bad commands: binary, truncated, oversized, deeply nested, wrongly typed, unknown,
   OTA chunks of no transfer, and valid commands on another device's topics;
8. both devices stop (SIGTERM), and the ledger must hold every seq each of them handed out.

Pass: 0 lost (beyond the drops the device counted because the disk was full, reported apart),
0 crashes (an exit nobody asked for, or a traceback in a log), every command on a device's own
topics answered. ``--record`` writes the table into docs/reliability.md (``make soak`` does).

    .venv-edge/bin/python tests/soak.py [--seed N] [--record] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from linewatch.edge import simulator  # noqa: E402
from linewatch.edge.demo.brokers import MosquittoBroker, free_port  # noqa: E402
from tests.faults import Partition, SeqLedger, SmallDisk, bad_commands  # noqa: E402
from tests.helpers import CLI, ENV, FIXTURES  # noqa: E402

MODEL = FIXTURES / "tiny.tflite"
UNIT = ROOT / "systemd" / "linewatch.service"
RELIABILITY = ROOT / "docs" / "reliability.md"
TABLE_BLOCK = re.compile(r"(<!-- soak:begin -->\n).*?(<!-- soak:end -->)", re.S)
KEEPALIVE = 10  # seconds; a half-open link is noticed within two of them
BROKER_CONFIG = ("max_queued_messages 0",)  # a persistent session queues everything while its subscriber is away
LINE, FILE, GHOST = "soak-line", "soak-file", "soak-ghost"
STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {text}", flush=True)


def restart_sec() -> float:
    """How long systemd waits before restarting the unit after a crash."""
    found = re.search(r"^RestartSec=(\d+(?:\.\d+)?)", UNIT.read_text(), re.M)
    return float(found.group(1)) if found else 0.1


@dataclass
class Device:
    """One device, ``linewatch run`` in its own process, restarted as systemd would."""

    name: str
    args: list[str]
    state: Path
    logs: Path
    instances: int = 0
    crashes: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    rss: list[tuple[float, int, float]] = field(default_factory=list)  # (time, instance, MB)
    proc: subprocess.Popen | None = None
    _log: Any = None

    def start(self) -> None:
        self.instances += 1
        self._log = (self.logs / f"{self.name}-{self.instances}.log").open("w")
        self.proc = subprocess.Popen([*CLI, "run", *self.args, "--device-id", self.name, "--state-dir",
                                      str(self.state), "--json"], cwd=ROOT, env=ENV, stdout=self._log,
                                     stderr=subprocess.STDOUT, text=True)

    def check_alive(self) -> None:
        """An exit nobody asked for is a crash."""
        if self.proc is not None and self.proc.poll() is not None:
            self.crashes.append(f"{self.name} instance {self.instances} exited {self.proc.returncode} by itself")
            self.proc = None
            self.start()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> dict[str, Any]:
        """SIGTERM, as systemd stops it: it must exit 0 and print its summary."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self.proc = None
        self._log.close()
        if code != 0:
            self.crashes.append(f"{self.name} exited {code} on SIGTERM")
            return {}
        last = (self.logs / f"{self.name}-{self.instances}.log").read_text().strip().splitlines()[-1]
        summary: dict[str, Any] = json.loads(last)
        return summary

    def sample_rss(self) -> None:
        if self.proc is None:
            return
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M))
        if "VmRSS" in values:
            self.rss.append((time.monotonic(), self.instances, int(values["VmRSS"]) / 1024))
            self.peak_rss_mb = max(self.peak_rss_mb, int(values.get("VmHWM", 0)) / 1024)

    def rss_path(self, marks: list[float], settle_s: float = 60.0) -> str:
        """The last instance's RSS ``settle_s`` after its start, at each of ``marks`` (monotonic times), and at the
        end, as ``a → b → c`` MB."""
        last = [(t, mb) for t, instance, mb in self.rss if instance == self.instances]
        if not last:
            return "n/a"
        points = [last[0][0] + settle_s, *marks, last[-1][0]]
        return " → ".join(f"{next((mb for t, mb in last if t >= point), last[-1][1]):.0f}" for point in points)

    def spool_counter(self, name: str) -> int:
        path = self.state / f"spool-{self.name}.sqlite"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def backlog(self) -> int:
        path = self.state / f"spool-{self.name}.sqlite"
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                return int(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
        except sqlite3.Error:
            return 0

    def broker_state(self) -> str:
        try:
            return str(json.loads((self.state / f"status-{self.name}.json").read_text())["broker"])
        except (OSError, ValueError, KeyError):
            return "unknown"

    def tracebacks(self) -> int:
        return sum(path.read_text(errors="replace").count("Traceback") for path in self.logs.glob(f"{self.name}-*.log"))


class Soak:
    def __init__(self, seed: int, work: Path) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.work = work
        self.figures: dict[str, Any] = {"seed": seed, "skipped": []}
        self.broker_restarts = 0
        self.daemon_restarts = 0
        self.bad_inputs = 0
        self.flood_started = float("inf")
        self._sampling = True

    # --- the parts ----------------------------------------------------------------------------

    def setup(self, partition: Partition | None, disk: SmallDisk | None) -> None:
        host = partition.ns_ip if partition else "127.0.0.1"
        self.broker = MosquittoBroker(port=free_port(), workdir=self.work / "broker", persistence=True, host=host,
                                      launcher=partition.launcher if partition else (), extra=BROKER_CONFIG)
        self.partition, self.disk = partition, disk
        video = self.work / "belt.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, simulator.FRAME_SIZE)
        for frame, _ in zip(simulator.conveyor(seed=5), range(150)):
            writer.write(frame.image)
        writer.release()
        self.video = video
        common = ["--model", str(MODEL), "--broker", self.broker.url, "--stats-interval", "2",
                  "--set", f"mqtt.keepalive={KEEPALIVE}", "--set", "mqtt.reconnect_max_s=2"]
        logs = self.work / "logs"
        logs.mkdir()
        line_state = disk.mount / "state" if disk else self.work / "line-state"
        self.line = Device(LINE, [*common, "--source", "conveyor:7"], line_state, logs)
        self.file = Device(FILE, [*common, "--source", str(video), "--loop", "--fps", "25"], self.work / "file-state",
                           logs)
        self.devices = (self.line, self.file)

    def _sample(self) -> None:
        while self._sampling:
            for device in self.devices:
                device.sample_rss()
            time.sleep(1.0)

    def watch(self, seconds: float) -> None:
        """Let the run go on, noticing any device that exits by itself."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for device in self.devices:
                device.check_alive()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    # --- the faults ---------------------------------------------------------------------------

    def boot_without_broker(self) -> None:
        self.broker.start()  # once, to give the ledger its persistent session, as a plant's subscriber has
        self.ledger = SeqLedger(self.broker.url, session="soak-ledger")
        assert self.ledger.wait_subscribed(), "the ledger could not subscribe"
        self.broker.stop()
        say("power-cut boot: devices start, the broker 20 s later")
        for device in self.devices:
            device.start()
        threading.Thread(target=self._sample, name="rss", daemon=True).start()
        self.watch(20)
        self.broker.start()
        self.watch(20)
        say(f"broker up; {self.ledger.received(LINE)} results of {LINE} received so far")

    def broker_kills(self) -> None:
        downs = [30.0] + [self.rng.uniform(1, 6) for _ in range(4)]
        self.rng.shuffle(downs)
        for down in downs:
            self.watch(self.rng.uniform(8, 20))
            self.broker.kill()
            say(f"broker killed (SIGKILL), away {down:.1f} s")
            self.watch(down)
            self.broker.start()
            self.broker_restarts += 1
        self.watch(10)

    def daemon_kills(self) -> None:
        in_flight = []
        for _ in range(2):
            self.watch(self.rng.uniform(8, 15))
            deadline = time.monotonic() + 10
            while self.line.backlog() == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            in_flight.append(self.line.backlog())
            self.line.kill9()
            say(f"{LINE} killed (kill -9) with {in_flight[-1]} message(s) not yet acknowledged; systemd restarts "
                f"it in {restart_sec():g} s")
            self.watch(restart_sec())
            self.line.start()
            self.daemon_restarts += 1
        self.figures["in_flight_at_kill"] = in_flight
        self.watch(10)

    def partition_cut(self) -> None:
        if self.partition is None:
            return
        self.partition.cut()
        cut = time.monotonic()
        say(f"network partition: the link to the broker is cut (half-open; keepalive {KEEPALIVE} s)")
        noticed = None
        while time.monotonic() - cut < 25:
            if noticed is None and self.line.broker_state() != "connected":
                noticed = time.monotonic() - cut
            self.watch(0.2)
        self.partition.heal()
        healed = time.monotonic()
        while self.line.broker_state() != "connected" and time.monotonic() - healed < 60:
            self.watch(0.2)
        self.figures["partition_noticed_s"] = round(noticed, 1) if noticed is not None else None
        self.figures["partition_reconnected_s"] = round(time.monotonic() - healed, 1)
        say(f"healed; the device noticed the cut after {self.figures['partition_noticed_s']} s and was back "
            f"{self.figures['partition_reconnected_s']} s after the heal")
        self.watch(10)

    def disk_full(self) -> None:
        if self.disk is None:
            return
        before = self.ledger.received(LINE)
        self.disk.fill()
        say("the state directory's disk is full")
        self.watch(20)
        self.disk.free()
        say(f"space freed; {self.ledger.received(LINE) - before} results arrived meanwhile")
        self.watch(10)

    def source_vanishes(self) -> None:
        away = self.video.with_suffix(".away")
        self.video.rename(away)
        before = self.ledger.received(FILE)
        say(f"{FILE}'s video file vanished")
        self.watch(10)
        stalled = self.ledger.received(FILE) - before
        away.rename(self.video)
        back = time.monotonic()
        while self.ledger.received(FILE) <= before + stalled and time.monotonic() - back < 60:
            self.watch(0.2)
        self.figures["source_back_s"] = round(time.monotonic() - back, 1)
        say(f"the file is back; results resumed after {self.figures['source_back_s']} s")
        self.watch(5)

    def bad_input(self, count: int) -> None:
        sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-vandal", protocol=mqtt.MQTTv5)
        sender.connect(self.broker.host, self.broker.port)
        sender.loop_start()
        answered_before = self.ledger.replies.get(LINE, 0)
        expected = 0
        kinds: dict[str, int] = {}
        say(f"{count} bad commands")
        self.flood_started = time.monotonic()
        for i, (topic, payload, kind) in zip(range(count), bad_commands(self.rng, LINE, GHOST)):
            info = sender.publish(topic, payload, qos=1)
            kinds[kind] = kinds.get(kind, 0) + 1
            expected += kind not in ("chunk", "other-device")
            if i % 200 == 199:
                info.wait_for_publish(30)
                self.watch(0)
        deadline = time.monotonic() + 120
        while self.ledger.replies.get(LINE, 0) - answered_before < expected and time.monotonic() < deadline:
            self.watch(0.5)
        flowing = self.ledger.received(LINE)
        self.watch(3)  # and no more than expected
        self.figures["inspecting_after_flood"] = self.ledger.received(LINE) > flowing + 100
        sender.disconnect()
        sender.loop_stop()
        self.bad_inputs = count
        self.figures["bad_inputs_by_kind"] = kinds
        self.figures["replies_expected"] = expected
        self.figures["replies_received"] = self.ledger.replies.get(LINE, 0) - answered_before
        self.figures["ghost_replies"] = self.ledger.replies.get(GHOST, 0)
        self.figures["bad_commands_carried_out"] = self.ledger.accepted.get(LINE, 0)
        say(f"{self.figures['replies_received']} of {expected} error replies received")

    # --- the account --------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        self._sampling = False
        rows = {}
        for device in self.devices:
            rss = device.rss_path([self.flood_started])
            summary = device.stop()
            produced = {topic: device.spool_counter(f"seq:{topic}") for topic in ("result", "event")}
            for topic, upto in produced.items():
                self.ledger.wait_complete(device.name, upto, timeout=60, topic=topic)
            missing = {topic: len(self.ledger.missing(device.name, upto, topic)) for topic, upto in produced.items()}
            dropped = int(summary.get("spool_dropped", 0))  # counted by the device: its disk was full
            rows[device.name] = {
                "results produced": produced["result"], "results received": self.ledger.received(device.name),
                "events produced": produced["event"], "events received": self.ledger.received(device.name, "event"),
                "dropped, counted (disk full)": dropped,
                "lost": max(0, missing["result"] + missing["event"] - dropped),
                "duplicated": self.ledger.duplicates(device.name) + self.ledger.duplicates(device.name, "event"),
                "max delivery delay (s)": round(max(self.ledger.max_delay_s(device.name),
                                                    self.ledger.max_delay_s(device.name, "event")), 1),
                "crashes": len(device.crashes) + device.tracebacks(),
                "peak RSS (MB)": round(device.peak_rss_mb, 1),
                "RSS (MB): 1 min after the last start → before the bad commands → end": rss,
            }
            self.figures.setdefault("crash_details", []).extend(device.crashes)
        self.ledger.close()
        self.figures.update(devices=rows, broker_restarts=self.broker_restarts,
                            daemon_restarts=self.daemon_restarts, bad_inputs=self.bad_inputs)
        return self.figures


def passed(figures: dict[str, Any]) -> list[str]:
    """What failed the pass line; empty when it held."""
    failures = []
    for name, row in figures["devices"].items():
        if row["lost"]:
            failures.append(f"{name}: {row['lost']} lost")
        if row["crashes"]:
            failures.append(f"{name}: {row['crashes']} crash(es)")
    if figures.get("replies_received") != figures.get("replies_expected"):
        failures.append(f"{figures.get('replies_received')} replies to {figures.get('replies_expected')} commands")
    if figures.get("ghost_replies"):
        failures.append("a reply to another device's command")
    if not figures.get("inspecting_after_flood"):
        failures.append(f"{LINE} stopped publishing results after the bad commands")
    if figures.get("bad_commands_carried_out"):
        failures.append(f"{figures['bad_commands_carried_out']} bad command(s) carried out")
    if figures.get("partition_noticed_s") is None and "partition" not in " ".join(figures["skipped"]):
        failures.append("the half-open link was never noticed")
    return failures


def table(figures: dict[str, Any]) -> str:
    names = list(figures["devices"])
    rows = ["| | " + " | ".join(f"`{n}`" for n in names) + " |", "| --- |" + " --- |" * len(names)]
    for key in figures["devices"][names[0]]:
        rows.append(f"| {key} | " + " | ".join(str(figures["devices"][n][key]) for n in names) + " |")
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(figures.get("bad_inputs_by_kind", {}).items()))
    faults = [
        f"broker killed (SIGKILL) and restarted: {figures['broker_restarts']}",
        f"`kill -9` of `{LINE}` with messages in flight, restarted after RestartSec: {figures['daemon_restarts']} "
        f"(in flight at each kill: {', '.join(map(str, figures.get('in_flight_at_kill', [])))})",
        f"half-open partition noticed after {figures.get('partition_noticed_s', 'n/a')} s "
        f"(keepalive {KEEPALIVE} s), reconnected {figures.get('partition_reconnected_s', 'n/a')} s after the heal",
        f"video file vanished 10 s: results resumed {figures.get('source_back_s', 'n/a')} s after it came back",
        f"bad commands: {figures['bad_inputs']} ({kinds}); "
        f"error replies {figures.get('replies_received')} of {figures.get('replies_expected')} expected; "
        f"carried out: {figures.get('bad_commands_carried_out', 0)}; replies for another device: "
        f"{figures.get('ghost_replies', 0)}",
    ] + [f"skipped: {reason}" for reason in figures["skipped"]]
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {line}" for line in faults) + "\n"


def record(figures: dict[str, Any], text: str) -> None:
    block = (f"Run of {time.strftime('%Y-%m-%d')} on {platform.machine()}, {platform.system()} "
             f"{platform.release()}, Python {platform.python_version()}, {figures['cores']} cores; seed "
             f"{figures['seed']}, {figures['seconds']:.0f} s; verdict: **{figures['verdict']}**.\n\n" + text)
    current = RELIABILITY.read_text()
    RELIABILITY.write_text(TABLE_BLOCK.sub(lambda m: m.group(1) + block + m.group(2), current))
    print(f"wrote the table into {RELIABILITY.relative_to(ROOT)} (make docs copies it into the README)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10000)
    parser.add_argument("--bad-inputs", type=int, default=10_000)
    parser.add_argument("--record", action="store_true", help="write the table into docs/reliability.md")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="linewatch-soak-"))
    soak = Soak(args.seed, work)
    say(f"soak, seed {args.seed}, in {work}")
    why_no_partition = Partition.unavailable()
    why_no_disk = SmallDisk.unavailable(work)
    for what, why in (("network partition", why_no_partition), ("full disk", why_no_disk)):
        if why:
            soak.figures["skipped"].append(f"{what}: {why}")
            say(f"skipping the {what}: {why}")
    partition = Partition() if why_no_partition is None else None
    disk = SmallDisk(work / "disk", 256) if why_no_disk is None else None
    try:
        if partition:
            partition.__enter__()
        if disk:
            disk.__enter__()
        soak.setup(partition, disk)
        soak.boot_without_broker()
        soak.daemon_kills()  # early, so the last instance runs long enough to show how its memory goes
        soak.broker_kills()
        soak.partition_cut()
        soak.disk_full()
        soak.source_vanishes()
        soak.bad_input(args.bad_inputs)
        soak.watch(5)
        say("stopping the devices and settling the account")
        figures = soak.finish()
    finally:
        for device in getattr(soak, "devices", ()):
            if device.proc is not None:
                device.proc.kill()
        if hasattr(soak, "broker"):
            soak.broker.stop()
        if disk:
            disk.__exit__()
        if partition:
            partition.__exit__()
    figures["seconds"] = time.monotonic() - STARTED
    figures["cores"] = os.cpu_count()
    failures = passed(figures)
    figures["verdict"] = "pass" if not failures else "FAIL: " + "; ".join(failures)
    text = table(figures)
    print(json.dumps(figures, indent=2) if args.json else "\n" + text)
    print(f"verdict: {figures['verdict']} (logs in {work / 'logs'})")
    if args.record:
        record(figures, text)
    if not failures:
        shutil.rmtree(work / "broker", ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
