"""The MQTT contract: commands and replies, events, stats, Home Assistant discovery, TLS with passwords, config."""

from __future__ import annotations

import io
import json
import subprocess
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from linewatch.edge import __version__
from linewatch.edge.comms.payloads import DeviceState, Event, Reply, Result, Stats
from linewatch.edge.device import config
from linewatch.edge.device.events import EventTracker
from linewatch.edge.errors import UsageError
from linewatch.edge.tools.monitor import Monitor
from tests.helpers import (
    CLI,
    ENV,
    ROOT,
    Collector,
    linewatch,
    spooled_results,
    start_daemon,
    stop_daemon,
    summary,
    wait_until,
)


def test_commands_survive_a_flood_of_garbage_and_reply_to_each(tiny: Path, broker, tmp_path: Path) -> None:
    sub = Collector(broker.url, "linewatch/cmd-dev/#")
    proc = start_daemon(tiny, broker.url, "cmd-dev", tmp_path, "--stats-interval", "1")
    client = sub.client
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 5, timeout=60), proc.stderr
        garbage = [b"", b"{", b"[1,2]", b"\xff\xfe", b"null", b'"pause"', b'{"class": 3}'] * 40
        for i, payload in enumerate(garbage):
            name = ("threshold", "reboot", "pause; rm -rf", "snapshot")[i % 4] if i % 3 else "threshold"
            client.publish(f"linewatch/cmd-dev/cmd/{name}", payload, qos=1)
        client.publish("linewatch/other-device/cmd/pause", b"{}", qos=1)  # not ours: ignored
        assert sub.wait_for(lambda s: len(s.on("/reply")) >= len(garbage), timeout=60), len(sub.on("/reply"))
        replies = sub.on("/reply")
        assert len(replies) == len(garbage)  # one reply to every command, and none to another device's
        for reply in replies:
            Reply.model_validate(reply, strict=True)
        assert any(r["command"] == "reboot" and not r["ok"] and "unknown command" in r["error"] for r in replies)
        assert any(r["command"] == "threshold" and not r["ok"] for r in replies)
        assert not any(r["command"] == "pause" and r["ok"] for r in replies)  # '"pause"' is not a JSON object
        count = len(sub.on("/result"))
        assert sub.wait_for(lambda s: len(s.on("/result")) >= count + 10, timeout=30)  # still inspecting

        # MQTT 5 request/response: the reply goes to the response topic with the correlation data.
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "linewatch/cmd-dev/answers"
        props.CorrelationData = b"req-42"
        client.publish("linewatch/cmd-dev/cmd/threshold", json.dumps({"id": 7, "class": "scratch", "value": 0.9}),
                       qos=1, properties=props)
        assert sub.wait_for(lambda s: bool(s.on("/answers")), timeout=20)
        answer = next(m for m in sub.messages if m.topic.endswith("/answers"))
        assert answer.payload == {"schema": 1, "device_id": "cmd-dev", "command": "threshold", "id": 7, "ok": True,
                                  "result": {"class": "scratch", "value": 0.9}}
        assert answer.properties is not None and answer.properties.CorrelationData == b"req-42"

        # Pause: frames are still read (stats count on), but no result is published until resume.
        client.publish("linewatch/cmd-dev/cmd/pause", b"{}", qos=1)
        assert sub.wait_for(lambda s: any(r["command"] == "pause" and r["ok"] for r in s.on("/pause/reply")), 20)
        assert sub.wait_for(lambda s: any(st["paused"] for st in s.on("/stats")), timeout=20)
        paused_stats = next(st for st in sub.on("/stats") if st["paused"])
        paused_at = len(sub.on("/result"))
        assert sub.wait_for(lambda s: s.on("/stats")[-1]["frames"] >= paused_stats["frames"] + 20, timeout=30)
        assert len(sub.on("/result")) == paused_at  # paused: nothing new while 20 more frames were read
        client.publish("linewatch/cmd-dev/cmd/resume", b"{}", qos=1)
        assert sub.wait_for(lambda s: len(s.on("/result")) > paused_at + 5, timeout=20)
        _, err = stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    assert "Traceback" not in err


