"""Nothing lost: the broker taken away mid-stream, the daemon killed with messages spooled, a full spool."""

from __future__ import annotations

from pathlib import Path

from linewatch.edge.comms.spool import Spool
from tests.helpers import Collector, spool_backlog, start_daemon, stop_daemon, summary, wait_until


def _seqs(sub: Collector, topic: str = "/result") -> list[int]:
    return [p["seq"] for p in sub.on(topic)]


def test_broker_outage_mid_stream_loses_no_result(tiny: Path, make_broker, tmp_path: Path) -> None:
    broker = make_broker(persistence=True)
    sub = Collector(broker.url, "linewatch/outage/#", session="outage-subscriber")
    state = tmp_path / "state"
    proc = start_daemon(tiny, broker.url, "outage", state, "--json", source="conveyor:2", fps=30)
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 20, timeout=60), proc.stderr
        broker.stop()
        # The daemon keeps inspecting while the broker is away: results pile up in its spool.
        assert wait_until(lambda: spool_backlog(state, "outage") >= 60, timeout=30)
        broker.start()
        before = len(set(_seqs(sub)))
        assert sub.wait_for(lambda s: len(set(_seqs(s))) >= before + 150, timeout=60)
        out, err = stop_daemon(proc)
        frames = summary(out)["frames"]
        assert sub.wait_for(lambda s: len(set(_seqs(s))) >= frames, timeout=30)
    finally:
        proc.kill()
        sub.close()
    assert sorted(set(_seqs(sub))) == list(range(1, frames + 1))  # every result, duplicates allowed
    assert "lost the broker" in err and "spooling" in err


def test_kill_9_with_spooled_results_then_restart_delivers_them(tiny: Path, make_broker, tmp_path: Path) -> None:
    broker = make_broker(persistence=True)
    sub = Collector(broker.url, "linewatch/crash/result", session="crash-subscriber")
    state = tmp_path / "state"
    proc = start_daemon(tiny, broker.url, "crash", state, "--json", source="conveyor:2", fps=30)
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 10, timeout=60), proc.stderr
        broker.stop()
        assert wait_until(lambda: spool_backlog(state, "crash") >= 30, timeout=30)  # results pile up in the spool
        proc.kill()  # kill -9: no flush, no goodbye
        proc.wait(10)
        spool = Spool(state / "spool-crash.sqlite")
        first_run, pending = spool.last_seq("result"), spool.backlog()
        spool.close()
        assert pending > 10 and first_run > 20
        broker.start()
        second = start_daemon(tiny, broker.url, "crash", state, "--json", "--max-frames", "20",
                              source="conveyor:2", fps=30)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err[-2000:]
        spool = Spool(state / "spool-crash.sqlite")
        produced, left = spool.last_seq("result"), spool.backlog()
        spool.close()
        assert left == 0 and produced == first_run + 20  # the restart went on from the persisted seq
        assert sub.wait_for(lambda s: len(set(_seqs(s))) >= produced, timeout=30)
    finally:
        proc.kill()
        sub.close()
    assert sorted(set(_seqs(sub))) == list(range(1, produced + 1))  # nothing lost across the crash


def test_full_spool_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite", max_entries=10)
    for _ in range(25):
        spool.append("t", lambda seq: str(seq).encode(), "result")
    assert spool.backlog() == 10 and spool.dropped() == 15
    assert [e.payload for e in spool.after(0, 100)] == [str(i).encode() for i in range(16, 26)]
    spool.close()
    reopened = Spool(tmp_path / "s.sqlite", max_entries=10)
    assert reopened.append("t", lambda seq: b"x", "result") == 26  # seq survives a restart
    assert reopened.append("t", lambda seq: b"x", "event") == 1  # each topic has its own sequence
    assert reopened.dropped() == 17  # two more appended to a full spool
