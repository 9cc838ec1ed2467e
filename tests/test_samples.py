"""Samples from the devices to the station: chosen and kept on the device, received, labelled, over real mosquitto.

The device side runs as ``linewatch run`` on the simulated conveyor with the tiny int8 model;
the station runs in-process (``Station``), so its inbox can be read directly, and a bare paho
client plays a broken or hostile device where one is needed.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from linewatch.edge.comms.mqtt import parse_broker
from linewatch.edge.comms.payloads import TOPIC_PAYLOADS, Sample
from linewatch.edge.comms.publisher import DevicePublisher
from linewatch.edge.comms.spool import Spool
from linewatch.edge.device.config import SamplesSection, SourceSection
from linewatch.edge.device.pipeline import Frame, Result
from linewatch.edge.device.samples import Sampler
from linewatch.edge.model import artifact
from linewatch.edge.model.engine import Prediction
from linewatch.edge.model.images import encode_jpeg
from linewatch.edge.simulator import FRAME_SIZE
from linewatch.edge.station.app import Station, StationOptions
from linewatch.edge.station.inbox import Inbox
from tests.browser import Browser
from tests.helpers import ROOT, Collector, FakeClock, start_daemon, stop_daemon, wait_until

TOKEN = "station-token-for-tests"
SHA = "ab" * 32


def _station(tmp_path: Path, url: str, **options: Any) -> Station:
    token = tmp_path / "station-token"
    token.write_text(TOKEN + "\n")
    station = Station(StationOptions(broker=url, data=tmp_path / "DATA", http="127.0.0.1:0", token_file=str(token),
                                     **options))
    station.start()
    assert station.receiver.subscribed.wait(10), "the station could not subscribe"
    return station


def _api(station: Station, path: str, body: dict[str, Any] | None = None, token: str | None = TOKEN) \
        -> tuple[int, Any]:
    request = urllib.request.Request(station.url.rstrip("/") + path, method="POST" if body is not None else "GET",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            raw = reply.read()
            return reply.status, json.loads(raw) if reply.headers["Content-Type"] == "application/json" else raw
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- the device's side alone ------------------------------------------------------------------------


def _result(model: artifact.ModelArtifact, frame_id: int, scores: list[float], ts: float = 1_780_000_000.0) -> Result:
    image = np.full((48, 64, 3), 40 * (frame_id % 6), np.uint8)
    prediction = Prediction(np.array(scores, np.float32), model.outcomes)
    return Result(Frame(frame_id, ts + frame_id / 25, image), prediction, model)


def _sampler(tmp_path: Path, clock: FakeClock, **settings: Any) -> Sampler:
    publisher = DevicePublisher(parse_broker("mqtt://127.0.0.1:9"), "unit", Spool(tmp_path / "spool.sqlite"))
    return Sampler(SamplesSection(enabled=True, **settings), tmp_path / "samples", "unit", publisher,
                   SourceSection(spec="conveyor"), clock=clock.monotonic)


def test_the_device_samples_by_reason_within_each_reasons_rate_and_its_disk_quota(tiny: Path, tmp_path: Path) -> None:
    model = artifact.load(tiny)
    n = len(model.outcomes)
    clock = FakeClock()
    sampler = _sampler(tmp_path, clock, per_hour=36, random_every=5, below=0.6)  # a burst of 3.6 a reason
    sampler.start()
    sure, unsure = [0.95] + [0.05 / (n - 1)] * (n - 1), [0.5] + [0.5 / (n - 1)] * (n - 1)
    taken = [sampler.reason(_result(model, i, unsure if i % 2 else sure).prediction) for i in range(1, 11)]
    assert taken == ["low_confidence", None, "low_confidence", None, "random", None, "low_confidence", None,
                     "low_confidence", "random"], taken  # every 5th is random, whatever else it is
    for i in range(1, 8):
        sampler.take(_result(model, i, unsure), "low_confidence")
    assert sampler.limited["low_confidence"] == 4  # 3 of 7 in the burst
    clock.advance(100)  # 36 an hour: one more token every 100 s
    assert sampler.take(_result(model, 20, unsure), "low_confidence") is not None
    assert sampler.take(_result(model, 21, unsure), "random") is not None  # another reason, its own bucket
    sampler.close()
    jpegs, announced = sorted((tmp_path / "samples").glob("*.jpg")), sorted((tmp_path / "samples").glob("*.json"))
    assert len(jpegs) == len(announced) == 5
    sample = Sample.model_validate_json(announced[0].read_bytes())
    assert sample.sha256 == hashlib.sha256(jpegs[0].read_bytes()).hexdigest() and sample.reason == "low_confidence"
    assert sample.model.sha256 == model.sha256 and sample.top[0].score == pytest.approx(0.5, abs=1e-3)

    # A power cut left a JPEG without its announcement: it is removed; what was complete waits to be sent.
    (tmp_path / "samples" / "0000000000001-1.jpg").write_bytes(b"half")
    clock = FakeClock()
    small = _sampler(tmp_path, clock, per_hour=3600, quota_mb=3 * jpegs[0].stat().st_size / 2**20)
    assert not (tmp_path / "samples" / "0000000000001-1.jpg").exists()
    assert small.stats().pending == 5
    small.start()
    small.take(_result(model, 30, unsure), "operator", suggested="scratch")
    small.close()
    stats = small.stats()
    assert stats.pending <= 3 and stats.dropped == 6 - stats.pending, stats  # the oldest went first, counted
    newest = Sample.model_validate_json(sorted((tmp_path / "samples").glob("*.json"))[-1].read_bytes())
    assert (newest.reason, newest.suggested, newest.frame_id) == ("operator", "scratch", 30)
    with pytest.raises(ValueError, match="ack"):
        small.ack({"ack": "all"})
    assert small.ack({"ack": [newest.sample_id, "0000000000009-9"]}) == {"acked": 1, "pending": stats.pending - 1}


# --- device to station over a real broker -------------------------------------------------------------


def test_samples_reach_the_station_are_acknowledged_and_a_station_that_was_away_still_gets_them(
        tiny: Path, broker, tmp_path: Path) -> None:
    device = "samples-1"
    seen = Collector(broker.url, f"linewatch/{device}/#")
    proc = start_daemon(tiny, broker.url, device, tmp_path / "state", "--samples", "--set", "samples.below=1",
                        "--set", "samples.per_hour=360", "--set", "samples.resend_s=1", "--set", "samples.chunk_kb=2",
                        "--stats-interval", "1")
    station = None
    try:
        # Nobody listens yet: the samples are sent, and stay on the device, unacknowledged.
        assert seen.wait_for(lambda c: len(c.on("/sample")) >= 3, 60), "no samples announced"
        outbox = tmp_path / "state" / "samples"
        assert len(list(outbox.glob("*.json"))) >= 3
        station = _station(tmp_path, broker.url)
        inbox = station.inbox
        assert wait_until(lambda: inbox.stats()["states"].get("inbox", 0) >= 36, 120), inbox.stats()
        assert wait_until(lambda: any((m.get("samples") or {}).get("acked", 0) >= 36 for m in seen.on("/stats")), 60)
    finally:
        stop_daemon(proc)
        if station is not None:
            station.stop()
        seen.close()
    inbox = Inbox(tmp_path / "DATA")
    waiting = inbox.samples()
    assert {s["reason"] for s in waiting} == {"low_confidence"} and all(s["device_id"] == device for s in waiting)
    assert len({s["sample_id"] for s in waiting}) == len(waiting)  # resent ones were not stored twice
    for sample in waiting[:5]:
        jpeg = inbox.image(device, sample["sample_id"])
        assert hashlib.sha256(jpeg).hexdigest() == sample["sha256"]
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[1::-1] == FRAME_SIZE
    announced = seen.on("/sample")
    for payload in announced:
        TOPIC_PAYLOADS["sample"].model_validate(payload, strict=True)
    assert max(p["chunks"] for p in announced) > 1  # 2 KiB chunks: a photo takes several
    assert len(announced) > len({p["sample_id"] for p in announced})  # sent again while nobody acknowledged
    left = len(list((tmp_path / "state" / "samples").glob("*.json")))
    assert left <= inbox.stats()["states"]["inbox"]  # what is left on the device was sent after the last ack


def _announce(jpeg: bytes, device: str, sample_id: str, sha: str = SHA, **changes: Any) -> dict[str, Any]:
    body = {"schema": 1, "device_id": device, "sample_id": sample_id, "reason": "low_confidence",
            "ts": "2026-12-05T01:00:00.000Z", "ts_ms": 1_780_000_000_000, "frame_id": 1, "label": "ok",
            "score": 0.5, "top": [{"label": "ok", "score": 0.5}], "model": {"name": "m", "version": "1",
                                                                         "sha256": sha},
            "size": len(jpeg), "sha256": hashlib.sha256(jpeg).hexdigest(), "chunk_size": 1024,
            "chunks": -(-len(jpeg) // 1024)}
    return {**body, **changes}


class FakeDevice:
    """A bare paho client that sends samples as a device would, or as a broken one does."""

    def __init__(self, url: str, device: str, announce: bool = True) -> None:
        """``announce``: publish a status naming model ``SHA``, as a device does when it connects."""
        parts = parse_broker(url)
        self.device = device
        self.acks: list[str] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(f"linewatch/{device}/cmd/samples", qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(parts.host, parts.port)
        self.client.loop_start()
        assert subscribed.wait(10)
        if announce:
            self.send("status", json.dumps({"schema": 1, "device_id": device, "state": "online",
                                            "since": "2026-12-05T01:00:00.000Z", "sha256": SHA}).encode(),
                      retain=True)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.acks.extend(json.loads(msg.payload)["ack"])
            self._cond.notify_all()

    def send(self, kind: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(f"linewatch/{self.device}/{kind}", payload, qos=1, retain=retain).wait_for_publish(5)

    def sample(self, jpeg: bytes, sample_id: str, chunks: list[bytes] | None = None, **changes: Any) -> None:
        self.send("sample", json.dumps(_announce(jpeg, self.device, sample_id, **changes)).encode())
        for index, chunk in enumerate(chunks if chunks is not None else
                                      [jpeg[i:i + 1024] for i in range(0, len(jpeg), 1024)]):
            self.send(f"sample/{sample_id}/{index}", chunk)

    def close(self) -> None:
        self.send("status", b"", retain=True)  # the retained status goes with the test
        self.client.disconnect()
        self.client.loop_stop()


def test_the_station_refuses_bad_samples_in_one_line_each_and_acknowledges_only_what_a_resend_cannot_fix(
        broker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    jpeg = encode_jpeg(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    station = _station(tmp_path, broker.url, per_hour=60)  # a burst of 6 a device
    good, stranger = FakeDevice(broker.url, "cell-1"), FakeDevice(broker.url, "cell-7", announce=False)
    try:
        assert wait_until(lambda: "cell-1" in station.receiver.models, 10)
        good.sample(jpeg, "1780000000000-1")
        good.sample(jpeg, "1780000000000-1")  # a replay: acknowledged again, stored once
        good.send("sample", b"{not json")  # malformed
        good.sample(jpeg, "1780000000000-2", sha="cd" * 32)  # a model the device never ran
        good.sample(b"\xff\xd8 not a jpeg at all " * 60, "1780000000000-3")  # right sha256, broken JPEG
        damaged = bytearray(jpeg)
        damaged[100] ^= 0xFF
        good.sample(jpeg, "1780000000000-4", chunks=[bytes(damaged[i:i + 1024]) for i in range(0, len(jpeg), 1024)])
        good.sample(jpeg, "1780000000000-5", device_id="cell-9")  # says it is another device
        stranger.sample(jpeg, "1780000000000-6")  # never announced its status: unknown
        for n in range(7, 14):  # a flood: past the burst, the rest wait on the device
            good.sample(jpeg, f"1780000000000-{n}")
        assert wait_until(lambda: len(good.acks) >= 7 and station.inbox.stats()["counters"].get("limited") == 4, 20), \
            (good.acks, station.inbox.stats())
    finally:
        good.close()
        stranger.close()
        station.stop()
    inbox = Inbox(tmp_path / "DATA")
    stats = inbox.stats()
    stored = {s["sample_id"] for s in inbox.samples()}
    assert stored == {"1780000000000-1", *(f"1780000000000-{n}" for n in range(7, 10))}, stored
    counters = stats["counters"]
    assert counters["duplicates"] == 1 and counters["refused_wrong_model"] == 1 and counters["refused_broken_jpeg"] == 1
    assert counters["refused_damaged"] == 1 and counters["refused_unknown_device"] == 1
    assert counters["refused_malformed"] == 2 and counters["limited"] == 4
    # Acknowledged: the stored, the replay, and what resending cannot fix; not the damaged, nor the flood's rest.
    assert sorted(good.acks) == sorted(["1780000000000-1", "1780000000000-1", "1780000000000-2", "1780000000000-3",
                                        "1780000000000-7", "1780000000000-8", "1780000000000-9"])
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert all("\n" not in line and "cell-" in line for line in refusals) and len(refusals) >= 5, refusals


def _with_samples(tmp_path: Path, station: Station, count: int) -> list[dict[str, Any]]:
    """Samples put in the station's inbox as the receiver would."""
    inbox = station.inbox
    inbox.remember_model("cell-1", SHA)
    for n in range(count):
        jpeg = encode_jpeg(np.full((60, 80, 3), 30 * n, np.uint8))
        reason = ["random", "low_confidence", "anomalous"][n % 3]
        inbox.add(Sample.model_validate(_announce(jpeg, "cell-1", f"1780000000000-{n + 1}", reason=reason,
                                                  score=0.4 + n / 100, label="ok")), jpeg)
    return inbox.samples()


