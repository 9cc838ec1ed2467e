"""The broker configuration linewatch ships, used as shipped: docs/mosquitto/linewatch.acl on a real mosquitto with
passwords made by mosquitto_passwd and a TLS listener, and a device installed by ``linewatch install --root`` and run
from the configuration it wrote. Every topic flows to the users the ACL names, and no further."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from linewatch.edge.comms.mqtt import Credentials
from linewatch.edge.comms.sparkplug import BOOLEAN, Metric, encode
from linewatch.edge.demo.brokers import MosquittoBroker
from linewatch.edge.station.app import Station, StationOptions
from tests.helpers import (
    CLI,
    ENV,
    ROOT,
    Collector,
    linewatch,
    spool_backlog,
    spooled_results,
    start_daemon,
    stop_daemon,
    wait_until,
)
from tests.test_contract import _certificates
from tests.test_install import _venv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installing sets owners: root only (CI runs as root)")

ACL = ROOT / "docs" / "mosquitto" / "linewatch.acl"
USERS = {"line-3": "pw-of-line-3", "line-4": "pw-of-line-4", "operator": "pw-of-operator",
         "dashboard": "pw-of-dashboard", "homeassistant": "pw-of-ha", "station": "pw-of-station",
         "ignition": "pw-of-ignition"}


def _shipped_broker(make_broker: Callable[..., MosquittoBroker], folder: Path) -> tuple[MosquittoBroker, Path]:
    """mosquitto with the shipped ACL, a password file for USERS and TLS from a throwaway CA; and the CA."""
    ca, cert, key = _certificates(folder / "tls")
    passwords = folder / "passwd"
    for n, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if n == 0 else []), "-b", str(passwords), user, password],
                       check=True)
    passwords.chmod(0o644)
    acl = folder / "linewatch.acl"
    shutil.copy(ACL, acl)
    acl.chmod(0o644)
    return make_broker(tls_files=(ca, cert, key), password_file=passwords, extra=(f"acl_file {acl}",)), ca


def _secret(folder: Path, user: str) -> Path:
    path = folder / f"{user}.password"
    path.write_text(USERS[user] + "\n")
    path.chmod(0o600)
    return path


def _as(user: str, broker: MosquittoBroker, ca: Path, topic: str) -> Collector:
    return Collector(broker.url, topic, user=(user, USERS[user]), ca_file=ca)


def _publish_as(user: str, broker: MosquittoBroker, ca: Path, topic: str, payload: bytes) -> Any:
    """Publish once at QoS 1 as ``user``; the PUBACK's reason code (MQTT 5 says 'Not authorized' for a denial)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, USERS[user])
    client.tls_set(ca_certs=str(ca))
    acked, codes = threading.Event(), []
    client.on_publish = lambda c, u, mid, reason, props: (codes.append(reason), acked.set())
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1)
        assert acked.wait(10), f"no PUBACK for {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]