def test_events_stats_and_snapshots_follow_their_schemas(tiny: Path, broker, tmp_path: Path) -> None:
    sub = Collector(broker.url, "linewatch/ev-dev/#")
    proc = start_daemon(tiny, broker.url, "ev-dev", tmp_path, "--stats-interval", "1", "--result-mode", "change")
    try:
        assert sub.wait_for(lambda s: len([e for e in s.on("/event") if e["type"] == "end"]) >= 2
                            and len(s.on("/stats")) >= 2, timeout=90), proc.stderr
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    events, stats, results = sub.on("/event"), sub.on("/stats"), sub.on("/result")
    for model, payloads in ((Event, events), (Stats, stats), (Result, results)):
        for payload in payloads:
            model.model_validate(payload, strict=True)
    starts = {e["event_id"]: e for e in events if e["type"] == "start"}
    ends = [e for e in events if e["type"] == "end"]
    assert all(e["event_id"] in starts and e["class"] == starts[e["event_id"]]["class"] for e in ends)
    assert all(e["class"] not in ("ok", "empty") for e in events)
    labels = [r["label"] for r in results]
    assert all(a != b for a, b in zip(labels, labels[1:]))  # mode "change": only label changes
    snapshots = [m for m in sub.messages if m.topic.endswith("/snapshot")]
    assert len(snapshots) == len(starts) and snapshots[0].payload[:2] == b"\xff\xd8"  # JPEG
    assert (tmp_path / "snapshots" / starts[next(iter(starts))]["snapshot"]).is_file()
    assert stats[-1]["frames"] > 0 and stats[-1]["spool"]["backlog"] >= 0


def test_event_debouncing_needs_k_of_n() -> None:
    tracker = EventTracker(["crack", "ok"], ["ok"], {"crack": 0.5}, k=3, n=5)
    flicker = [0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.9]  # never 3 of 5
    assert not [e for i, s in enumerate(flicker) for e in tracker.update({"crack": s, "ok": 1 - s}, i)]
    events = [e for i, s in enumerate([0.9, 0.8, 0.95] + [0.1] * 5, start=10)
              for e in tracker.update({"crack": s, "ok": 1 - s}, i)]
    assert [e.type for e in events] == ["start", "end"]
    assert events[1].peak_score == 0.95 and events[1].frame_id == 12 and events[1].frames == 3


def test_home_assistant_discovery_is_announced_again_when_ha_comes_online(tiny: Path, broker,
                                                                          tmp_path: Path) -> None:
    sub = Collector(broker.url, "homeassistant/+/linewatch_ha-dev/#")  # other tests' devices are retained too
    proc = start_daemon(tiny, broker.url, "ha-dev", tmp_path, "--ha-discovery")
    try:
        assert sub.wait_for(lambda s: len([m for m in s.messages if m.topic.endswith("/config")]) >= 8, 60)
        configs = {m.topic: m.payload for m in sub.messages if m.topic.endswith("/config") and m.payload}
        removed = {m.topic for m in sub.messages if m.topic.endswith("/config") and not m.payload}
        sub.client.publish("homeassistant/status", b"online", qos=1)
        assert sub.wait_for(lambda s: len([m for m in s.messages if m.topic.endswith("/config")]) >= 16, 30)
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    node = "homeassistant/{}/linewatch_ha-dev/{}/config"  # the device id as it is: an ACL grants linewatch_%u
    assert set(configs) == {node.format("binary_sensor", "defect"), node.format("sensor", "events"),
                            node.format("sensor", "fps"), node.format("sensor", "model")}
    # a classifier in free mode: the anomaly and line entities are announced empty, which removes any left
    assert removed == {node.format("binary_sensor", "anomaly"), node.format("sensor", "last_part"),
                       node.format("sensor", "yield"), node.format("sensor", "rejected")}
    defect = configs[node.format("binary_sensor", "defect")]
    model = configs.pop(node.format("sensor", "model"))  # the running model, from the retained status
    assert model["state_topic"] == "linewatch/ha-dev/status" and model["entity_category"] == "diagnostic"
    assert all(c["state_topic"] == "linewatch/ha-dev/state" for c in configs.values())  # never the per-frame result
    assert configs[node.format("sensor", "fps")]["entity_category"] == "diagnostic"
    assert {c["device"]["sw_version"] for c in configs.values()} == {__version__}  # linewatch's, not the model's
    assert defect["device_class"] == "problem" and defect["availability_topic"] == "linewatch/ha-dev/status"
    assert len({json.dumps(c["device"], sort_keys=True) for c in configs.values()}) == 1  # one device


