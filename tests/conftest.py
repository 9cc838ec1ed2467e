"""Fixtures and test tiers.

Tiers (markers), so that the device's own tests run on a Pi with only ``linewatch[edge,test]``:

- ``unit``: no broker, no model file; pure logic and real OpenCV.
- ``device``: the committed tiny int8 models (tests/fixtures/, made by make_tiny_model.py)
  with the real LiteRT interpreter; no TensorFlow.
- ``broker``: a real mosquitto on a loopback port.
- ``workstation``: TensorFlow: training, conversion, and the session's freshly trained model.

A test gets its markers from the fixtures it uses (and ``workstation`` from its module);
``pytest -m "not workstation"`` is the device tier.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from linewatch.edge.demo.brokers import MosquittoBroker
from linewatch.edge.simulator import write_dataset
from tests.helpers import FIXTURES, linewatch

# Property tests draw the same examples on every run, so a red CI can be reproduced; `--hypothesis-seed` explores.
settings.register_profile("linewatch", derandomize=True, deadline=None)
settings.load_profile("linewatch")

TIERS = {"trained": "workstation", "uint8_model": "workstation", "anomaly_model": "workstation",
         "tiny": "device", "tiny_uint8": "device", "tiny_anomaly": "device",
         "broker": "broker", "own_broker": "broker", "make_broker": "broker"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        marks = {TIERS[name] for name in fixtures & TIERS.keys()}
        marks |= {m.name for m in item.iter_markers() if m.name in ("workstation", "device", "broker")}
        for mark in marks or {"unit"}:
            item.add_marker(mark)


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    """One mosquitto for the session; tests that stop it use ``own_broker`` or ``make_broker``."""
    b = MosquittoBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Start mosquittos of a test's own (persistence, TLS, passwords); all are stopped at the end."""
    started: list[MosquittoBroker] = []

    def make(**options: object) -> MosquittoBroker:
        b = MosquittoBroker(workdir=tmp_path / f"mosquitto-{len(started)}", **options)  # type: ignore[arg-type]
        b.start()
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def own_broker(make_broker: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    """A mosquitto for one test, free to be stopped and restarted on its port."""
    return make_broker()


@pytest.fixture(scope="session")
def tiny() -> Path:
    """The committed int8 model (int8 I/O) of the synthetic line: 5 classes, 72x96, with its card."""
    return FIXTURES / "tiny.tflite"


@pytest.fixture(scope="session")
def tiny_anomaly() -> Path:
    """The committed int8 anomaly model of the same line, learned from ok and empty photos only, 72x96."""
    return FIXTURES / "tiny_anomaly.tflite"


@pytest.fixture(scope="session")
def tiny_uint8() -> Path:
    """The same model with uint8 input and output, as the Edge TPU wants."""
    return FIXTURES / "tiny_uint8.tflite"


@pytest.fixture(scope="session")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten photos a class of the synthetic line, for quick training runs that only check behaviour."""
    folder = tmp_path_factory.mktemp("photos")
    write_dataset(folder, per_class=10, seed=4)
    return folder


@pytest.fixture(scope="session")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images no model here was trained on (another seed): 12 per class, folder per class."""
    folder = tmp_path_factory.mktemp("holdout")
    write_dataset(folder, per_class=12, seed=99)
    return folder


@dataclass(frozen=True)
class TrainedModel:
    data: Path
    run: Path
    model: Path

    @property
    def parity(self) -> dict:
        return self.report["parity"]

    @property
    def report(self) -> dict:
        return json.loads(self.model.with_suffix(".report.json").read_text())


def line_photos(folder: Path) -> Path:
    """The session's photos of the synthetic line: 150 a class, seed 3."""
    linewatch("demo-data", str(folder), "--per-class", "150", "--seed", "3")
    return folder


# A training process's timeout: beyond its own time budget (--minutes: 10 by default, 13 for the anomaly model),
# which ends a run slow on a busy machine with its best epoch, and the rest of its work.
TRAINING_TIMEOUT_S = 1000


def _train_classifier(data: Path, base: Path) -> TrainedModel:
    run, model = base / "run", base / "model.tflite"
    linewatch("train", str(data), "-o", str(run), "--epochs", "30", timeout=TRAINING_TIMEOUT_S)
    linewatch("convert", str(run), "-o", str(model))
    return TrainedModel(data, run, model)


def _train_anomaly(data: Path, base: Path) -> tuple[Path, Path]:
    """The photos learned from their good parts and empty belt only, converted to int8: (run, model).

    A half-width network trained until its learning rate has dropped twice: the full width
    stopped at 30 epochs while still learning, and where it had got to depended on the
    machine's arithmetic (test AUROC 0.85 on one build machine, 0.73 on another, same seed;
    this one gave 0.89, 0.87 and 0.94 for seeds 0 to 2 in about the same time). Its 60 epochs took 525 s beside the
    classifier's training and the device tier (make test); 13 minutes leave room for a slower machine before the
    budget would end it at another epoch than here."""
    run, model = base / "run", base / "anomaly.tflite"
    linewatch("train", str(data), "-o", str(run), "--task", "anomaly", "--good", "ok,empty",
              "--epochs", "60", "--width", "0.5", "--minutes", "13", timeout=TRAINING_TIMEOUT_S)
    linewatch("convert", str(run), "-o", str(model))
    return run, model


@dataclass(frozen=True)
class SessionModels:
    classifier: Future[TrainedModel] | None
    anomaly: Future[tuple[Path, Path]] | None


@pytest.fixture(scope="session")
def session_models(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionModels]:
    """The session's two trained models, made at the same time by the CLI in processes of their own.

    Training leaves part of this machine's two cores idle (TensorFlow's own threads wait on each
    other); two trainings side by side use them. Only the models this session's tests use are made.
    """
    used = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    data = line_photos(tmp_path_factory.mktemp("line") / "data")
    with ThreadPoolExecutor(2) as pool:
        yield SessionModels(
            pool.submit(_train_classifier, data, tmp_path_factory.mktemp("trained")) if "trained" in used else None,
            pool.submit(_train_anomaly, data, tmp_path_factory.mktemp("anomaly")) if "anomaly_model" in used else None)


@pytest.fixture(scope="session")
def trained(session_models: SessionModels) -> TrainedModel:
    """A small dataset, a model trained on it and converted to int8, all through the CLI."""
    assert session_models.classifier is not None
    return session_models.classifier.result()


@pytest.fixture(scope="session")
def anomaly_model(session_models: SessionModels) -> tuple[Path, Path]:
    """An anomaly model learned from the session's good photos, converted to int8: (run, model)."""
    assert session_models.anomaly is not None
    return session_models.anomaly.result()


@pytest.fixture(scope="session")
def uint8_model(trained: TrainedModel) -> Path:
    """The same run converted with uint8 input and output, as the Edge TPU wants."""
    out = trained.model.with_name("model_uint8.tflite")
    linewatch("convert", str(trained.run), "-o", str(out), "--io", "uint8", "--no-compare")
    return out
