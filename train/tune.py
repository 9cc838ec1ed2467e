"""``linewatch tune``: a budgeted random search, chosen on the validation split only.

The test split stays untouched by the choice, so the winner's test accuracy is honest.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from linewatch.train import data
from linewatch.train.trainer import TrainConfig, train


@dataclass(frozen=True)
class Trial:
    learning_rate: float
    width: float
    augment_strength: float
    size: tuple[int, int]


def sample_trials(budget: int, base_size: tuple[int, int], seed: int) -> list[Trial]:
    """``budget`` random settings: log-uniform learning rate, a width, an augmentation strength, a size."""
    rng = random.Random(seed)

    def scaled(factor: float) -> tuple[int, int]:
        return tuple(max(16, int(round(v * factor / 8) * 8)) for v in base_size)  # type: ignore[return-value]

    return [Trial(learning_rate=round(10 ** rng.uniform(math.log10(5e-4), math.log10(5e-3)), 5),
                  width=rng.choice((0.5, 0.75, 1.0, 1.5)),
                  augment_strength=round(rng.uniform(0.2, 0.8), 2),
                  size=scaled(rng.choice((0.75, 1.0, 1.25))))
            for _ in range(budget)]


def _val_score(run: Path) -> tuple[float, float]:
    history = json.loads((run / "metrics.json").read_text())["history"]
    best = min(range(len(history["val_loss"])), key=history["val_loss"].__getitem__)
    return history["val_accuracy"][best], -history["val_loss"][best]


def tune(source: str, out: str, budget: int, epochs: int = 25, seed: int = 0) -> list[dict[str, Any]]:
    """Train ``budget`` runs into ``OUT/run-NN``, print a table, keep the best as ``OUT/best``."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    dataset = data.scan(source)
    base = data.auto_size(data.split(dataset, seed)["train"])
    rows: list[dict[str, Any]] = []
    for i, trial in enumerate(sample_trials(budget, base, seed), start=1):
        run = root / f"run-{i:02d}"
        print(f"\n[{i}/{budget}] {asdict(trial)}", flush=True)
        metrics = train(TrainConfig(data=source, out=str(run), epochs=epochs, size=trial.size,
                                    learning_rate=trial.learning_rate, width=trial.width,
                                    augment_strength=trial.augment_strength, seed=seed, report=False))
        val_accuracy, neg_loss = _val_score(run)
        rows.append({"run": run.name, **asdict(trial), "val_accuracy": val_accuracy, "val_loss": -neg_loss,
                     "test_accuracy": metrics["test"]["accuracy"], "interrupted": metrics["interrupted"]})
        if metrics["interrupted"]:
            break
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    if (root / "best").exists():
        shutil.rmtree(root / "best")
    shutil.copytree(root / best["run"], root / "best")
    (root / "tune.json").write_text(json.dumps({"best": best["run"], "runs": rows}, indent=1))
    print("\nrun      lr        width  augment  size      val_acc  val_loss  test_acc")
    for r in rows:
        mark = "  <- best" if r is best else ""
        print(f"{r['run']:<8} {r['learning_rate']:<9g} {r['width']:<6} {r['augment_strength']:<8} "
              f"{r['size'][0]}x{r['size'][1]:<6} {r['val_accuracy']:.4f}   {r['val_loss']:.4f}    "
              f"{r['test_accuracy']:.4f}{mark}", flush=True)
    print(f"best run kept as {root / 'best'} (chosen on validation accuracy, then loss)", flush=True)
    return rows
