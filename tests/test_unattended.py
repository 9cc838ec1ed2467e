"""A device nobody attends: broker down at boot, a corrupt spool, a full disk, signals, systemd's notify protocol."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from linewatch.edge.comms.spool import SEQ_BLOCK, Spool
from linewatch.edge.demo.brokers import MosquittoBroker, free_port
from linewatch.edge.device.systemd import ServiceNotifier
from tests.faults import SmallDisk
from tests.helpers import (
    CLI,
    ENV,
    ROOT,
    Collector,
    linewatch,
    spool_backlog,
    start_daemon,
    stop_daemon,
    summary,
    wait_until,
)

FAST_RETRY = ("--set", "mqtt.reconnect_max_s=1")


@pytest.mark.broker
def test_broker_down_at_boot_inspects_and_spools_then_delivers_everything(tiny: Path, tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    proc = start_daemon(tiny, f"mqtt://127.0.0.1:{port}", "boot", state, "--json", *FAST_RETRY,
                        source="conveyor:2", fps=30)
    broker = MosquittoBroker(port=port, workdir=tmp_path / "broker")
    sub = None
    try:
        assert wait_until(lambda: spool_backlog(state, "boot") >= 60, timeout=60), proc.stderr
        status = json.loads((state / "status-boot.json").read_text())
        assert status["broker"] == "disconnected" and status["address"] == f"127.0.0.1:{port}"
        broker.start()
        appeared = time.monotonic()
        sub = Collector(broker.url, "linewatch/boot/result")
        assert sub.wait_for(lambda s: bool(s.messages), timeout=30)
        print(f"first result acknowledged {time.monotonic() - appeared:.2f} s after the broker appeared")
        assert wait_until(lambda: spool_backlog(state, "boot") < 10, timeout=30)  # the backlog drains
        out, err = stop_daemon(proc)
    finally:
        proc.kill()
        if sub is not None:
            sub.close()
        broker.stop()
    assert summary(out)["acknowledged"] >= summary(out)["frames"]
    assert "cannot reach the MQTT broker" in err and err.count("cannot reach the MQTT broker") == 1  # once per outage
    assert json.loads((state / "status-boot.json").read_text())["broker"] == "connected"


def test_sigterm_with_the_broker_away_exits_0_within_5_s_and_keeps_the_spool(tiny: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = start_daemon(tiny, f"mqtt://127.0.0.1:{free_port()}", "away", state, "--json", source="conveyor:3")
    try:
        assert wait_until(lambda: spool_backlog(state, "away") >= 20, timeout=60), proc.stderr
        started = time.monotonic()
        out, err = stop_daemon(proc)
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert took < 5, took
    assert summary(out)["acknowledged"] == 0 and summary(out)["frames"] > 0
    assert spool_backlog(state, "away") >= 20 and "still spooled at exit" in err


def test_ctrl_c_exits_130(tiny: Path, tmp_path: Path) -> None:
    proc = start_daemon(tiny, f"mqtt://127.0.0.1:{free_port()}", "intr", tmp_path, source="conveyor:3")
    try:
        assert wait_until(lambda: spool_backlog(tmp_path, "intr") >= 5, timeout=60), proc.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        proc.kill()


def test_corrupt_spool_is_moved_aside_and_seq_goes_on(tiny: Path, holdout: Path, broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    sub = Collector(broker.url, "linewatch/heal/#")
    run = ("run", "--model", str(tiny), "--source", str(holdout / "ok"), "--device-id", "heal", "--broker",
           broker.url, "--state-dir", str(state), "--once", "--stats-interval", "0.5")
    try:
        linewatch(*run)
        first = [r["seq"] for r in sub.on("/result")]
        spool = state / "spool-heal.sqlite"
        spool.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))  # what a power cut can leave behind
        (state / "spool-heal.sqlite-wal").unlink(missing_ok=True)
        linewatch(*run)
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 24 and s.on("/status")[-1]["state"] == "stopped", 20)
        status = sub.on("/status")[-1]
    finally:
        sub.close()
    second = [r["seq"] for r in sub.on("/result")][len(first):]
    assert first == list(range(1, 13))
    assert len(second) == 12 and min(second) > max(first)  # never a seq used twice
    assert second == list(range(second[0], second[0] + 12)) and second[0] == 1 + SEQ_BLOCK + 1
    aside = list(state.glob("spool-heal.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].name in " ".join(status["notices"])


def test_spool_over_its_disk_budget_drops_the_oldest_and_keeps_counting(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_entries=1_000_000, max_mb=0.25)
    for _ in range(2000):
        spool.append("t", lambda seq: str(seq).encode() + b"x" * 1000, "result")
    assert spool.last_seq("result") == 2000
    assert spool.dropped() > 0 and 0 < spool.backlog() < 2000 and spool.backlog() + spool.dropped() == 2000
    newest = spool.after(0, 10_000)
    assert newest[-1].payload.startswith(b"2000x")  # the newest survive
    spool.close()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs: a disk that really fills up (root only; CI and the build machines run as root)."""
    why = SmallDisk.unavailable(tmp_path)
    if why:
        pytest.skip(why)
    with SmallDisk(tmp_path / "disk", 1) as disk:
        yield disk.mount


