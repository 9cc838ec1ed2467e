"""Each fault of ``make soak`` once, fast: a broker killed, a daemon killed mid-flight, a half-open link, bad commands.

The subscriber is ``SeqLedger`` (a persistent session, independent of linewatch's code), and
the pass line is the soak's: every ``seq`` the device handed out arrives, whatever happened.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from linewatch.edge.comms.mqtt import parse_broker
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.comms.spool import Spool
from linewatch.edge.demo.brokers import MosquittoBroker, free_port
from tests.faults import Partition, SeqLedger, bad_commands
from tests.helpers import spool_backlog, spooled_results, start_daemon, stop_daemon, summary, wait_until

FAST = ("--set", "mqtt.reconnect_max_s=1", "--set", "mqtt.keepalive=5")


def _account(ledger: SeqLedger, state: Path, device: str) -> list[int]:
    """The seqs the device handed out that never arrived (after it stopped)."""
    produced = spooled_results(state, device)
    assert produced > 0
    ledger.wait_complete(device, produced, timeout=30)
    return ledger.missing(device, produced)


def test_broker_killed_mid_stream_loses_no_result(tiny: Path, make_broker, tmp_path: Path) -> None:
    broker = make_broker(persistence=True, extra=("max_queued_messages 0",))
    ledger = SeqLedger(broker.url, session="kill-broker-ledger")
    assert ledger.wait_subscribed()
    state = tmp_path / "state"
    proc = start_daemon(tiny, broker.url, "kb", state, "--json", *FAST, source="conveyor:2", fps=100)
    try:
        assert wait_until(lambda: ledger.received("kb") >= 50, timeout=60), proc.stderr
        broker.kill()  # SIGKILL: no goodbye, no last save
        assert wait_until(lambda: spool_backlog(state, "kb") >= 100, timeout=30)
        broker.start()
        produced_then = spooled_results(state, "kb")
        assert wait_until(lambda: ledger.received("kb") >= produced_then, timeout=60)
        out, err = stop_daemon(proc)
        missing = _account(ledger, state, "kb")
    finally:
        proc.kill()
        ledger.close()
    assert missing == []
    assert "Traceback" not in err and "lost the broker" in err
    assert "Client is not connected" not in err  # paho's once-per-retry noise stays at DEBUG


def test_kill_9_with_messages_in_flight_to_a_live_broker(tiny: Path, make_broker, tmp_path: Path) -> None:
    broker = make_broker(persistence=True, extra=("max_queued_messages 0",))
    ledger = SeqLedger(broker.url, session="kill-daemon-ledger")
    assert ledger.wait_subscribed()
    state = tmp_path / "state"
    run = (tiny, broker.url, "k9", state, "--json", *FAST)
    procs = []
    try:
        for _ in range(5):  # until a kill lands while something is unacknowledged (the spool, frozen, tells)
            procs.append(start_daemon(*run, source="conveyor:3", fps=None))  # full rate: something in flight
            delivered = ledger.received("k9")
            assert wait_until(lambda d=delivered: ledger.received("k9") >= d + 300, timeout=60), procs[-1].stderr
            wait_until(lambda: spool_backlog(state, "k9") > 0, timeout=10, poll=0.002)
            procs[-1].kill()
            procs[-1].wait(10)
            if spool_backlog(state, "k9") > 0:
                break
        assert spool_backlog(state, "k9") > 0  # handed to the broker or about to be, not acknowledged
        procs.append(start_daemon(*run, source="conveyor:3", fps=None))
        first_run = spooled_results(state, "k9")
        assert wait_until(lambda: ledger.received("k9") >= first_run + 200, timeout=60)  # the restart delivers
        out, err = stop_daemon(procs[-1])
        missing = _account(ledger, state, "k9")
    finally:
        for proc in procs:
            proc.kill()
        ledger.close()
    assert missing == []
    assert summary(out)["spool_dropped"] == 0


@pytest.fixture
def partition():
    why = Partition.unavailable()
    if why:
        pytest.skip(f"no network partition here: {why}")
    with Partition() as made:
        yield made


def test_half_open_link_is_noticed_by_keepalive_and_nothing_is_lost(tiny: Path, partition: Partition,
                                                                    tmp_path: Path) -> None:
    broker = MosquittoBroker(workdir=tmp_path / "broker", persistence=True, host=partition.ns_ip,
                             launcher=partition.launcher, extra=("max_queued_messages 0",))
    broker.start()
    ledger = SeqLedger(broker.url, session="partition-ledger")
    state = tmp_path / "state"
    proc = start_daemon(tiny, broker.url, "part", state, "--json", *FAST, source="conveyor:4", fps=50)
    status = state / "status-part.json"
    try:
        assert ledger.wait_subscribed()
        assert wait_until(lambda: ledger.received("part") >= 50, timeout=60), proc.stderr
        partition.cut()  # packets vanish both ways, no reset: the socket looks fine
        cut = time.monotonic()
        assert wait_until(lambda: json.loads(status.read_text())["broker"] != "connected", timeout=20)
        noticed = time.monotonic() - cut
        partition.heal()
        assert wait_until(lambda: json.loads(status.read_text())["broker"] == "connected", timeout=30)
        out, err = stop_daemon(proc)
        missing = _account(ledger, state, "part")
    finally:
        proc.kill()
        ledger.close()
        broker.stop()
    print(f"half-open link noticed after {noticed:.1f} s (keepalive 5 s)")
    assert noticed <= 2 * 5 + 2  # a ping unanswered for one keepalive, after at most one without traffic
    assert missing == []


def test_a_flood_of_bad_commands_gets_one_error_reply_each_and_changes_nothing(tiny: Path, broker,
                                                                             tmp_path: Path) -> None:
    ledger = SeqLedger(broker.url, session="vandal-ledger")
    assert ledger.wait_subscribed()
    proc = start_daemon(tiny, broker.url, "vandal", tmp_path, *FAST, source="conveyor:5", fps=50)
    sender = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    kinds: dict[str, int] = {}
    expected = 0
    try:
        assert wait_until(lambda: ledger.received("vandal") >= 20, timeout=60), proc.stderr
        flood = bad_commands(random.Random(12), "vandal", "ghost")
        for _, (topic, payload, kind) in zip(range(600), flood):
            info = sender.publish(topic, payload, qos=1)
            kinds[kind] = kinds.get(kind, 0) + 1
            expected += kind not in ("chunk", "other-device")
        info.wait_for_publish(30)
        assert wait_until(lambda: ledger.replies.get("vandal", 0) >= expected, timeout=60), \
            (ledger.replies, expected)
        time.sleep(1)
        received = ledger.received("vandal")
        assert wait_until(lambda: ledger.received("vandal") >= received + 25, timeout=20)  # still inspecting
        _, err = stop_daemon(proc)
    finally:
        proc.kill()
        sender.loop_stop()
        ledger.close()
    assert set(kinds) == {"binary", "truncated", "oversized", "nested", "wrong-type", "unknown", "chunk",
                          "other-device"}
    assert ledger.replies["vandal"] == expected and "ghost" not in ledger.replies  # one each, none for another
    assert ledger.accepted.get("vandal", 0) == 0  # every one refused
    assert "Traceback" not in err


def test_a_publish_that_races_a_disconnect_is_handed_over_again(tmp_path: Path) -> None:
    """The connection can drop between the drain's check and paho's publish(): paho then refuses the message
    (is_published() raises). The drain must survive that and hand the message over again once connected."""
    port = free_port()
    spool = Spool(tmp_path / "spool.sqlite")
    publisher = DevicePublisher(parse_broker(f"mqtt://127.0.0.1:{port}"), "race", spool, reconnect_max_s=1)
    for _ in range(20):
        publisher.spool_message("result", lambda seq: json.dumps({"seq": seq, "ts_ms": 0}).encode())
    publisher.start()  # nothing listens yet
    publisher.connected.set()  # but the drain is told otherwise, as in the instant before a disconnect is seen
    broker = MosquittoBroker(port=port, workdir=tmp_path / "broker")
    ledger = None
    try:
        time.sleep(0.5)  # the drain hands all 20 to a paho that is not connected, and must not die of it
        publisher.connected.clear()
        broker.start()
        ledger = SeqLedger(broker.url, session="race-ledger")
        assert ledger.wait_subscribed()
        assert wait_until(lambda: spool.backlog() == 0, timeout=30), spool.backlog()
        assert ledger.wait_complete("race", 20, timeout=10)
    finally:
        publisher.stop()
        spool.close()
        if ledger is not None:
            ledger.close()
        broker.stop()
