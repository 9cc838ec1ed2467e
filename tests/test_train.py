"""Training for real, on tiny data: determinism, resume, class weights, backbones, schedule, console, reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from linewatch.edge.simulator import write_dataset
from linewatch.train.config import TrainConfig
from linewatch.train.trainer import class_weights, train
from tests.conftest import TrainedModel
from tests.helpers import CLI, ENV, ROOT, linewatch

pytestmark = pytest.mark.workstation

PNG = b"\x89PNG\r\n\x1a\n"


def _weights(run: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(run / "model.keras").get_weights()


def test_same_seed_same_model(photos: Path, tmp_path: Path) -> None:
    runs = []
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        train(TrainConfig(data=str(photos), out=str(tmp_path / name), epochs=2, size=(32, 32), seed=seed, report=False))
        runs.append(_weights(tmp_path / name))
    assert all(np.array_equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not all(np.array_equal(x, y) for x, y in zip(runs[0], runs[2]))
    assert (tmp_path / "a" / "splits.json").read_text() == (tmp_path / "b" / "splits.json").read_text()


def test_ctrl_c_keeps_the_best_model_and_resume_finishes_the_run(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Ctrl-C as in a terminal: a shell that started this run in the background (nohup ... &) had it ignored,
    # and the child would inherit that
    proc = subprocess.Popen([*CLI, "train", str(photos), "-o", str(run), "--epochs", "60",
                             "--patience", "60", "--size", "32"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = run / "checkpoint.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (state.is_file() and json.loads(state.read_text())["epoch"] >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: keeping the best model so far" in out
    stopped_at = json.loads(state.read_text())["epoch"]
    assert 3 <= stopped_at < 60
    assert (run / "model.keras").is_file() and json.loads((run / "metrics.json").read_text())["interrupted"]
    history = json.loads((run / "metrics.json").read_text())["history"]["loss"]

    resumed = linewatch("train", str(photos), "-o", str(run), "--resume")
    assert f"resuming after epoch {stopped_at}" in resumed.stdout
    final = json.loads((run / "metrics.json").read_text())
    assert len(final["history"]["loss"]) == 60 and not final["interrupted"]
    assert final["history"]["loss"][:stopped_at] == history[:stopped_at]


def test_resume_without_a_checkpoint_is_an_error(photos: Path, tmp_path: Path) -> None:
    proc = linewatch("train", str(photos), "-o", str(tmp_path / "new"), "--resume", check=False)
    assert proc.returncode == 3 and "nothing to resume" in proc.stderr


def test_class_weights_favour_rare_classes() -> None:
    y = np.array([0] * 90 + [1] * 10)
    weights = class_weights(y, 2)
    assert weights is not None and weights[1] == pytest.approx(9 * weights[0])
    assert class_weights(np.array([0] * 50 + [1] * 45), 2) is None
    assert class_weights(np.array([0] * 50 + [1] * 45), 2, "on") is not None
    assert class_weights(y, 2, "off") is None


def test_unbalanced_data_trains_with_class_weights(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", per_class=12, seed=2)
    for f in sorted((tmp_path / "d" / "crack").glob("*.jpg"))[4:]:
        f.unlink()
    proc = linewatch("train", str(tmp_path / "d"), "-o", str(tmp_path / "run"), "--epochs", "1", "--size", "32")
    # 34 training images, 2 of them cracks: inverse frequency gives crack 34 / (5 * 2) = 3.4.
    assert "class weights: crack 3.40, empty 0.85" in proc.stdout, proc.stdout


def _published_style_weights(path: Path, alpha: float) -> list[np.ndarray]:
    """A "no top" MobileNetV2 weight file laid out as Keras publishes them (the Keras 2 HDF5 layout that
    ``mobilenet_v2_weights_tf_dim_ordering_tf_kernels_<alpha>_<size>_no_top.h5`` has), with random weights."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(11)
    donor = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=alpha, include_top=False, weights=None)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, donor)
    return donor.get_weights()


