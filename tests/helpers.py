"""Helpers the tests share: the real ``linewatch`` command line, a daemon process, a plain subscriber.

The subscriber is a bare paho client, independent of linewatch's own monitor, so it can judge it.
Every daemon the tests start gets a state folder of its own: nothing is written to the user's.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       # a daemon that is not given --state-dir must not write into the user's own state folder
       "XDG_STATE_HOME": tempfile.mkdtemp(prefix="linewatch-xdg-state-")}
CLI = [sys.executable, "-m", "linewatch.edge.cli"]


def linewatch(*args: str, check: bool = True, timeout: float = 600, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run the real ``linewatch`` command line in its own process (a daemon gets a fresh state dir)."""
    if "run" in args[:3] and "--state-dir" not in args:
        args = (*args, "--state-dir", tempfile.mkdtemp(prefix="linewatch-state-"))
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV,
                          **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"linewatch {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def start_daemon(model: Path, url: str, device: str, state: Path, *extra: str, source: str = "conveyor:4",
                 fps: float | None = 25, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``linewatch run`` in the background on a source paced at ``fps`` (None: its full rate), as systemd would
    start it (``env`` added)."""
    pace = ("--fps", str(fps)) if fps else ()
    return subprocess.Popen(
        [*CLI, "run", "--model", str(model), "--source", source, *pace, "--device-id", device,
         "--broker", url, "--state-dir", str(state), *extra],
        cwd=ROOT, env={**ENV, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_daemon(proc: subprocess.Popen) -> tuple[str, str]:
    """SIGTERM, as systemd stops it; the daemon must exit 0. Returns (stdout, stderr)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return out, err


def summary(stdout: str) -> dict[str, Any]:
    """The exit summary ``linewatch run --json`` prints last."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def _spool_value(state: Path, device: str, sql: str) -> int:
    """One number from a (running) daemon's spool, read without disturbing it; 0 before it exists."""
    path = state / f"spool-{device}.sqlite"
    if not path.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(sql).fetchone()
    except sqlite3.OperationalError:  # created a moment ago, its tables not yet
        return 0
    return int(row[0]) if row else 0


def spool_backlog(state: Path, device: str) -> int:
    """Messages a (running) daemon holds for the broker."""
    return _spool_value(state, device, "SELECT COUNT(*) FROM messages")


def spooled_results(state: Path, device: str) -> int:
    """The last result ``seq`` a (running) daemon has handed out: how many results it has made."""
    return _spool_value(state, device, "SELECT value FROM counters WHERE name = 'seq:result'")


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return condition()


class FakeClock:
    """A ``Clock`` that moves only when a test advances it: timed parts tested without sleeping."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_780_000_000.0) -> None:
        self._monotonic, self._wall = monotonic, wall

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += seconds


@dataclass(frozen=True)
class Message:
    topic: str
    payload: Any
    retain: bool
    properties: Properties | None = None


class Collector:
    """Subscribes to ``topic`` on ``url`` and keeps every message, decoded from JSON where it can."""

    def __init__(self, url: str, topic: str = "linewatch/#", protocol: int = mqtt.MQTTv5,
                 session: str | None = None, user: tuple[str, str] | None = None, ca_file: Path | None = None) -> None:
        """``session`` names a persistent session: the broker queues QoS 1 messages while we are away; ``user`` is
        (name, password); ``ca_file`` checks an mqtts:// broker."""
        import threading

        parts = urlsplit(url)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session or "", protocol=protocol)
        if user:
            self.client.username_pw_set(*user)
        if parts.scheme == "mqtts":
            self.client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        kwargs: dict[str, Any] = {}
        if session:  # MQTT 5 only: a session that outlives the connection
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, **kwargs)
        self.client.loop_start()
        assert self._subscribed.wait(10), "test subscriber could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            payload: Any = json.loads(msg.payload)
        except ValueError:
            payload = msg.payload
        with self._cond:
            self.messages.append(Message(msg.topic, payload, bool(msg.retain), getattr(msg, "properties", None)))
            self._cond.notify_all()

    def on(self, suffix: str) -> list[Any]:
        with self._cond:
            return [m.payload for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
