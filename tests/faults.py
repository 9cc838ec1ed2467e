"""Faults on demand, shared by ``make soak`` (tests/soak.py) and the fast fault tests (tests/test_faults.py).

- ``SeqLedger``: an independent subscriber with a persistent session that accounts for every
  ``seq`` per device and topic (received, duplicated, missing, delivery delay) and for command replies;
- ``Partition``: the broker's address inside a network namespace the run creates, joined to the
  host by a veth pair; ``cut()`` makes every connection through it half-open (packets vanish, no
  reset), so only MQTT keepalive can notice;
- ``SmallDisk``: a small tmpfs that really fills up;
- ``bad_commands()``: malformed, oversized, binary, deeply nested and wrongly typed commands, and
  valid ones on another device's topics;
- ``rss_mb()``: a process's resident memory, from /proc.

Nothing here leaves the machine: loopback, or the namespace made here.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SEQUENCED = ("result", "event")  # the spooled JSON topics that carry a seq


@dataclass
class Track:
    """What arrived of one device's topic: ``seen[seq]`` counts deliveries of that seq."""

    seen: bytearray
    duplicates: int = 0
    max_delay_s: float = 0.0

    def add(self, seq: int, delay_s: float) -> None:
        if seq >= len(self.seen):
            self.seen.extend(bytes(max(seq + 1 - len(self.seen), len(self.seen))))
        if self.seen[seq]:
            self.duplicates += 1
        self.seen[seq] = min(self.seen[seq] + 1, 255)
        self.max_delay_s = max(self.max_delay_s, delay_s)

    def received(self) -> int:
        return sum(1 for count in self.seen if count)

    def missing(self, upto: int) -> list[int]:
        return [seq for seq in range(1, upto + 1) if seq >= len(self.seen) or not self.seen[seq]]


class SeqLedger:
    """Subscribes to results, events and command replies of every device, with a persistent MQTT 5 session.

    The broker queues QoS 1 messages for it while it is away (broker restarts included, with
    the broker's persistence on), so what it misses is what the device never delivered.
    """

    def __init__(self, url: str, session: str = "linewatch-ledger", prefix: str = "linewatch",
                 keepalive: int = 5) -> None:
        parts = urlsplit(url)
        self.tracks: dict[tuple[str, str], Track] = {}
        self.replies: dict[str, int] = {}  # per device
        self.accepted: dict[str, int] = {}  # replies that say ok: the command was carried out
        self.unparsable = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        topics = [(f"{prefix}/+/{name}", 1) for name in SEQUENCED] + [(f"{prefix}/+/cmd/+/reply", 1)]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session, protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda client, *a: client.subscribe(topics)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 24 * 3600
        self.client.connect_async(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=keepalive,
                                  clean_start=False, properties=props)
        self.client.loop_start()

    def wait_subscribed(self, timeout: float = 20) -> bool:
        return self._subscribed.wait(timeout)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        parts = msg.topic.split("/")
        device = parts[1]
        if parts[-1] == "reply":
            try:
                accepted = json.loads(msg.payload).get("ok") is True
            except (ValueError, AttributeError):
                accepted = False
            with self._lock:
                self.replies[device] = self.replies.get(device, 0) + 1
                self.accepted[device] = self.accepted.get(device, 0) + accepted
            return
        try:
            payload = json.loads(msg.payload)
            seq, ts_ms = int(payload["seq"]), int(payload["ts_ms"])
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.unparsable += 1
            return
        with self._lock:
            self._track(device, parts[-1]).add(seq, max(0.0, now - ts_ms / 1000))

    def _track(self, device: str, topic: str) -> Track:
        return self.tracks.setdefault((device, topic), Track(bytearray(1024)))

    def received(self, device: str, topic: str = "result") -> int:
        """Distinct seqs received."""
        with self._lock:
            return self._track(device, topic).received()

    def duplicates(self, device: str, topic: str = "result") -> int:
        with self._lock:
            return self._track(device, topic).duplicates

    def max_delay_s(self, device: str, topic: str = "result") -> float:
        """The longest time from a frame's capture to its message's arrival here."""
        with self._lock:
            return self._track(device, topic).max_delay_s

    def missing(self, device: str, upto: int, topic: str = "result") -> list[int]:
        with self._lock:
            return self._track(device, topic).missing(upto)

    def wait_complete(self, device: str, upto: int, timeout: float, topic: str = "result") -> bool:
        """Until every seq from 1 to ``upto`` has arrived, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.missing(device, upto, topic):
                return True
            time.sleep(0.2)
        return not self.missing(device, upto, topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


class Partition:
    """A network namespace with the broker's address, joined to the host by a veth pair.

    ``launcher`` runs a program inside it (the broker); ``cut()`` takes the namespace's end of
    the link down, so packets vanish in both directions and no reset is ever sent: every TCP
    connection through it becomes half-open. ``heal()`` brings it back.
    """

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        self.namespace = f"lwsoak{tag}"
        self.host_link, self.ns_link = f"lwh{tag}", f"lwn{tag}"
        subnet = random.randrange(1, 250)
        self.host_ip, self.ns_ip = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
        self.launcher: tuple[str, ...] = ("ip", "netns", "exec", self.namespace)

    @staticmethod
    def unavailable() -> str | None:
        """Why no namespace can be made here, or None when it can."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if not shutil.which("ip"):
            return "ip(8) is not installed (iproute2)"
        probe = f"lwprobe{os.getpid() % 100000}"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            return f"ip netns add failed: {made.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    def __enter__(self) -> Partition:
        _run("ip", "netns", "add", self.namespace)
        try:
            _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
            _run("ip", "link", "set", self.ns_link, "netns", self.namespace)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_link)
            _run("ip", "link", "set", self.host_link, "up")
            _run(*self.launcher, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_link)
            _run(*self.launcher, "ip", "link", "set", "lo", "up")
            self.heal()
        except BaseException:
            self.__exit__()
            raise
        return self

    def cut(self) -> None:
        _run(*self.launcher, "ip", "link", "set", self.ns_link, "down")

    def heal(self) -> None:
        _run(*self.launcher, "ip", "link", "set", self.ns_link, "up")

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


