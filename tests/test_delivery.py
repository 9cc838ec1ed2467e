"""Nothing lost: the broker taken away mid-stream, the daemon killed with messages spooled, a full spool."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from linewatch.edge.comms.mqtt import parse_broker
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.comms.spool import Outgoing, Spool
from linewatch.edge.device import config
from linewatch.edge.device.pipeline import Frame, Result
from linewatch.edge.device.results import ResultSink
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Engine
from linewatch.edge.model.images import read_image
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


def test_max_frames_ends_the_run_though_the_folder_ended_first(tiny: Path, holdout: Path, broker,
                                                              tmp_path: Path) -> None:
    """A small folder is read to its end in one block before the first frame is classified: ``--max-frames``
    must still end the run, not wait for SIGTERM as a folder without it does."""
    proc = start_daemon(tiny, broker.url, "counted", tmp_path, "--json", "--max-frames", "1",
                        source=str(holdout / "ok"), fps=None)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and summary(out)["frames"] == 1, err[-2000:]


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


def _transactions(spool: Spool) -> list[str]:
    """The COMMITs the spool's database runs from now on."""
    commits: list[str] = []
    spool._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    return commits


def test_a_block_of_messages_is_one_transaction_with_seqs_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite")
    commits = _transactions(spool)
    block = [Outgoing("r", lambda seq: b"r%d" % seq, "result") for _ in range(5)]
    block.insert(2, Outgoing("e", lambda seq: b"e%d" % seq, "event"))
    assert spool.append_many(block) == [1, 2, 1, 3, 4, 5]  # each topic its own sequence
    assert len(commits) == 1
    entries = spool.after(0, 100)
    assert [e.payload for e in entries] == [b"r1", b"r2", b"e1", b"r3", b"r4", b"r5"]  # in the order given
    spool.remove([e.id for e in entries[:4]])  # acknowledged together: one transaction too
    assert len(commits) == 2 and spool.backlog() == 2 and [e.payload for e in spool.after(0, 9)] == [b"r4", b"r5"]
    spool.close()
    assert Spool(tmp_path / "s.sqlite").append("r", lambda seq: b"", "result") == 6  # the seqs were kept with it


def test_a_block_of_results_is_spooled_at_once_each_with_its_own_model(tiny: Path, tiny_uint8: Path, holdout: Path,
                                                                       tmp_path: Path) -> None:
    """The publish thread gets a block of frames: one transaction for their messages, and a model replaced
    in the middle of the block (an over-the-air update) names the model that classified each frame."""
    cfg = config.load(None, {"device_id": "blocks", "state_dir": str(tmp_path), "model.path": str(tiny),
                             "mqtt.broker": "mqtt://127.0.0.1:1", "source.spec": "conveyor", "events.k": 1,
                             "events.n": 1})
    spool = Spool(tmp_path / "spool.sqlite")
    publisher = DevicePublisher(parse_broker("mqtt://127.0.0.1:1"), "blocks", spool)  # never started: spool only
    old, new = artifact.load(tiny), artifact.load(tiny_uint8)
    sink = ResultSink(old, device_id=cfg.device_id, results=cfg.results, events=cfg.events, review=cfg.review,
                      source=cfg.source, publisher=publisher, paused=threading.Event())
    photos = sorted((holdout / "crack").glob("*.jpg"))[:3] + sorted((holdout / "ok").glob("*.jpg"))[:3]
    frames = [Frame(i, time.time(), read_image(str(photo))) for i, photo in enumerate(photos, 1)]
    results = [Result(frame, Engine(model).predict(frame.image), model)
               for frame, model in zip(frames, [old] * 3 + [new] * 3)]
    commits = _transactions(spool)
    sink(results)
    assert len(commits) == 1
    entries = spool.after(0, 100)
    published = [json.loads(e.payload) for e in entries if e.topic.endswith("/result")]
    assert [r["seq"] for r in published] == [1, 2, 3, 4, 5, 6]
    assert [r["frame_id"] for r in published] == [1, 2, 3, 4, 5, 6]
    assert [r["model"]["sha256"] for r in published] == [old.sha256] * 3 + [new.sha256] * 3
    assert old.sha256 != new.sha256
    assert [json.loads(e.payload)["type"] for e in entries if e.topic.endswith("/event")][0] == "start"  # k = n = 1
    assert [e.topic.rsplit("/", 1)[1] for e in entries][:2] == ["result", "event"]  # in the order they happened
    spool.close()
