"""Over-the-air model updates against a real mosquitto: every way it can go wrong leaves a working device."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from linewatch.edge.model import artifact, signing
from linewatch.edge.model.card import InputSpec
from linewatch.edge.tools.deploy import CHUNK_SIZE
from tests.helpers import Collector, linewatch, start_daemon, stop_daemon


def _variant(tiny: Path, out: Path, **card: object) -> Path:
    """The tiny model with its card changed: another version, or a lie about its input."""
    model = artifact.load(tiny)
    out.write_bytes(artifact.pack(model.flatbuffer, model.card.model_copy(update=card), model.labels))
    return out


def _results_keep_coming(sub: Collector, version: str, more: int = 5) -> bool:
    """The device still publishes, with ``version`` (status and results agree)."""
    start = len(sub.on("/result"))
    return sub.wait_for(lambda s: len(s.on("/result")) >= start + more
                        and s.on("/result")[-1]["model"]["version"] == version, timeout=30)


def _deploy(model: Path, url: str, device: str) -> tuple[int, str]:
    proc = linewatch("deploy", str(model), "--broker", url, "--device", device, "--timeout", "30", check=False)
    return proc.returncode, proc.stderr


def test_updates_refusals_and_rollback(tiny: Path, broker, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    running = state / "model.tflite"
    running.write_bytes(tiny.read_bytes())
    linewatch("keygen", "--out", str(tmp_path / "plant.key"))
    linewatch("keygen", "--out", str(tmp_path / "other.key"))
    v1 = artifact.load(tiny).card.version
    sub = Collector(broker.url, "linewatch/ota-dev/#")
    proc = start_daemon(running, broker.url, "ota-dev", state, "--set", f"ota.public_key={tmp_path / 'plant.key.pub'}")
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 5, timeout=60), proc.stderr

        v2 = _variant(tiny, tmp_path / "v2.tflite", version="v2")
        code, err = _deploy(v2, broker.url, "ota-dev")  # unsigned, but the device wants signatures
        assert code == 4 and "not signed" in err.strip().splitlines()[-1]
        assert _results_keep_coming(sub, v1)

        linewatch("sign", str(v2), "--key", str(tmp_path / "other.key"))  # signed by someone else
        code, err = _deploy(v2, broker.url, "ota-dev")
        assert code == 4 and "does not verify" in err
        assert _results_keep_coming(sub, v1)

        bad_shape = _variant(tiny, tmp_path / "shape.tflite", version="v9",
                             input=InputSpec(height=10, width=10))
        refused = linewatch("sign", str(bad_shape), "--key", str(tmp_path / "plant.key"), check=False)
        assert refused.returncode == 4  # linewatch sign signs only what a device would run; another signer might:
        Path(f"{bad_shape}.sig").write_bytes(signing.sign(bad_shape.read_bytes(),
                                                          signing.load_private(tmp_path / "plant.key")))
        code, err = _deploy(bad_shape, broker.url, "ota-dev")
        assert code == 4 and "card says 10x10 pixels but the model takes 72x96" in err
        assert _results_keep_coming(sub, v1)

        linewatch("sign", str(v2), "--key", str(tmp_path / "plant.key"))
        started = time.monotonic()
        code, err = _deploy(v2, broker.url, "ota-dev")
        print(f"OTA of a {v2.stat().st_size // 1024} KiB model: {time.monotonic() - started:.2f} s")
        assert code == 0, err
        assert _results_keep_coming(sub, "v2")
        status = sub.on("/status")[-1]
        assert status["version"] == "v2" and status["sha256"] == artifact.load(v2).sha256
        assert (state / "model.previous.tflite").read_bytes() == tiny.read_bytes()
        assert artifact.load(running).version == "v2"

        sub.client.publish("linewatch/ota-dev/cmd/rollback", b'{"id": "back"}', qos=1)
        assert sub.wait_for(lambda s: any(r.get("id") == "back" for r in s.on("/rollback/reply")), timeout=30)
        reply = next(r for r in sub.on("/rollback/reply") if r.get("id") == "back")
        assert reply["ok"] and reply["result"]["version"] == v1
        assert _results_keep_coming(sub, v1)
        assert artifact.load(running).version == v1 and artifact.load(state / "model.previous.tflite").version == "v2"
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()


def _begin(sub: Collector, device: str, data: bytes, transfer: str) -> None:
    chunks = -(-len(data) // CHUNK_SIZE)
    sub.client.publish(f"linewatch/{device}/cmd/ota", json.dumps({
        "id": f"{transfer}-begin", "action": "begin", "transfer": transfer, "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "chunk_size": CHUNK_SIZE, "chunks": chunks,
        "signature": None}), qos=1).wait_for_publish(10)


def _chunk(sub: Collector, device: str, transfer: str, index: int, piece: bytes) -> None:
    sub.client.publish(f"linewatch/{device}/cmd/ota/chunk/{transfer}/{index}", piece, qos=1).wait_for_publish(10)


def _end(sub: Collector, device: str, transfer: str) -> dict:
    sub.client.publish(f"linewatch/{device}/cmd/ota", json.dumps(
        {"id": f"{transfer}-end", "action": "end", "transfer": transfer}), qos=1)
    assert sub.wait_for(lambda s: any(r.get("id") == f"{transfer}-end" for r in s.on("/ota/reply")), timeout=30)
    return next(r for r in sub.on("/ota/reply") if r.get("id") == f"{transfer}-end")


@pytest.fixture
def big_model(tiny: Path, tmp_path: Path) -> bytes:
    """A valid v3 of the tiny model, padded inside its card so that it takes several chunks."""
    return _variant(tiny, tmp_path / "v3.tflite", version="v3",
                    training={"notes": base64.b64encode(os.urandom(150_000)).decode()}).read_bytes()


def test_corrupted_chunk_and_broker_lost_mid_transfer(tiny: Path, big_model: bytes, own_broker,
                                                      tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    running = state / "model.tflite"
    running.write_bytes(tiny.read_bytes())
    v1 = artifact.load(tiny).card.version
    pieces = [big_model[i:i + CHUNK_SIZE] for i in range(0, len(big_model), CHUNK_SIZE)]
    assert len(pieces) >= 3
    proc = start_daemon(running, own_broker.url, "ota-net", state, "--set", "mqtt.reconnect_max_s=1")
    sub = Collector(own_broker.url, "linewatch/ota-net/#", session="ota-net-test")
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 5, timeout=60), proc.stderr

        _begin(sub, "ota-net", big_model, "damaged")
        for index, piece in enumerate(pieces):
            _chunk(sub, "ota-net", "damaged", index, piece if index != 1 else bytes([piece[0] ^ 0xFF]) + piece[1:])
        reply = _end(sub, "ota-net", "damaged")
        assert not reply["ok"] and "sha256 does not match" in reply["error"]
        assert _results_keep_coming(sub, v1)

        _begin(sub, "ota-net", big_model, "cut")
        _chunk(sub, "ota-net", "cut", 0, pieces[0])
        statuses = len(sub.on("/status"))
        own_broker.stop()  # the broker goes away in the middle of the transfer
        own_broker.start()
        assert sub.wait_for(lambda s: len(s.on("/status")) > statuses and s.on("/status")[-1]["state"] == "online",
                            timeout=30)  # the daemon is back
        reply = _end(sub, "ota-net", "cut")
        assert not reply["ok"] and "missing" in reply["error"]
        assert _results_keep_coming(sub, v1)  # the daemon rode it out and still runs the old model

        code, err = _deploy_bytes(big_model, tmp_path / "v3.tflite", own_broker.url, "ota-net")
        assert code == 0, err
        assert _results_keep_coming(sub, "v3")
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    assert not list((state / "ota").glob("*.part"))  # nothing half-written is left behind


def _deploy_bytes(data: bytes, path: Path, url: str, device: str) -> tuple[int, str]:
    path.write_bytes(data)
    return _deploy(path, url, device)