def test_a_full_disk_never_stops_the_spool_and_it_recovers_when_space_returns(small_disk: Path) -> None:
    filler = small_disk / "journal.log"  # something else fills the disk: logs, a core dump
    filler.write_bytes(b"\0" * 900 * 1024)
    spool = Spool(small_disk / "s.sqlite")
    for _ in range(200):  # 200 KB more into what is left of 1 MiB
        spool.append("t", lambda seq: os.urandom(1000), "result")
    assert spool.lost > 0 and spool.dropped() >= spool.lost  # never an exception: counted
    filler.unlink()  # the log is rotated away: space returns
    lost, backlog = spool.lost, spool.backlog()
    for _ in range(20):
        spool.append("t", lambda seq: os.urandom(1000), "result")
    assert spool.lost == lost and spool.backlog() == backlog + 20  # storing again, by itself
    assert spool.last_seq("result") == 220  # the lost ones used up their seq: subscribers see the gap
    spool.close()


def test_a_disk_full_at_start_spools_in_memory(small_disk: Path) -> None:
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # no space left on device: full
        pass
    finally:
        os.close(fd)
    spool = Spool(small_disk / "s.sqlite")
    assert spool.in_memory
    assert [spool.append("t", lambda seq: b"x", "result") for _ in range(3)] == [1, 2, 3]
    assert spool.backlog() == 3
    spool.close()


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    return sock


def _messages(sock: socket.socket, until: str, timeout: float = 20) -> list[str]:
    """What the notify socket heard until a message containing ``until``, or ``timeout`` seconds."""
    got: list[str] = []
    deadline, each = time.monotonic() + timeout, sock.gettimeout()
    try:
        while not any(until in m for m in got) and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            got.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    finally:
        sock.settimeout(each)
    return got


def test_systemd_hears_ready_watchdog_status_and_stopping(tiny: Path, tmp_path: Path) -> None:
    sock = _listen(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    proc = start_daemon(tiny, f"mqtt://127.0.0.1:{free_port()}", "sd", tmp_path, source="conveyor:3", fps=20,
                        env=env)
    try:
        # READY comes after the imports and the model load: seconds natively; CI's emulated trixie heard none in 10 s.
        messages = _messages(sock, "WATCHDOG=1", timeout=90)
        assert messages, f"no READY=1 within 90 s; the daemon {'exited' if proc.poll() is not None else 'runs'}"
        assert messages[0].startswith("READY=1\nSTATUS=") and "broker" in messages[0]
        assert any(m.startswith("WATCHDOG=1\nSTATUS=") and "frames" in m for m in messages)
        stop_daemon(proc)
        assert any(m.startswith("STOPPING=1") for m in _messages(sock, "STOPPING=1"))
    finally:
        proc.kill()
        sock.close()


def test_watchdog_is_not_reassured_while_frames_stall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = _listen(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    progress = {"t": time.monotonic()}
    notifier = ServiceNotifier(lambda: progress["t"], lambda: "test")
    try:
        notifier.ready()
        assert _messages(sock, "WATCHDOG=1", timeout=5)[-1].startswith("WATCHDOG=1")
        progress["t"] = time.monotonic() - 60  # a camera stuck in a read for a minute
        stalled = [sock.recv(4096).decode() for _ in range(4)]
        assert stalled[-1] == "STATUS=test" and stalled[-2] == "STATUS=test"  # no WATCHDOG=1: systemd restarts us
        progress["t"] = time.monotonic() + 3600
        assert _messages(sock, "WATCHDOG=1", timeout=5)[-1].startswith("WATCHDOG=1")
    finally:
        notifier.stopping()
        sock.close()


def test_sighup_reloads_the_configuration_with_the_cli_defaults_and_tells_systemd(tiny: Path, broker,
                                                                                  tmp_path: Path) -> None:
    """No device_id in the file: the host name is the default at start and at every reload (it was lost on reload)."""
    device = socket.gethostname()
    config = tmp_path / "lw.toml"
    text = (f'state_dir = "{tmp_path}"\n[model]\npath = "{tiny}"\n[source]\nspec = "conveyor:3"\n'
            f'fps = 20\n[mqtt]\nbroker = "{broker.url}"\n[stats]\ninterval_s = 600\n')
    config.write_text(text)
    sock = _listen(tmp_path / "notify")
    sub = Collector(broker.url, f"linewatch/{device}/stats")
    proc = subprocess.Popen([*CLI, "run", "--config", str(config)], cwd=ROOT,
                            env={**ENV, "NOTIFY_SOCKET": str(tmp_path / "notify")}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert _messages(sock, "READY=1", timeout=90), "no READY=1"
        config.write_text(text.replace("interval_s = 600", "interval_s = 0.5"))
        proc.send_signal(signal.SIGHUP)
        heard = _messages(sock, "READY=1", timeout=30)
        reloading = [i for i, m in enumerate(heard) if m.startswith("RELOADING=1\nMONOTONIC_USEC=")]
        assert reloading and heard[-1].startswith("READY=1") and reloading[0] < len(heard) - 1, heard
        assert sub.wait_for(lambda s: len(s.messages) >= 2, timeout=20)  # not after the old 600 s: at once
        _, err = stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
        sock.close()
    assert "SIGHUP: reloaded results, events.thresholds, stats" in err


SYSTEMD_ANALYZE = "/usr/bin/systemd-analyze"


@pytest.mark.skipif(not Path(SYSTEMD_ANALYZE).exists(), reason="systemd-analyze is not installed (apt install systemd)")
def test_unit_verifies_and_is_hardened() -> None:
    unit = ROOT / "systemd" / "linewatch.service"
    verify = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    problems = [line for line in verify.stderr.splitlines() if "linewatch.service" in line
                and "Command /opt/linewatch/bin/linewatch is not executable" not in line]
    assert not problems, verify.stderr
    security = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", str(unit)], capture_output=True,
                              text=True)
    score = float(security.stdout.split("Overall exposure level for linewatch.service:")[1].split()[0])
    assert score <= 1.5, security.stdout[-3000:]