def test_the_shipped_acl_passwords_and_tls_carry_every_topic_to_whom_it_names(
        tiny: Path, make_broker: Callable[..., MosquittoBroker], tmp_path: Path) -> None:
    broker, ca = _shipped_broker(make_broker, tmp_path)
    root, venv = tmp_path / "root", _venv(tmp_path / "opt" / "linewatch")
    installed = linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody", "--model",
                          str(tiny), "--device-id", "line-3", "--broker", broker.url, "--ca-file", str(ca),
                          "--password-file", str(_secret(tmp_path, "line-3")), "--source", "conveyor:4")
    assert f"the broker at 127.0.0.1:{broker.port} accepted user line-3" in installed.stdout, installed.stdout
    etc, state = root / "etc" / "linewatch", root / "var" / "lib" / "linewatch"
    # The installed configuration as it is; only the file settings point below the test's root, as an image's would.
    below_root = {"LINEWATCH_MODEL_PATH": str(state / "model.tflite"), "LINEWATCH_STATE_DIR": str(state),
                  "LINEWATCH_MQTT_CA_FILE": str(etc / "ca.pem"),
                  "LINEWATCH_MQTT_PASSWORD_FILE": str(etc / "mqtt-password")}
    dashboard = _as("dashboard", broker, ca, "linewatch/#")
    home_assistant = _as("homeassistant", broker, ca, "homeassistant/#")
    operator = _as("operator", broker, ca, "linewatch/line-3/cmd/+/reply")
    intruder = _as("line-4", broker, ca, "linewatch/line-3/cmd/#")
    ignition = _as("ignition", broker, ca, "spBv1.0/#")
    station = Station(StationOptions(broker=broker.url, data=tmp_path / "DATA", http="127.0.0.1:0",
                                     credentials=Credentials("station", USERS["station"], str(ca)),
                                     token_file=str(_secret(tmp_path, "station"))))
    station.start()
    proc = subprocess.Popen([*CLI, "run", "--config", str(etc / "linewatch.toml"), "--fps", "25", "--ha-discovery",
                             "--stats-interval", "1", "--line", "mqtt", "--reject-pin", "27", "--reject-delay-ms",
                             "1500", "--set", "line.pin_factory=mock", "--set", "line.window_ms=600", "--samples",
                             "--set", "samples.below=1", "--set", "samples.per_hour=360", "--sparkplug",
                             "--set", "sparkplug.primary_host_id=ignition"],
                            cwd=ROOT, env={**ENV, **below_root}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert dashboard.wait_for(lambda s: len(s.on("line-3/result")) >= 50, 90), proc.stderr
        for n in range(3):  # parts 0.3 s apart: closer than line.min_spacing_ms would be one part triggered twice
            operator.client.publish("linewatch/line-3/cmd/trigger", json.dumps({"id": n, "part": f"P{n}"}), qos=1)
            time.sleep(0.3)
        operator.client.publish("linewatch/line-3/cmd/snapshot", json.dumps({"id": "snap"}), qos=1)
        everything = ("status", "result", "event", "snapshot", "stats", "state", "part", "cmd/trigger/reply",
                      "cmd/snapshot/reply", "sample")
        assert dashboard.wait_for(lambda s: all(s.on(f"line-3/{t}") for t in everything) and
                                  len(s.on("line-3/part")) == 3, 60), \
            ([t for t in everything if not dashboard.on(f"line-3/{t}")], dashboard.on("line-3/part"))
        assert operator.wait_for(lambda s: len(s.messages) >= 4, 30)  # the operator hears its replies too
        configs = lambda s: [m for m in s.messages if m.topic.startswith("homeassistant/") and  # noqa: E731
                             "/linewatch_line-3/" in m.topic and m.topic.endswith("/config")]
        assert home_assistant.wait_for(lambda s: len(configs(s)) >= 8, 30), [m.topic for m in home_assistant.messages]
        announced = len(configs(home_assistant))
        home_assistant.client.publish("homeassistant/status", b"online", qos=1)  # HA restarted: announce again
        assert home_assistant.wait_for(lambda s: len(configs(s)) >= 2 * announced, 30)

        deployed = linewatch("deploy", str(tiny), "--device-id", "line-3", "--broker", broker.url, "--username",
                             "operator", "--password-file", str(_secret(tmp_path, "operator")), "--ca-file", str(ca),
                             "--timeout", "120", check=False)
        assert deployed.returncode == 0, deployed.stderr
        watched = linewatch("monitor", "--broker", broker.url, "--username", "dashboard", "--password-file",
                            str(_secret(tmp_path, "dashboard")), "--ca-file", str(ca), "--count", "5", "--json",
                            "--timeout", "60", check=False)
        assert watched.returncode == 0 and len(watched.stdout.splitlines()) >= 5, watched.stderr

        # Ignition, the primary host, says it is online (the device may read that); then it sees the edge node born
        # and its data, and may ask it to be born again.
        assert not [m for m in ignition.messages if "/line-3" in m.topic]  # no births before the host is online
        ignition.client.publish("spBv1.0/STATE/ignition", json.dumps({"online": True, "timestamp": int(
            time.time() * 1000)}), qos=1, retain=True)
        spb = lambda kind: [m for m in ignition.messages if m.topic.split("/")[2:4] == [kind, "line-3"]]  # noqa: E731
        assert ignition.wait_for(lambda s: spb("NBIRTH") and spb("DBIRTH") and spb("DDATA"), 30), \
            [m.topic for m in ignition.messages]
        rebirth = encode([Metric("Node Control/Rebirth", BOOLEAN, True)], int(time.time() * 1000), 0)
        ignition.client.publish("spBv1.0/linewatch/NCMD/line-3", rebirth, qos=0)
        assert ignition.wait_for(lambda s: len(spb("NBIRTH")) == 2, 30)
        assert _publish_as("line-4", broker, ca, "spBv1.0/linewatch/NBIRTH/line-3", b"").is_failure

        # Device B may neither speak for device A nor hear its commands.
        forged = _publish_as("line-4", broker, ca, "linewatch/line-3/result", b'{"forged": true}')
        assert forged.is_failure and forged.value == 0x87, forged  # Not authorized
        assert _publish_as("line-4", broker, ca, "linewatch/line-3/cmd/pause", b"{}").is_failure
        assert _publish_as("dashboard", broker, ca, "linewatch/line-3/cmd/pause", b"{}").is_failure
        # The station hears every device's samples and acknowledges them; it may command nothing else.
        assert wait_until(lambda: station.inbox.stats()["counters"].get("acknowledged", 0) >= 5, 60), \
            station.inbox.stats()
        assert all(s["device_id"] == "line-3" for s in station.inbox.samples())
        assert _publish_as("station", broker, ca, "linewatch/line-3/cmd/pause", b"{}").is_failure
        assert _publish_as("line-4", broker, ca, "linewatch/line-3/sample", b"{}").is_failure
        assert not wait_until(lambda: any(isinstance(r, dict) and r.get("forged")
                                          for r in dashboard.on("line-3/result")), timeout=1)
        assert not intruder.messages  # mosquitto grants the subscription, and delivers none of A's commands to B
        stop_daemon(proc)
    finally:
        proc.kill()
        for client in (dashboard, home_assistant, operator, intruder, ignition):
            client.close()
        station.stop()


def test_a_device_the_acl_does_not_cover_says_so_in_its_log(tiny: Path, make_broker: Callable[..., MosquittoBroker],
                                                            tmp_path: Path) -> None:
    """Device line-3's id under user line-4's name: the broker drops every message; the log says why, once."""
    broker, ca = _shipped_broker(make_broker, tmp_path)
    proc = start_daemon(tiny, broker.url, "line-3", tmp_path / "state", "--username", "line-4", "--password-file",
                        str(_secret(tmp_path, "line-4")), "--ca-file", str(ca))
    try:
        state = tmp_path / "state"  # results made, and all of them answered by the broker (with a refusal)
        assert wait_until(lambda: spooled_results(state, "line-3") >= 20 and spool_backlog(state, "line-3") == 0,
                          timeout=60)
        _, err = stop_daemon(proc)
    finally:
        proc.kill()
    refusals = [line for line in err.splitlines() if "refuses our messages" in line]
    assert len(refusals) == 1 and "let user line-4 write linewatch/line-3/#" in refusals[0], err[-3000:]
