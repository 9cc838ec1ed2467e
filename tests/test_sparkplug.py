"""The device as a Sparkplug B edge node, read by Eclipse Tahu's own decoder (sparkplug-payload, from npm)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from linewatch.edge.comms.sparkplug import BOOLEAN, DOUBLE, STRING, UINT64, Metric, decode, encode
from linewatch.edge.model import artifact
from tests.helpers import Collector, start_daemon, stop_daemon
from tests.node import node_modules, tahu_decode, tahu_encode

GROUP = "plant1"


@pytest.mark.unit
def test_a_payload_round_trips_and_bytes_that_are_no_payload_are_refused() -> None:
    metrics = [Metric("a/b", STRING, "x"), Metric("n", UINT64, 2**40), Metric("f", DOUBLE, 0.25),
               Metric("t", BOOLEAN, True), Metric("none", STRING, None)]
    payload = decode(encode(metrics, 1700000000123, 7))
    assert payload == {"seq": 7, "timestamp": 1700000000123,
                       "metrics": {"a/b": "x", "n": 2**40, "f": 0.25, "t": True, "none": None}}
    assert decode(encode([], 5, None))["seq"] is None
    with pytest.raises(ValueError, match="not a Sparkplug B payload"):
        decode(b"\xff\xff\xff")


def _spb(sub: Collector, kind: str) -> list[bytes]:
    return [m.payload for m in sub.messages if m.topic.split("/")[2] == kind]


def test_ignition_sees_births_data_a_rebirth_and_the_death_with_the_birth_s_bdseq(
        tiny: Path, broker, tmp_path: Path) -> None:
    node_modules()  # Tahu's decoder reads the payloads: skip at once (saying why) where npm could not install it
    sub = Collector(broker.url, "spBv1.0/#")
    args = ("--sparkplug", "--set", f"sparkplug.group_id={GROUP}", "--set", "sparkplug.interval_s=0.2")
    proc = start_daemon(tiny, broker.url, "spb-dev", tmp_path, *args)
    try:
        assert sub.wait_for(lambda s: len(_spb(s, "DDATA")) >= 2, 60), proc.stderr
        ncmd = f"spBv1.0/{GROUP}/NCMD/spb-dev"
        sub.client.publish(ncmd, b"\x00garbage", qos=0)  # refused, logged once
        sub.client.publish(ncmd, b"\xff\xfe", qos=0)
        sub.client.publish(ncmd, tahu_encode([{"name": "Node Control/Rebirth", "type": "Boolean", "value": True}]))
        assert sub.wait_for(lambda s: len(_spb(s, "NBIRTH")) == 2 and len(_spb(s, "DBIRTH")) == 2, 20)
        proc.kill()  # the will: NDEATH from the broker
        proc.wait(30)
        assert sub.wait_for(lambda s: len(_spb(s, "NDEATH")) == 1, 60)
        again = start_daemon(tiny, broker.url, "spb-dev", tmp_path, *args)
        try:
            assert sub.wait_for(lambda s: len(_spb(s, "NBIRTH")) == 3, 60), again.stderr
            time.sleep(0.5)
            _, stderr = stop_daemon(again)  # a clean stop says NDEATH itself
        finally:
            again.kill()
        assert sub.wait_for(lambda s: len(_spb(s, "NDEATH")) == 2, 20)
    finally:
        proc.kill()
        sub.close()
    topics = {m.topic for m in sub.messages}
    assert f"spBv1.0/{GROUP}/DBIRTH/spb-dev/vision" in topics and f"spBv1.0/{GROUP}/NBIRTH/spb-dev" in topics
    nbirths, deaths = tahu_decode(_spb(sub, "NBIRTH")), tahu_decode(_spb(sub, "NDEATH"))
    first_session = sub.messages[:next(i for i, m in enumerate(sub.messages) if "/NDEATH/" in m.topic)]
    dbirth = tahu_decode(_spb(sub, "DBIRTH"))[0]
    ddata = tahu_decode([m.payload for m in first_session if "/DDATA/" in m.topic])
    bdseq = [{m["name"]: m["value"] for m in p["metrics"]}["bdSeq"] for p in nbirths + deaths]
    assert bdseq[0] == bdseq[1] == bdseq[3] and bdseq[2] == bdseq[4] == (bdseq[0] + 1) % 256, bdseq
    assert [p["seq"] for p in nbirths] == [0, 0, 0] and all(p.get("seq") is None for p in deaths)
    first = {m["name"]: m for m in dbirth["metrics"]}
    assert dbirth["seq"] == 1 and first["Model/Sha256"]["value"] == artifact.load(tiny).sha256
    assert first["Frames"]["type"] == "UInt64" and first["Last/Score"]["type"] == "Double"
    assert first["Last/AnomalyScore"]["value"] is None  # null: a classifier has no anomaly score
    assert {m["name"] for m in nbirths[0]["metrics"]} >= {"bdSeq", "Node Control/Rebirth"}
    assert all(set({m["name"] for m in d["metrics"]}) <= set(first) for d in ddata)  # DDATA: the born metrics
    frames = [m["value"] for d in ddata for m in d["metrics"] if m["name"] == "Frames"]
    assert frames == sorted(frames) and len(frames) >= 2
    seqs = [p["seq"] for p in tahu_decode([m.payload for m in sub.messages
                                           if m.topic.split("/")[2] in ("NBIRTH", "DBIRTH", "DDATA")])][:6]
    assert seqs[:3] == [0, 1, 2], seqs  # one counter across the node's messages, from 0 at NBIRTH
    assert stderr.count("NCMD refused") == 0  # the second run got no bad command
    assert "Traceback" not in stderr


def test_a_bad_ncmd_is_refused_and_logged_once(tiny: Path, broker, tmp_path: Path) -> None:
    sub = Collector(broker.url, "spBv1.0/#")
    proc = start_daemon(tiny, broker.url, "spb-bad", tmp_path, "--sparkplug")
    try:
        assert sub.wait_for(lambda s: len(_spb(s, "DBIRTH")) == 1, 60), proc.stderr
        for payload in (b"\x00garbage", b"\xff\xfe", encode([Metric("Node Control/Reboot", BOOLEAN, True)], 1, 0)):
            sub.client.publish("spBv1.0/linewatch/NCMD/spb-bad", payload)
        time.sleep(1.5)
        _, stderr = stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    assert stderr.count("NCMD refused") == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert len(_spb(sub, "NBIRTH")) == 1  # no rebirth for what was not a rebirth



def test_with_a_primary_host_the_births_wait_for_its_state_and_its_going_offline_ends_the_session(
        tiny: Path, broker, tmp_path: Path) -> None:
    """Sparkplug 3.0's primary host: born only while its retained STATE says online; offline is NDEATH and a new
    session (a new bdSeq) that waits again; an older STATE and one that is not JSON are ignored."""
    sub = Collector(broker.url, "spBv1.0/#")
    results = Collector(broker.url, "linewatch/spb-host/result")
    state = "spBv1.0/STATE/scada"
    proc = start_daemon(tiny, broker.url, "spb-host", tmp_path, "--sparkplug", "--set", "sparkplug.interval_s=0.2",
                        "--set", "sparkplug.primary_host_id=scada")
    try:
        assert results.wait_for(lambda s: len(s.messages) >= 10, 60), proc.stderr
        assert not [m for m in sub.messages if m.topic != state]  # inspecting, but nothing born: no host yet
        now = int(time.time() * 1000)
        sub.client.publish(state, b"not json", qos=1, retain=True)
        sub.client.publish(state, json.dumps({"online": True, "timestamp": now}), qos=1, retain=True)
        assert sub.wait_for(lambda s: len(_spb(s, "DDATA")) >= 1, 30)
        sub.client.publish(state, json.dumps({"online": False, "timestamp": now - 1}), qos=1)  # older: ignored
        sub.client.publish(state, json.dumps({"online": False, "timestamp": now + 1}), qos=1, retain=True)
        assert sub.wait_for(lambda s: len(_spb(s, "NDEATH")) == 1, 30)
        time.sleep(1.5)  # the new session, waiting for the host
        assert len(_spb(sub, "NBIRTH")) == 1
        sub.client.publish(state, json.dumps({"online": True, "timestamp": now + 2}), qos=1, retain=True)
        assert sub.wait_for(lambda s: len(_spb(s, "NBIRTH")) == 2 and len(_spb(s, "DBIRTH")) == 2, 30), proc.stderr
        _, stderr = stop_daemon(proc)
    finally:
        proc.kill()
        sub.client.publish(state, b"", retain=True)  # the broker is the session's: leave no retained STATE
        sub.close()
        results.close()
    assert sub.wait_for(lambda s: len(_spb(s, "NDEATH")) == 2, 20)
    bdseq = [decode(p)["metrics"]["bdSeq"] for p in _spb(sub, "NBIRTH")]
    deaths = [decode(p)["metrics"]["bdSeq"] for p in _spb(sub, "NDEATH")]
    assert deaths == bdseq and bdseq[1] == (bdseq[0] + 1) % 256, (bdseq, deaths)
    assert stderr.count("spBv1.0/STATE/scada is not") == 1 and stderr.count("primary host scada is offline") == 1
    assert "Traceback" not in stderr