class SmallDisk:
    """A tmpfs of ``size_mb`` at ``mount``: a disk that really fills up (root only)."""

    def __init__(self, mount: Path, size_mb: int) -> None:
        self.mount = mount
        self.size_mb = size_mb
        self.filler = mount / "filler"

    @staticmethod
    def unavailable(probe_dir: Path) -> str | None:
        """Why no tmpfs can be mounted here, or None when it can."""
        if os.geteuid() != 0 or not shutil.which("mount"):
            return "mounting a small tmpfs needs root and mount(8)"
        probe = probe_dir / "tmpfs-probe"
        probe.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)], capture_output=True,
                              text=True)
        if made.returncode != 0:
            return f"mount -t tmpfs failed: {made.stderr.strip()}"
        subprocess.run(["umount", str(probe)], capture_output=True)
        probe.rmdir()
        return None

    def __enter__(self) -> SmallDisk:
        self.mount.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.mount))
        return self

    def fill(self) -> None:
        """Something else takes every free byte: logs, a core dump."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while os.write(fd, b"\0" * 65536):
                pass
        except OSError:  # no space left on device
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)


# Commands that are valid with any JSON object: a flood must not contain these as objects, or it would act.
ARGUMENTLESS = ("pause", "resume", "snapshot", "reload", "rollback")


def bad_commands(rng: random.Random, device: str, other: str, prefix: str = "linewatch"
                 ) -> Iterator[tuple[str, bytes, str]]:
    """Endless (topic, payload, kind) of commands a device must refuse with a reply, or ignore.

    Kinds: ``binary``, ``truncated``, ``oversized``, ``nested``, ``wrong-type``, ``unknown``
    (each answered with an error reply on the device's own topics), ``chunk`` (an OTA chunk of
    no transfer: ignored, no reply) and ``other-device`` (a valid command for another device:
    never acted on here, no reply from here).
    """
    own = f"{prefix}/{device}/cmd"
    kinds = ("binary", "truncated", "oversized", "nested", "wrong-type", "unknown", "chunk", "other-device")
    while True:
        kind = rng.choice(kinds)
        if kind == "binary":
            yield f"{own}/{rng.choice(('threshold', 'ota', 'pause'))}", rng.randbytes(rng.randrange(1, 512)), kind
        elif kind == "truncated":
            text = json.dumps({"id": rng.randrange(10**6), "class": "scratch", "value": 0.5, "action": "begin"})
            yield f"{own}/{rng.choice(('threshold', 'ota'))}", text[:rng.randrange(1, len(text))].encode(), kind
        elif kind == "oversized":
            size = rng.choice((64 * 1024, 256 * 1024, 1024 * 1024))
            yield f"{own}/threshold", json.dumps({"class": "x" * size, "value": 0.5}).encode(), kind
        elif kind == "nested":
            depth = rng.choice((200, 2_000, 50_000))
            opener, closer = rng.choice((("[", "]"), ('{"a":', "}")))
            payload = (opener * depth + "1" + closer * depth).encode()  # shallow objects are valid for pause & co
            yield f"{own}/{rng.choice(('threshold', 'ota'))}", payload, kind
        elif kind == "wrong-type":
            topic, body = rng.choice((
                (f"{own}/threshold", {"class": rng.choice((3, None, [], "no-such-class")), "value": 0.5}),
                (f"{own}/threshold", {"class": "scratch", "value": rng.choice(("high", -1, 2, None, [0.5]))}),
                (f"{own}/ota", {"action": rng.choice((5, "explode", None, ["begin"]))}),
                (f"{own}/ota", {"action": "begin", "transfer": "t", "size": -5, "sha256": "00",
                                "chunk_size": 2**40}),
                (f"{own}/ota", {"action": "end", "transfer": "never-begun"}),
                (f"{own}/{rng.choice(ARGUMENTLESS)}", rng.choice(([1, 2], "pause", 42, None, True))),
                (f"{own}/threshold", {"id": [[[1]]], "class": "scratch", "value": 0.5}),
            ))
            yield topic, json.dumps(body).encode(), kind
        elif kind == "unknown":
            name = rng.choice(("reboot", "shutdown", "exec", "é" * 40, "x" * 2000, "pause;rm -rf ~", "..", "%00"))
            yield f"{own}/{name}", b"{}", kind
        elif kind == "chunk":
            yield f"{own}/ota/chunk/{rng.choice(('none', '../../etc', 'x' * 300))}/{rng.choice(('0', '²', '-1'))}", \
                rng.randbytes(rng.randrange(0, 4096)), kind
        else:
            yield f"{prefix}/{other}/cmd/{rng.choice(('pause', 'threshold', 'rollback'))}", b"{}", kind