def test_mobilenetv2_loads_a_published_style_weight_file_and_fine_tunes(photos: Path, tmp_path: Path) -> None:
    weights = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    donor = _published_style_weights(weights, 0.35)
    run = tmp_path / "run"
    proc = linewatch("train", str(photos), "-o", str(run), "--epochs", "1", "--fine-tune-epochs", "1", "--size", "32",
                     "--architecture", "mobilenetv2", "--width", "0.35", "--weights", str(weights))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]["loss"]) == 2  # one epoch of head training, one of fine-tuning
    assert "fine-tuning the top 30% of the backbone" in proc.stdout
    import hashlib

    import keras

    model = keras.models.load_model(run / "model.keras")
    assert model.name == "linewatch_mobilenetv2"
    card = json.loads((run / "model_card.json").read_text())
    assert card["architecture"] == "mobilenetv2"
    # The card records which file the backbone came from, so a plant can tell the published one from another.
    assert card["training"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # The frozen layers of the backbone kept the file's values exactly (batch norm is never unfrozen).
    backbone = model.get_layer("backbone")
    assert any(np.array_equal(w, d) for w, d in zip(backbone.get_weights(), donor) if w.ndim == 1)


def test_weights_for_another_width_are_refused_in_one_line(photos: Path, tmp_path: Path) -> None:
    weights = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    _published_style_weights(weights, 1.0)
    proc = linewatch("train", str(photos), "-o", str(tmp_path / "r"), "--size", "32", "--architecture", "mobilenetv2",
                     "--width", "0.35", "--weights", str(weights), check=False)
    assert proc.returncode == 2, proc.stderr
    assert weights.name in proc.stderr and "--width" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_weights_file_is_named(photos: Path, tmp_path: Path) -> None:
    proc = linewatch("train", str(photos), "-o", str(tmp_path / "r"), "--architecture", "mobilenetv2",
                     "--weights", str(tmp_path / "imagenet.h5"), check=False)
    assert proc.returncode == 2 and "imagenet.h5" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_augmentation_is_a_usage_error(photos: Path, tmp_path: Path) -> None:
    proc = linewatch("train", str(photos), "-o", str(tmp_path / "r"), "--augment", "rotate,blur", check=False)
    assert proc.returncode == 2 and "unknown augmentation blur" in proc.stderr


def test_run_folder_has_report_and_documented_metrics(trained: TrainedModel) -> None:
    for name in ("model.keras", "labels.txt", "model_card.json", "splits.json", "metrics.json", "report.html"):
        assert (trained.run / name).stat().st_size > 0, name
    for name in ("learning_curves.png", "confusion_matrix.png", "pr_curves.png", "misclassified.png"):
        png = (trained.run / name).read_bytes()
        assert png.startswith(PNG) and len(png) > 5000, name
        assert name in (trained.run / "report.html").read_text()
    metrics = json.loads((trained.run / "metrics.json").read_text())
    test = metrics["test"]
    labels = set((trained.run / "labels.txt").read_text().split())
    assert 0 <= test["accuracy"] <= 1 and set(test["per_class"]) == labels
    assert {"miss_rate", "false_alarm_rate"} <= set(test["defect"])
    card = json.loads((trained.run / "model_card.json").read_text())
    assert card["input"]["resize_mode"] == "stretch" and card["dataset"]["fingerprint"]


def test_evaluate_scores_keras_and_tflite_alike(trained: TrainedModel, tmp_path: Path) -> None:
    results = {}
    for name, model in (("keras", trained.run / "model.keras"), ("tflite", trained.model)):
        proc = linewatch("evaluate", str(model), str(trained.run), "-o", str(tmp_path / name), "--json")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert json.loads((tmp_path / name / "metrics.json").read_text()) == results[name]
        assert (tmp_path / name / "report.html").is_file()
    keras_test, tflite_test = results["keras"]["test"], results["tflite"]["test"]
    assert keras_test.keys() == tflite_test.keys()
    assert keras_test["count"] == tflite_test["count"] == trained.parity["test_images"]
    assert keras_test["accuracy"] == pytest.approx(trained.parity["float_accuracy"])
    assert tflite_test["accuracy"] == pytest.approx(trained.parity["quantized_accuracy"])


def test_bad_training_files_never_reach_splits_json(tmp_path: Path) -> None:
    """Corrupt images, wrong extensions, a non-UTF-8 file name: training goes on, and splits.json lists only
    what was read, so the test count is the test split's length."""
    data_dir = tmp_path / "d"
    write_dataset(data_dir, per_class=8, seed=5)
    (data_dir / "ok" / "broken.png").write_text("not a picture")  # an image by its name only
    (data_dir / "ok" / "half.jpg").write_bytes(next((data_dir / "ok").glob("*.jpg")).read_bytes()[:300])
    (data_dir / "crack" / "notes.txt").write_text("shift B")
    odd = next((data_dir / "stain").glob("*.jpg"))
    os.rename(odd, os.path.join(os.fsencode(data_dir / "stain"), b"stain_\xff\xfe.jpg"))  # Latin-1 camera name
    (data_dir / "empty_class").mkdir()  # a class folder still waiting for photos
    run = tmp_path / "run"
    proc = linewatch("train", str(data_dir), "-o", str(run), "--epochs", "1", "--size", "32")
    assert "Traceback" not in proc.stderr
    splits = json.loads((run / "splits.json").read_text())
    listed = [entry["path"] for split in ("train", "val", "test") for entry in splits[split]]
    assert not any(p.endswith(("broken.png", "half.jpg", "notes.txt")) for p in listed)
    assert any("stain_" in p for p in listed)  # the odd name was read like any other
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["count"] == len(splits["test"])
    assert sum(m["support"] for m in metrics["test"]["per_class"].values()) == len(splits["test"])
    assert {Path(s["path"]).name for s in metrics["skipped"]} == {"broken.png", "half.jpg", "notes.txt", "empty_class"}
    card = json.loads((run / "model_card.json").read_text())
    assert card["labels"] == ["crack", "empty", "ok", "scratch", "stain"]
    # The report counts what was used: 40 photos read, 4 files skipped, whatever scanning first found.
    assert sum(card["dataset"]["counts"].values()) == len(listed) == 40
    assert f"dataset {data_dir}: 40 images in 5 classes" in proc.stdout and "4 file(s) skipped" in proc.stdout
    assert "40 images in 5 classes" in (run / "report.html").read_text()


def test_the_schedule_follows_the_epochs_run_and_stops_when_converged(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = linewatch("train", str(photos), "-o", str(run), "--size", "32", "--epochs", "150", "--patience", "2",
                     "--lr-drops", "1", "--learning-rate", "0.004")
    metrics = json.loads((run / "metrics.json").read_text())
    rates = metrics["history"]["learning_rate"]
    assert len(rates) < 150 and "converged: no better validation loss after 1 learning-rate drops" in proc.stdout
    # One drop of x0.2 on a plateau, then the run ends: the schedule is the epochs actually run.
    assert sorted(set(rates), reverse=True) == pytest.approx([0.004, 0.0008])
    assert rates.index(0.0008) >= 2 and "plateau: learning rate down to 0.0008" in proc.stdout
    assert 1 <= metrics["best_epoch"] <= len(rates)


def test_a_time_budget_keeps_the_best_epoch_so_far(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = linewatch("train", str(photos), "-o", str(run), "--size", "32", "--epochs", "500", "--patience", "500",
                     "--minutes", "0.1")
    assert "time budget of 0.1 min reached" in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert 1 <= len(metrics["history"]["loss"]) < 500 and (run / "model.keras").is_file()


def test_the_console_shows_linewatch_progress_and_no_tensorflow_noise(photos: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = linewatch("train", str(photos), "-o", str(run), "--size", "32", "--epochs", "3")
    noises = ("oneDNN", "E0000", "absl", "cpu_feature_guard", "I0000", "NodeDef", "WARNING: All log")
    for noise in noises:
        assert noise not in proc.stderr and noise not in proc.stdout, noise
    lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3 and all("val_acc" in line and "left)" in line for line in lines), proc.stdout
    # What TensorFlow said is kept, not lost: in the run folder. (Which of its messages it prints depends on its
    # release: 2.21 no longer announces oneDNN.)
    kept = (run / "tensorflow.log").read_text()
    said = [noise for noise in noises if noise in kept]
    assert said, kept
    verbose = linewatch("train", str(photos), "-o", str(tmp_path / "v"), "--size", "32", "--epochs", "1", "--verbose")
    assert any(noise in verbose.stderr for noise in said) and not (tmp_path / "v" / "tensorflow.log").exists()


def test_from_a_run_keeps_its_splits_grows_the_head_and_compares_on_the_same_test_photos(photos: Path,
                                                                                         tmp_path: Path) -> None:
    import shutil

    import cv2

    run1, run2, data2 = tmp_path / "run1", tmp_path / "run2", tmp_path / "data2"
    linewatch("train", str(photos), "-o", str(run1), "--epochs", "2", "--size", "32", "--width", "0.5")
    shutil.copytree(photos, data2)
    (data2 / "inverted").mkdir()  # a defect RUN1 never saw: ok parts in negative
    for n, path in enumerate(sorted((photos / "ok").glob("*.jpg"))[:8]):
        cv2.imwrite(str(data2 / "inverted" / f"inverted{n}.png"), 255 - cv2.imread(str(path)))
    (data2 / "_inbox" / "cell-1").mkdir(parents=True)  # the station's inbox is not a class
    shutil.copy(next((photos / "ok").glob("*.jpg")), data2 / "_inbox" / "cell-1" / "1780000000000-1.jpg")
    moved = sorted((data2 / "scratch").glob("*.jpg"))[0]  # relabelled: it keeps its split, with its new label
    moved.rename(data2 / "crack" / moved.name)

    refused = linewatch("train", str(data2), "-o", str(tmp_path / "bad"), "--from", str(run1), "--size", "48",
                        check=False)
    assert refused.returncode == 2 and "keeps its size" in refused.stderr and "Traceback" not in refused.stderr
    linewatch("train", str(data2), "-o", str(run2), "--from", str(run1), "--epochs", "2")

    old_labels = (run1 / "labels.txt").read_text().split()
    assert (run2 / "labels.txt").read_text().split() == [*old_labels, "inverted"]
    assert json.loads((run2 / "train_config.json").read_text())["size"] == [32, 32]
    old, new = (json.loads((run / "splits.json").read_text()) for run in (run1, run2))
    for split in ("train", "val", "test"):
        names = {Path(e["path"]).name for e in new[split]}
        assert {Path(e["path"]).name for e in old[split]} <= names, split
    assert {e["label"] for e in new["test"] if Path(e["path"]).name == moved.name} <= {"crack"}
    assert not any("_inbox" in e["path"] for split in ("train", "val", "test") for e in new[split])
    compare = json.loads((run2 / "metrics.json").read_text())["compare"]
    assert compare["run1_test"]["images"] == len(old["test"]) and compare["classes_added"] == ["inverted"]
    assert compare["per_class"]["inverted"]["images"] >= 1 and compare["per_class"]["inverted"]["run1"] == 0.0
    assert compare["new_test"]["images"] == len(new["test"]) - len(old["test"])
    assert "Compared with" in (run2 / "report.html").read_text()