def test_the_station_api_labels_into_the_training_layout_and_two_people_cannot_label_one_photo(
        tmp_path: Path, broker) -> None:
    station = _station(tmp_path, broker.url)
    try:
        waiting = _with_samples(tmp_path, station, 6)
        assert [s["reason"] for s in waiting] == ["anomalous"] * 2 + ["low_confidence"] * 2 + ["random"] * 2
        assert _api(station, "/api/samples", token=None)[0] == 401
        assert _api(station, "/api/samples", token="wrong")[0] == 401
        first = waiting[0]
        key = {"device_id": "cell-1", "sample_id": first["sample_id"]}
        status, body = _api(station, "/api/label", {**key, "label": "crack", "by": "ana"})
        assert status == 200 and body["state"] == "labelled" and body["by"] == "ana", body
        photo = tmp_path / "DATA" / "crack" / f"cell-1_{first['sample_id']}.jpg"
        assert photo.is_file() and not (tmp_path / "DATA" / first["path"]).exists()
        status, body = _api(station, "/api/label", {**key, "label": "ok", "by": "ben"})
        assert status == 409 and "as crack by ana" in body["error"], body
        assert _api(station, "/api/label", {**key, "label": "../etc"})[0] == 400
        assert _api(station, "/api/label", {"device_id": "cell-1", "sample_id": "1-1", "label": "ok"})[0] == 404
        assert _api(station, "/api/samples?state=labelled")[1]["samples"][0]["labelled_as"] == "crack"
        assert "crack" in _api(station, "/api/labels")[1]["labels"]
        assert _api(station, "/api/undo", {**key, "by": "ana"})[0] == 200
        assert not photo.exists() and (tmp_path / "DATA" / "_inbox" / "cell-1" / f"{first['sample_id']}.jpg").is_file()
        second = {"device_id": "cell-1", "sample_id": waiting[1]["sample_id"]}
        assert _api(station, "/api/skip", second)[1]["state"] == "skipped"
        assert _api(station, "/api/samples?reason=random")[1]["samples"][0]["reason"] == "random"
        status, jpeg = _api(station, f"/api/samples/cell-1/{waiting[2]['sample_id']}.jpg")
        assert status == 200 and jpeg[:2] == b"\xff\xd8"
        assert _api(station, "/api/samples?state=everything")[0] == 400
    finally:
        station.stop()


