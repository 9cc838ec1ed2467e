"""Property tests (hypothesis): whatever arrives, the command parser, the config loader and the artifact reader
answer with a reply or the documented error, never an exception of another kind."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linewatch.edge.comms.payloads import Reply, Result, Score, rfc3339
from linewatch.edge.device import config
from linewatch.edge.device.commands import CommandRouter, DeviceCommands, apply_threshold
from linewatch.edge.device.events import EventTracker
from linewatch.edge.device.pipeline import Frame
from linewatch.edge.device.pipeline import Result as Classified
from linewatch.edge.device.results import ResultEncoder, model_ref
from linewatch.edge.errors import ModelError, UsageError
from linewatch.edge.model import artifact
from linewatch.edge.model.card import AnomalySpec, ModelCard
from linewatch.edge.model.engine import Prediction
from tests.helpers import FIXTURES

LABELS = ["crack", "empty", "ok", "scratch", "stain"]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                       max_size=4),
                    max_leaves=20)
NAMES = st.sampled_from(["pause", "resume", "snapshot", "threshold", "reload", "reboot", ""]) | \
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/+#\x00"), max_size=12)


def _router() -> tuple[CommandRouter, list[bytes]]:
    replies: list[bytes] = []
    tracker = EventTracker(LABELS, ["ok", "empty"], {}, 3, 5)
    sink, engine = SimpleNamespace(latest=None, tracker=tracker), SimpleNamespace(task="classify")
    handlers = DeviceCommands(threading.Event(), sink,  # type: ignore[arg-type]
                              lambda label, value: apply_threshold(engine, tracker, label, value),  # type: ignore
                              lambda: ["results"]).handlers()
    return CommandRouter("dev", handlers, lambda request, payload: replies.append(payload)), replies


def _message(name: str, payload: bytes) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=f"linewatch/dev/cmd/{name}".encode())
    msg.payload = payload
    return msg


@settings(max_examples=300, deadline=None)
@given(name=NAMES, payload=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth))
def test_every_command_gets_one_reply_that_follows_the_schema(name: str, payload: bytes) -> None:
    router, replies = _router()
    router(_message(name, payload))
    assert len(replies) == 1
    reply = Reply.model_validate_json(replies[0], strict=True)
    assert reply.command == name and reply.device_id == "dev"
    assert reply.ok == (reply.error is None)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["id", "class", "value", "x"]), JSON, max_size=4))
def test_threshold_is_changed_only_by_a_valid_command(body: dict[str, Any]) -> None:
    router, replies = _router()
    router(_message("threshold", json.dumps(body).encode()))
    reply = json.loads(replies[0])
    valid = body.get("class") in LABELS and type(body.get("value")) in (int, float) and 0 < body["value"] <= 1
    assert reply["ok"] == (valid and type(body.get("id")) in (str, int, float, type(None)))


SETTING = st.sampled_from([key for key, _ in config.options.settings(config.Config)] + ["mqtt.nope", "bogus"])
VALUE = st.text(max_size=30) | st.integers().map(str) | st.floats().map(str) | st.sampled_from(["true", "5", "1,2"])


@settings(max_examples=300, deadline=None)
@given(overrides=st.dictionaries(SETTING, VALUE, max_size=5))
def test_any_overrides_give_a_config_or_a_usage_error(overrides: dict[str, str]) -> None:
    base = {"device_id": "dev", "model.path": "m.tflite", "source.spec": "conveyor"}
    try:
        loaded = config.load(None, {**base, **overrides}, environ={})
    except UsageError as exc:
        assert "\n" not in str(exc).strip()  # one line, naming the key
    else:
        assert isinstance(loaded, config.Config)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200) | st.sampled_from(["[mqtt]\nkeepalive = 'x'", "device_id = 5", "[model\n",
                                                        "[spool]\nmax_entries = -1", "x = 1"]))
def test_any_config_file_gives_a_config_or_a_usage_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "lw.toml"
    path.write_text(text, errors="surrogateescape")
    try:
        config.load(path, environ={})
    except UsageError as exc:
        assert str(exc)


MODEL = (FIXTURES / "tiny.tflite").read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(MODEL)), flips=st.lists(st.integers(0, len(MODEL) - 1), max_size=3),
       tail=st.binary(max_size=64))
def test_a_damaged_model_file_is_refused_or_is_still_the_pinned_model(cut: int, flips: list[int], tail: bytes,
                                                               tmp_path: Path) -> None:
    data = bytearray(MODEL[:cut])
    for at in flips:
        if at < len(data):
            data[at] ^= 0x5A
    path = tmp_path / "m.tflite"
    path.write_bytes(bytes(data) + tail)
    try:
        loaded = artifact.load(path)
    except ModelError as exc:
        assert str(path) in str(exc)
    else:  # whatever loads is the very model the card pins, or a plain .tflite without a card
        assert loaded.flatbuffer == MODEL[:len(loaded.flatbuffer)] or not loaded.has_card


def test_an_oversized_command_is_refused_unparsed() -> None:
    router, replies = _router()
    router(_message("threshold", json.dumps({"class": "scratch", "value": 0.5, "pad": "x" * 20_000}).encode()))
    reply = json.loads(replies[0])
    assert not reply["ok"] and "more than a command takes" in reply["error"]


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(device=TEXT, labels=st.lists(TEXT, min_size=1, max_size=8, unique=True), data=st.data(),
       path=st.none() | TEXT, ts=st.floats(1e9, 4e9), frame_id=st.integers(1, 2**40), seq=st.integers(1, 2**40),
       top_k=st.integers(1, 5), anomaly=st.none() | st.floats(0, 1e4, width=32))
def test_the_fast_result_encoder_gives_the_contracts_bytes(device: str, labels: list[str], data: st.DataObject,
                                                           path: str | None, ts: float, frame_id: int, seq: int,
                                                           top_k: int, anomaly: float | None) -> None:
    """ResultEncoder skips pydantic per frame; it must give byte for byte what the Result model gives,
    for a classifier and for an anomaly model (whose labels are anomaly and normal)."""
    good = data.draw(st.lists(st.sampled_from(labels), unique=True))
    if anomaly is None:
        card = ModelCard(name="m", version="1.2", labels=labels, good_labels=good)
        scores = np.array(data.draw(st.lists(st.floats(0, 1, width=32), min_size=len(labels),
                                             max_size=len(labels))), np.float32)
    else:
        threshold = data.draw(st.floats(0.01, 100))
        card = ModelCard(name="m", version="1.2", labels=labels, good_labels=good, task="anomaly",
                         anomaly=AnomalySpec(method="scars", score_scale=1.0, threshold=threshold, false_alarm=0.01))
        odds = anomaly / (anomaly + threshold)
        scores = np.array([odds, 1 - odds], np.float32)
    model = artifact.ModelArtifact(Path("m.tflite"), b"flatbuffer", card, labels)
    prediction = Prediction(scores, model.outcomes, anomaly)
    classified = Classified(Frame(frame_id, ts, np.zeros(1), path), prediction, model)
    encoded = ResultEncoder(device, model, top_k)(classified, seq)
    latency = json.loads(encoded)["latency_ms"]
    assert latency >= 0
    expected = Result(
        device_id=device, seq=seq, ts=rfc3339(ts), ts_ms=int(ts * 1000), frame_id=frame_id, path=path,
        label=prediction.label, score=round(prediction.score, 4),
        defect=model.verdict(prediction.label, prediction.anomalous) != "good",
        top=[Score(label=label, score=round(score, 4)) for label, score in prediction.top(top_k)],
        model=model_ref(model), latency_ms=latency,
        anomaly_score=None if anomaly is None else round(anomaly, 4), anomalous=prediction.anomalous).encode()
    assert encoded == expected
    if anomaly is not None:
        assert prediction.anomalous == (prediction.label == "anomaly") == (json.loads(encoded)["defect"])