def test_the_state_topic_stays_a_few_messages_a_second_at_any_frame_rate(tiny: Path, broker, tmp_path: Path) -> None:
    """Home Assistant's entities follow `state`: over 10 s of the unpaced conveyor, a few messages a second."""
    sub = Collector(broker.url, "linewatch/state-dev/#")
    proc = start_daemon(tiny, broker.url, "state-dev", tmp_path, "--stats-interval", "2", fps=None)
    try:
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 100, 60), proc.stderr
        start = len(sub.on("/state"))
        time.sleep(10)
        states = sub.on("/state")[start:]
        results = len(sub.on("/result"))
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    for payload in sub.on("/state"):
        DeviceState.model_validate(payload, strict=True)
    # tens to hundreds of frames a second (an emulated Pi under load: about 25), events opening and closing, and
    # yet a handful of state messages: at most two a second
    assert results >= 150 and results >= 10 * len(states) and 2 <= len(states) <= 25, (results, len(states))
    assert max(s["fps"] for s in states) > 10 and max(s["events"] for s in states) > 0


def _certificates(folder: Path, names: str = "IP:127.0.0.1") -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate it signed for ``names`` (subjectAltName), made with openssl."""
    folder.mkdir()
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "ext.cnf"
    ext.write_text(f"subjectAltName={names}\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
            "-subj", "/CN=linewatch test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
            str(cert), "-days", "2", "-extfile", str(ext))
    for path in folder.iterdir():
        path.chmod(0o644)  # mosquitto drops to another user when run as root
    return ca, cert, key


def test_tls_and_password_auth(tiny: Path, holdout: Path, make_broker, tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path / "tls")
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "line3", "s3cret-pw"], check=True)
    passwords.chmod(0o644)
    broker = make_broker(tls_files=(ca, cert, key), password_file=passwords)
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret-pw\n")
    wrong = tmp_path / "wrong-password"
    wrong.write_text("guess\n")
    refused = linewatch("run", "--model", str(tiny), "--source", str(holdout / "ok"),
                        "--device-id", "tls-dev", "--broker", broker.url, "--ca-file", str(ca),
                        "--username", "line3", "--password-file", str(wrong), "--once", check=False)
    assert refused.returncode == 6 and "refused" in refused.stderr.strip().splitlines()[-1]
    assert "guess" not in refused.stderr
    ok = linewatch("--log-level", "DEBUG", "run", "--model", str(tiny), "--source",
                   str(holdout / "ok"), "--device-id", "tls-dev", "--broker", broker.url, "--ca-file",
                   str(ca), "--username", "line3", "--password-file", str(secret), "--once", "--json")
    assert summary(ok.stdout)["acknowledged"] >= 12
    assert "s3cret-pw" not in ok.stderr + ok.stdout  # never logged, even at DEBUG
    plain = start_daemon(tiny, broker.url.replace("mqtts", "mqtt"), "tls-plain", tmp_path / "plain", "--json",
                         source=str(holdout / "ok"))
    try:
        assert wait_until(lambda: spooled_results(tmp_path / "plain", "tls-plain") == 12, timeout=60)
        out, err = stop_daemon(plain)
    finally:
        plain.kill()
    assert summary(out)["acknowledged"] == 0  # no TLS, no entry: results stay spooled, the daemon keeps trying
    assert "closed the connection before accepting us" in err or "cannot reach" in err


def test_config_file_env_and_flags(tmp_path: Path) -> None:
    example = config.load(ROOT / "systemd" / "linewatch.toml", environ={})
    assert example.mqtt.broker.startswith("mqtts://") and example.events.thresholds
    cfg_file = tmp_path / "lw.toml"
    cfg_file.write_text('device_id = "a"\n[model]\npath = "m.tflite"\n[source]\nspec = "usb:0"\n[mqtt]\nprefix = "p"\n')
    cfg = config.load(cfg_file, {"mqtt.prefix": "flag"}, environ={"LINEWATCH_MQTT_PREFIX": "env",
                                                                   "LINEWATCH_RESULTS_TOP_K": "5"})
    assert cfg.mqtt.prefix == "flag" and cfg.results.top_k == 5
    assert config.load(cfg_file, environ={"LINEWATCH_MQTT_PREFIX": "env"}).mqtt.prefix == "env"
    for bad, message in (({"mqtt.brokr": "x"}, "config key mqtt.brokr: Extra inputs"),
                         ({"results.top_k": "many"}, "config key results.top_k"),
                         ({"mqtt.broker": "http://x"}, "config key mqtt.broker"),
                         ({"device_id": "line 3/#"}, "config key device_id")):
        with pytest.raises(UsageError, match=message.replace(".", r"\.")):
            config.load(cfg_file, bad, environ={})
    proc = linewatch("run", "--config", str(cfg_file), "--set", "source.rotate=45", check=False)
    assert proc.returncode == 2 and "config key source.rotate" in proc.stderr.strip().splitlines()[-1]


def test_every_setting_has_a_description_and_its_flag_sets_it(tmp_path: Path) -> None:
    """One source of truth: each flag of `run` lands on the config key the reference documents."""
    from linewatch.edge import options
    from linewatch.edge.cli import build_parser

    parser = build_parser()
    for key, field in options.settings(config.Config):
        assert field.description, f"{key} has no description"
        flag = options.flag(field)
        if flag is None or field.annotation is bool:
            continue
        value = (options.choices(field) or ["7"])[-1]
        args = parser.parse_args(["run", flag, value])
        assert options.given(args, config.Config) == {key: value}, key
    assert options.given(parser.parse_args(["run", "--cpu-fallback"]), config.Config) == {"model.cpu_fallback": True}


def test_monitor_reports_gaps_and_duplicates() -> None:
    out = io.StringIO()
    seen: list[int] = []
    view = Monitor(out=out, on_result=lambda device, r: seen.append(r["seq"]))
    for seq in (1, 2, 2, 5, 6):
        view.handle("linewatch/m1/result", json.dumps({"seq": seq, "label": "ok", "ts_ms": seq * 100}).encode())
    device = view.devices["m1"]
    assert device.results == 4 and device.duplicates == 1 and device.gaps == 2
    assert out.getvalue().count("m1 result") == 5
    assert seen == [1, 2, 5, 6]


@pytest.mark.parametrize("case", ["wrong CA", "host name mismatch", "client certificate required"])
def test_tls_failures_are_named_and_inspection_goes_on(case: str, tiny: Path, holdout: Path, make_broker,
                                                       tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path / "tls", "DNS:broker.plant.local" if case == "host name mismatch"
                                  else "IP:127.0.0.1")
    other_ca, client_cert, client_key = _certificates(tmp_path / "client", "DNS:line-3")
    extra = ("require_certificate true",) if case == "client certificate required" else ()
    broker = make_broker(tls_files=(other_ca if case == "client certificate required" else ca, cert, key),
                         extra=extra)
    trusted = other_ca if case == "wrong CA" else ca
    state = tmp_path / "state"
    proc = start_daemon(tiny, broker.url, "tls-x", state, "--ca-file", str(trusted), "--json",
                        source=str(holdout / "ok"))
    try:
        status = state / "status-tls-x.json"
        assert wait_until(lambda: status.is_file() and json.loads(status.read_text())["detail"].startswith("TLS"),
                          timeout=30), proc.stderr
        assert wait_until(lambda: spooled_results(state, "tls-x") == 12, timeout=60)  # inspection goes on
        out, err = stop_daemon(proc)
    finally:
        proc.kill()
    line = next(line for line in err.splitlines() if "TLS handshake" in line)
    expected = {"wrong CA": "certificate verify failed", "host name mismatch": "IP address mismatch",
                "client certificate required": "CERTIFICATE_REQUIRED"}[case]
    assert expected.lower() in line.lower(), line
    assert summary(out)["acknowledged"] == 0
    if case == "client certificate required":  # the broker's CA signed it: now it is let in
        ok = linewatch("run", "--model", str(tiny), "--source", str(holdout / "ok"), "--device-id", "tls-x",
                       "--broker", broker.url, "--ca-file", str(ca), "--cert-file", str(client_cert), "--key-file",
                       str(client_key), "--state-dir", str(state), "--once", "--json")
        assert summary(ok.stdout)["acknowledged"] == 12 + 12  # the 12 spooled before, then these


def test_insecure_tls_and_loose_secrets_are_warned_about_at_every_start(tiny: Path, holdout: Path, make_broker,
                                                                       tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path / "tls", "DNS:elsewhere")
    broker = make_broker(tls_files=(ca, cert, key))
    secret = tmp_path / "pw"
    secret.write_text("hunter2-secret\n")
    secret.chmod(0o644)
    ca_only = ("--ca-file", str(ca))
    proc = linewatch("--log-level", "DEBUG", "run", "--model", str(tiny), "--source", str(holdout / "ok"),
                     "--device-id", "loose", "--broker", broker.url, "--set", "mqtt.insecure=true", "--password-file",
                     str(secret), "--stats-interval", "0.2", "--once", "--json", *ca_only)
    assert summary(proc.stdout)["acknowledged"] == 12  # no checks, so the wrong host name passes
    assert "mqtt.insecure = true" in proc.stderr and "chmod 600" in proc.stderr
    assert "hunter2-secret" not in proc.stdout + proc.stderr
    missing = linewatch("run", "--model", str(tiny), "--source", str(holdout / "ok"), "--device-id", "x",
                        "--broker", broker.url, "--ca-file", str(tmp_path / "nope.pem"), "--once", check=False)
    assert missing.returncode == 2 and "mqtt.ca_file" in missing.stderr.strip().splitlines()[-1]
    plain = config.check_files(config.MqttSection(broker="mqtt://broker.plant.local:1883",
                                                  ca_file=str(tmp_path / "nope.pem")))  # unused without TLS
    assert any("not TLS" in w for w in plain) and not config.check_files(config.MqttSection())


def test_the_password_never_reaches_logs_stats_replies_or_errors(tiny: Path, broker, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2-secret\n")
    secret.chmod(0o600)
    sub = Collector(broker.url, "#")
    proc = subprocess.Popen(
        [*CLI, "--log-level", "DEBUG", "run", "--model", str(tiny), "--source", "conveyor:1", "--fps", "30",
         "--device-id", "secretive", "--broker", broker.url, "--username", "line3", "--password-file", str(secret),
         "--state-dir", str(tmp_path / "state"), "--stats-interval", "0.3"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sub.wait_for(lambda s: len(s.on("/stats")) >= 2, timeout=60), proc.stderr
        for name, body in (("reload", b"{}"), ("threshold", b'{"class": "hunter"}'), ("ota", b"{}"),
                           ("nope", b"\xff")):
            sub.client.publish(f"linewatch/secretive/cmd/{name}", body, qos=1)
        assert sub.wait_for(lambda s: len(s.on("/reply")) >= 4, timeout=30)
        out, err = stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()
    published = b"".join(m.payload if isinstance(m.payload, bytes) else json.dumps(m.payload).encode()
                         for m in sub.messages)
    assert b"hunter2" not in published and "hunter2" not in out + err
    assert "DEBUG" in err  # it was looked for where the most is said