def test_a_person_in_chromium_labels_with_one_key_and_undoes(tmp_path: Path, broker) -> None:
    executable = Browser.find()
    if executable is None:
        pytest.skip("Chromium is not installed here (make test installs Debian's chromium where apt-get exists)")
    station = _station(tmp_path, broker.url)
    (tmp_path / "DATA" / "crack").mkdir(parents=True)
    (tmp_path / "DATA" / "ok").mkdir()
    browser = Browser(executable)
    try:
        waiting = _with_samples(tmp_path, station, 4)
        browser.goto(station.url)
        browser.wait_for("!document.getElementById('login').classList.contains('hidden')")
        browser.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
        browser.click("#login-form button")
        browser.wait_for("document.querySelectorAll('.card img').length === 4 && "
                         "Array.from(document.querySelectorAll('.card img')).every((i) => i.naturalWidth === 80)")
        labels = browser.evaluate("Array.from(document.querySelectorAll('#labels button[data-label]'))"
                                  ".map((b) => b.dataset.label)")
        assert labels[:2] == ["crack", "ok"], labels
        assert browser.evaluate("document.querySelector('#labels button.guess').dataset.label") == "ok"
        browser.press("1")  # the first card, the anomalous one, is a crack
        browser.wait_for("document.querySelectorAll('.card').length === 3")
        assert (tmp_path / "DATA" / "crack" / f"cell-1_{waiting[0]['sample_id']}.jpg").is_file()
        browser.press("Enter")  # the next: the model's guess is right
        browser.wait_for("document.querySelectorAll('.card').length === 2")
        assert (tmp_path / "DATA" / "ok" / f"cell-1_{waiting[1]['sample_id']}.jpg").is_file()
        browser.press("u")
        browser.wait_for("document.querySelectorAll('.card').length === 3")
        assert not (tmp_path / "DATA" / "ok" / f"cell-1_{waiting[1]['sample_id']}.jpg").exists()
        browser.screenshot(ROOT / "build" / "test-artifacts" / "station-page.png")
    finally:
        browser.close()
        station.stop()


def test_a_full_inbox_drops_its_oldest_waiting_photos_and_counts_them(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path / "DATA", max_waiting=3)
    for n in range(1, 6):
        jpeg = encode_jpeg(np.full((30, 40, 3), 40 * n, np.uint8))
        inbox.add(Sample.model_validate(_announce(jpeg, "cell-1", f"1780000000000-{n}")), jpeg)
        if n == 2:
            inbox.label("cell-1", "1780000000000-2", "ok", "ana")  # labelled photos are never dropped
    waiting = {s["sample_id"] for s in inbox.samples()}
    assert waiting == {"1780000000000-3", "1780000000000-4", "1780000000000-5"}
    assert inbox.stats()["states"] == {"inbox": 3, "labelled": 1, "dropped": 1}
    assert inbox.stats()["counters"]["dropped"] == 1
    assert not (tmp_path / "DATA" / "_inbox" / "cell-1" / "1780000000000-1.jpg").exists()
    assert (tmp_path / "DATA" / "ok" / "cell-1_1780000000000-2.jpg").is_file()
    assert inbox.add(Sample.model_validate(_announce(b"x", "cell-1", "1780000000000-1")), b"x") == "duplicate"
