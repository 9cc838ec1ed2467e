"""The whole path for real: generated data → train → int8 convert → daemon → a subscriber."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from linewatch.edge.model import artifact
from linewatch.edge.model.engine import find_runtime
from linewatch.edge.simulator import conveyor_truth
from tests.conftest import TrainedModel
from tests.helpers import Collector, linewatch, summary


def test_folder_run_publishes_one_correct_result_per_image(tiny: Path, holdout: Path, broker) -> None:
    images = sorted(holdout.rglob("*.jpg"))
    sub = Collector(broker.url, "linewatch/e2e-folder/#")
    try:
        proc = linewatch("run", "--model", str(tiny), "--source", str(holdout),
                         "--device-id", "e2e-folder", "--broker", broker.url, "--once", "--json")
        assert sub.wait_for(lambda s: len(s.on("/result")) >= len(images), timeout=30)
        results = sub.on("/result")
    finally:
        sub.close()
    assert len(results) == len(images)
    assert sorted(r["path"] for r in results) == sorted(str(p) for p in images)
    assert [r["seq"] for r in results] == list(range(1, len(images) + 1))
    correct = sum(Path(r["path"]).parent.name == r["label"] for r in results)
    assert correct / len(images) >= 0.9, f"{correct}/{len(images)} right"
    assert summary(proc.stdout)["acknowledged"] >= len(images)  # results, events, snapshots


def test_int8_model_matches_float_model(trained: TrainedModel) -> None:
    parity = trained.parity
    assert parity["accepted"]
    assert parity["quantized_accuracy"] >= parity["float_accuracy"] - 0.01
    assert parity["agreement"] >= 0.97
    assert parity["float_accuracy"] >= 0.9


def test_converted_model_is_full_integer(trained: TrainedModel) -> None:
    model = artifact.load(trained.model)
    interpreter = find_runtime().Interpreter(model_content=model.flatbuffer)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
    assert list(inp["shape"]) == [1, 96, 128, 3]
    assert inp["quantization"][0] > 0 and out["quantization"][0] > 0


def test_conveyor_run_labels_the_simulated_line(tiny: Path, broker) -> None:
    sub = Collector(broker.url, "linewatch/e2e-conveyor/#")
    try:
        linewatch("run", "--model", str(tiny), "--source", "conveyor:5", "--device-id", "e2e-conveyor",
                  "--broker", broker.url, "--max-frames", "120")
        assert sub.wait_for(lambda s: len(s.on("/result")) >= 120, timeout=30)
        results = sub.on("/result")
    finally:
        sub.close()
    assert len(results) == 120
    assert all("truth" not in r for r in results)  # ground truth stays with the simulator
    truth = list(itertools.islice(conveyor_truth(5), max(r["frame_id"] for r in results)))
    right = sum(truth[r["frame_id"] - 1] == r["label"] for r in results)
    assert right / len(results) >= 0.85
    assert any(r["defect"] for r in results) and not all(r["defect"] for r in results)
    frame_ids = [r["frame_id"] for r in results]
    assert frame_ids == sorted(frame_ids) and len(set(frame_ids)) == len(frame_ids)


@pytest.mark.workstation
def test_the_demo_console_shows_linewatch_and_no_runtime_noise(tmp_path: Path) -> None:
    """`make demo` runs this command: every step's output, none of TensorFlow's or LiteRT's start-up lines."""
    proc = linewatch("demo", "--workdir", str(tmp_path / "demo"), "--per-class", "20", "--epochs", "3",
                     "--frames", "60")
    console = proc.stdout + proc.stderr
    for noise in ("oneDNN", "E0000", "I0000", "absl", "NodeDef", "WARNING: All log", "cpu_feature_guard",
                  "INFO: Created TensorFlow Lite"):
        assert noise not in console, noise
    assert "epoch   3/3" in proc.stdout and "linewatch demo summary" in proc.stdout
    assert "60 result messages received, 0 missing" in proc.stdout
    # the second act: so little training may give a model the int8 gate refuses; either way it is said
    assert "anomaly model      learned from ok and empty only" in proc.stdout
