"""A candidate model in shadow on a running device, over a real mosquitto: compared, promoted or aborted by the rules
of ``deploy --auto``, refused when it fails, and every frame where it disagrees sent to be labelled."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from linewatch.edge.comms.payloads import TOPIC_PAYLOADS
from linewatch.edge.device.ota import candidate_path
from linewatch.edge.model import artifact
from linewatch.edge.model.card import InputSpec
from linewatch.edge.station.client import StationClient
from tests.helpers import CLI, ENV, ROOT, Collector, linewatch, start_daemon, stop_daemon
from tests.test_ota import _results_keep_coming, _variant
from tests.test_samples import TOKEN, _station


def _device(tiny: Path, broker, tmp_path: Path, device: str, *extra: str):
    state = tmp_path / "state"
    state.mkdir()
    running = state / "model.tflite"
    running.write_bytes(tiny.read_bytes())
    sub = Collector(broker.url, f"linewatch/{device}/#")
    proc = start_daemon(running, broker.url, device, state, "--stats-interval", "1", *extra)
    assert sub.wait_for(lambda s: len(s.on("/result")) >= 5, timeout=60), proc.stderr
    return running, sub, proc


def _deploy(*args: str) -> tuple[int, str, str]:
    proc = linewatch("deploy", *args, "--timeout", "60", check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_candidate_in_shadow_is_compared_then_promoted_by_auto_and_rollback_still_goes_back(
        tiny: Path, broker, tmp_path: Path) -> None:
    running, sub, proc = _device(tiny, broker, tmp_path, "shadow-1")
    v1 = artifact.load(tiny).card.version
    try:
        v2 = _variant(tiny, tmp_path / "v2.tflite", version="v2")  # the same network: it agrees on every frame
        code, out, err = _deploy(str(v2), "--broker", broker.url, "--device", "shadow-1", "--shadow", "--auto",
                                 "--min-frames", "40", "--json")
        assert code == 0, err
        verdict = json.loads(out.strip().splitlines()[-1])["shadow-1"]
        assert verdict["promoted"] and verdict["reason"].startswith("promoted by --auto: ")
        shadows = sub.on("shadow-1/shadow")
        for message in shadows:
            TOPIC_PAYLOADS["shadow"].model_validate(message, strict=True)
        running_ones = [m for m in shadows if m["state"] == "running"]
        assert running_ones and all(m["agreement"] in (None, 1.0) for m in running_ones)
        final = shadows[-1]
        assert final["state"] == "promoted" and final["frames"] >= 40 and final["candidate"]["version"] == "v2"
        assert final["defect_rate"]["current"] == final["defect_rate"]["candidate"]
        assert final["latency_ms"]["candidate"] > 0 and final["cpu_percent"]["candidate"] > 0
        assert all(set(row) == {label} for label, row in final["confusion"].items())  # the diagonal only
        assert _results_keep_coming(sub, "v2")
        assert artifact.load(running).version == "v2" and not candidate_path(running).exists()

        sub.client.publish("linewatch/shadow-1/cmd/rollback", b'{"id": "back"}', qos=1)
        assert _results_keep_coming(sub, v1)
        code, _, err = _deploy("--promote", "--broker", broker.url, "--device", "shadow-1")
        assert code == 4 and "no candidate runs in shadow" in err.strip().splitlines()[-1]
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()


def test_a_candidate_that_disagrees_is_aborted_and_what_it_disagreed_on_is_sent_to_be_labelled(
        tiny: Path, broker, tmp_path: Path) -> None:
    running, sub, proc = _device(tiny, broker, tmp_path, "shadow-2", "--samples", "--set", "samples.per_hour=3600",
                                 "--set", "samples.below=0.01")
    v1 = artifact.load(tiny).card.version
    try:
        model = artifact.load(tiny)
        swapped = tmp_path / "swapped.tflite"  # the same network with its labels in reverse: it disagrees
        swapped.write_bytes(artifact.pack(model.flatbuffer, model.card.model_copy(update={"version": "swapped"}),
                                          model.labels[::-1]))
        code, _, err = _deploy(str(swapped), "--broker", broker.url, "--device", "shadow-2", "--shadow", "--auto",
                               "--min-frames", "30")
        assert code == 5 and "aborted by --auto: agreement" in err.strip().splitlines()[-1], err
        final = sub.on("shadow-2/shadow")[-1]
        assert final["state"] == "aborted" and final["agreement"] < 0.9
        assert _results_keep_coming(sub, v1)
        assert artifact.load(running).version == v1 and not candidate_path(running).exists()
        disagreements = [s for s in sub.on("/sample") if isinstance(s, dict) and s["reason"] == "disagreement"]
        assert disagreements, [s["reason"] for s in sub.on("/sample") if isinstance(s, dict)]
        first = disagreements[0]
        assert first["candidate"]["version"] == "swapped" and first["candidate_label"] != first["label"]
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()


def test_a_candidate_that_fails_on_the_device_changes_nothing_and_says_why(tiny: Path, broker,
                                                                            tmp_path: Path) -> None:
    running, sub, proc = _device(tiny, broker, tmp_path, "shadow-3")
    v1 = artifact.load(tiny).card.version
    try:
        bad = _variant(tiny, tmp_path / "shape.tflite", version="v9", input=InputSpec(height=10, width=10))
        code, _, err = _deploy(str(bad), "--broker", broker.url, "--device", "shadow-3", "--shadow", "--auto")
        assert code == 4 and "card says 10x10 pixels" in err.strip().splitlines()[-1], err
        assert sub.wait_for(lambda s: bool(s.on("shadow-3/shadow")), timeout=10)
        failed = sub.on("shadow-3/shadow")[-1]
        assert failed["state"] == "failed" and "10x10" in failed["reason"] and failed["candidate"] is None
        assert _results_keep_coming(sub, v1)
        assert artifact.load(running).version == v1 and not candidate_path(running).exists()
        stop_daemon(proc)
    finally:
        proc.kill()
        sub.close()


def test_the_auto_rules_judge_agreement_defect_rate_and_labelled_disagreements() -> None:
    from linewatch.edge.tools.deploy import Labelled, Rules

    shadow = {"frames": 600, "agreement": 0.82, "defect_rate": {"current": 0.10, "candidate": 0.24}}
    promote, reason = Rules(min_agreement=0.9).judge(shadow)
    assert not promote and "agreement 0.820 < 0.9" in reason and "a change over 0.05" in reason
    assert Rules(min_agreement=0.8, max_defect_rate_change=0.2).judge(shadow)[0]
    # A candidate meant to change the current model's mind: judged on what people said where the two disagreed.
    drift = Rules(min_agreement=0, max_defect_rate_change=1, min_labelled=20, min_labelled_accuracy=0.9)
    assert not drift.judge(shadow, Labelled(12, 12, 0))[0]  # too few labelled yet
    promote, reason = drift.judge(shadow, Labelled(20, 19, 1))
    assert promote and "right on 19, the current model on 1" in reason
    assert not drift.judge(shadow, Labelled(20, 17, 3))[0]  # 85% right: under 90%
    assert not drift.judge(shadow, Labelled(20, 10, 10))[0]


def test_auto_judged_on_labelled_disagreements_waits_for_the_station_and_aborts_a_candidate_that_is_wrong(
        tiny: Path, broker, tmp_path: Path) -> None:
    station = _station(tmp_path, broker.url)
    running, sub, proc = _device(tiny, broker, tmp_path, "shadow-4", "--samples", "--set", "samples.per_hour=3600",
                                 "--set", "samples.below=0.01", "--set", "samples.random_every=0")
    client = StationClient(station.url, TOKEN)
    done = threading.Event()

    def label_as_the_current_model_said() -> None:  # a person who finds the current model right every time
        while not done.is_set():
            for sample in client.call("/api/samples?reason=disagreement")["samples"]:
                client.call("/api/label", {"device_id": sample["device_id"], "sample_id": sample["sample_id"],
                                           "label": sample["label"], "by": "test"})
            done.wait(0.5)

    labeller = threading.Thread(target=label_as_the_current_model_said)
    labeller.start()
    try:
        model = artifact.load(tiny)
        swapped = tmp_path / "swapped.tflite"
        swapped.write_bytes(artifact.pack(model.flatbuffer, model.card.model_copy(update={"version": "swapped"}),
                                          model.labels[::-1]))
        deployed = subprocess.run(
            [*CLI, "deploy", str(swapped), "--broker", broker.url, "--device", "shadow-4", "--shadow", "--auto",
             "--min-frames", "20", "--min-agreement", "0", "--max-defect-rate-change", "1", "--labelled-from",
             station.url, "--min-labelled", "5", "--timeout", "60"], cwd=ROOT, capture_output=True, text=True,
            env={**ENV, "LINEWATCH_STATION_TOKEN": TOKEN}, timeout=300)
        last = deployed.stderr.strip().splitlines()[-1]
        assert deployed.returncode == 5 and "right on 0% of the labelled disagreements" in last, deployed.stderr
        assert "the current model on" in last
        assert artifact.load(running).version == model.card.version
        labelled = client.call("/api/samples?state=labelled&reason=disagreement")["samples"]
        assert len(labelled) >= 5 and all(s["candidate"]["version"] == "swapped" for s in labelled)
        stop_daemon(proc)
    finally:
        done.set()
        labeller.join(10)
        proc.kill()
        sub.close()
        station.stop()
