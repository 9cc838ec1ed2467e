"""Shared fixtures: a real mosquitto on a loopback port, and one tiny trained model per session.

The model is made through the real commands (``linewatch demo-data``, ``train``, ``convert``)
once per session and cached, so every test that needs a ``.tflite`` uses the same one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.broker import MosquittoBroker

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


def linewatch(*args: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the real ``linewatch`` command line in its own process (a daemon gets a fresh state dir)."""
    if "run" in args[:3] and "--state-dir" not in args:
        args = (*args, "--state-dir", tempfile.mkdtemp(prefix="linewatch-state-"))
    proc = subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=ENV, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"linewatch {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    """One mosquitto for the session; tests that stop it use ``own_broker`` instead."""
    b = MosquittoBroker()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A mosquitto for one test, free to be stopped, killed and restarted on its port."""
    b = MosquittoBroker(workdir=tmp_path / "mosquitto")
    b.start()
    yield b
    b.stop()


@dataclass(frozen=True)
class TrainedModel:
    data: Path
    run: Path
    model: Path
    holdout: Path  # images the model never saw, from another seed

    @property
    def parity(self) -> dict:
        return self.report["parity"]

    @property
    def report(self) -> dict:
        return json.loads(self.model.with_suffix(".report.json").read_text())


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A small dataset, a model trained on it and converted to int8, all through the CLI."""
    base = tmp_path_factory.mktemp("trained")
    data, run, model, holdout = base / "data", base / "run", base / "model.tflite", base / "holdout"
    linewatch("demo-data", str(data), "--per-class", "150", "--seed", "3")
    linewatch("demo-data", str(holdout), "--per-class", "12", "--seed", "99")
    linewatch("train", str(data), "-o", str(run), "--epochs", "30")
    linewatch("convert", str(run), "-o", str(model))
    return TrainedModel(data, run, model, holdout)


@pytest.fixture(scope="session")
def uint8_model(trained: TrainedModel) -> Path:
    """The same run converted with uint8 input and output, as the Edge TPU wants."""
    out = trained.model.with_name("model_uint8.tflite")
    linewatch("convert", str(trained.run), "-o", str(out), "--io", "uint8", "--no-compare")
    return out
