"""``linewatch tune``: a search for the most accurate model that the target device runs fast enough.

Where most tuners stop at accuracy, every candidate here is first built, converted to int8
and timed with LiteRT on this machine, its latency scaled to the target (see
:func:`target_factor`), and rejected before any training when it is over the latency or size
budget. The candidates that fit are trained with linewatch's own trainer; Optuna's TPE sampler
proposes them and its successive-halving pruner stops the poor ones after a few epochs. Each
finished candidate is converted to int8 again, trained weights and all, and judged by its
int8 accuracy on the validation split: the test split never takes part in the choice.

The search lives in ``convert`` because it needs both sides: training (``linewatch.train``)
and int8 conversion. The best run is copied to ``OUT/best``, a run folder that
``linewatch convert`` takes as it is; ``OUT/report.html`` holds the table and the Pareto plot.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.convert.quantize import calibration_sample, engine_for, latency_ms, tflite_bytes
from linewatch.edge.errors import UsageError
from linewatch.edge.model.card import InputSpec, ModelCard
from linewatch.edge.model.engine import Engine
from linewatch.train import data
from linewatch.train.config import TrainConfig
from linewatch.train.metrics import classification_metrics
from linewatch.train.trainer import build_model, train, write_run_report

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A device, by its published latency for the reference model (MobileNetV2 1.0, 224x224, int8)."""

    description: str
    reference_ms: float | None  # None: this machine itself
    source: str


# ../shared/reference-figures.md: published figures, not measured by linewatch.
TARGETS = {
    "host": Target("this machine", None, "measured here"),
    "pi4": Target("Raspberry Pi 4, 4 threads, 64-bit OS", 17.0,
                  "MobileNetV2 int8 17 ms, google/XNNPACK README, Raspberry Pi table (2022)"),
    "pi5": Target("Raspberry Pi 5, 4 threads (derived)", round(17.0 * 23.5 / 112.6, 2),
                  "the Pi 4 figure x the Pi 5 / Pi 4 ratio of SSD-MobileNetV2 with TFLite (23.5 / 112.6 ms, "
                  "aallan/benchmarking-ml-on-the-edge): no Pi 5 classifier figure is published"),
}
CNN_WIDTHS = (0.5, 0.75, 1.0, 1.5, 2.0)
MOBILENET_ALPHAS = (0.35, 0.5, 0.75, 1.0)
SIZE_SCALES = (0.75, 1.0, 1.25, 1.5)


def parse_duration(text: str) -> float:
    """``20m``, ``90s``, ``1.5h`` or plain minutes, in seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text) * 60
    except (ValueError, IndexError):
        raise UsageError(f"'{text}' is not a duration: use e.g. 20m, 90s or 1h") from None


def parse_ms(text: str) -> float:
    """``20ms`` or ``20`` in milliseconds."""
    try:
        return float(text.strip().lower().removesuffix("ms"))
    except ValueError:
        raise UsageError(f"'{text}' is not a latency: use e.g. 20ms") from None


def parse_kib(text: str) -> float:
    """``512k``, ``2m``/``2mb`` or plain KiB."""
    text = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = {"k": 1, "m": 1024}.get(text[-1:])
    try:
        return float(text[:-1]) * factor if factor else float(text)
    except ValueError:
        raise UsageError(f"'{text}' is not a size: use e.g. 512k or 2m") from None


def _int8_engine(model: Any, calibration: np.ndarray) -> tuple[int, Engine]:
    """A Keras model converted to int8 with these calibration images: its size and an engine on it."""
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, verbose=False)
        flatbuffer = tflite_bytes(saved, "int8", "int8", calibration)
    labels = [str(i) for i in range(model.outputs[0].shape[-1])]
    card = ModelCard(labels=labels, input=InputSpec(height=calibration.shape[1], width=calibration.shape[2]))
    return len(flatbuffer), engine_for(flatbuffer, labels, card)


def _time_int8(model: Any, calibration: np.ndarray, runs: int = 50) -> tuple[int, float]:
    """Its int8 size and p50 latency here (ms)."""
    size, engine = _int8_engine(model, calibration)
    return size, latency_ms(engine, calibration[0], runs)["p50"]


def reference_ms_here() -> float:
    """The reference model's int8 latency on this machine (all cores), measured in this run.

    Never cached: a shared machine is faster or slower from one hour to the next, and the
    factor is only sound as a ratio of two measurements taken under the same load.
    """
    import keras

    print("measuring the reference model here (MobileNetV2 1.0, 224x224, int8, random weights)", flush=True)
    keras.utils.set_random_seed(0)
    reference = keras.applications.MobileNetV2(input_shape=(224, 224, 3),
                                               weights=None)  # pyright: ignore[reportArgumentType] (random weights)
    calibration = np.random.default_rng(0).integers(0, 256, (8, 224, 224, 3)).astype(np.uint8)
    return _time_int8(reference, calibration, runs=50)[1]


def target_factor(target: str) -> tuple[float, str]:
    """Multiply a latency measured here by this to predict it on ``target``; and how it was found.

    The factor is the published reference latency on the target over the same reference
    measured here, each machine with all its cores: a ratio of two measurements of one
    model, not a guess per op. It carries the error of any such transfer (XNNPACK's x86 and
    Arm kernels differ, and a small model gains less from four cores than a large one).
    """
    spec = TARGETS[target]
    if spec.reference_ms is None:
        return 1.0, "latency measured on this machine"
    here = reference_ms_here()
    return spec.reference_ms / here, (f"{spec.description}: reference {spec.reference_ms} ms there ({spec.source}) "
                                      f"over {here:.2f} ms measured here, a factor of {spec.reference_ms / here:.2f}")


@dataclass
class Candidate:
    """One trial's settings and what became of it."""

    number: int
    architecture: str
    width: float
    size: tuple[int, int]
    learning_rate: float
    augment_strength: float
    status: str = "running"  # done, out of time (cut by the budget, still judged), pruned, over latency/size, best
    kib: float = 0.0
    host_ms: float = 0.0
    target_ms: float = 0.0
    epochs: int = 0
    val_accuracy: float | None = None  # float model, best epoch
    int8_val_accuracy: float | None = None
    test_accuracy: float | None = None  # reported, never used to choose
    seconds: float = 0.0

    def settings(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "width": self.width, "size": self.size,
                "learning_rate": self.learning_rate, "augment_strength": self.augment_strength}


def _scaled(base: tuple[int, int], factor: float, floor: int) -> tuple[int, int]:
    return tuple(max(floor, int(round(v * factor / 8) * 8)) for v in base)  # type: ignore[return-value]


def _suggest(trial: Any, base: tuple[int, int]) -> dict[str, Any]:
    architecture = trial.suggest_categorical("architecture", ["cnn", "mobilenetv2"])
    width = trial.suggest_categorical("cnn_width" if architecture == "cnn" else "alpha",
                                      list(CNN_WIDTHS if architecture == "cnn" else MOBILENET_ALPHAS))
    scale = trial.suggest_categorical("size_scale", list(SIZE_SCALES))
    return {"architecture": architecture, "width": width,
            "size": _scaled(base, scale, 32 if architecture == "mobilenetv2" else 16),
            "learning_rate": round(trial.suggest_float("learning_rate", 5e-4, 5e-3, log=True), 6),
            "augment_strength": round(trial.suggest_float("augment_strength", 0.2, 0.8), 2)}


def _int8_accuracy(run: Path, items: list[data.Item], classes: list[str], size: tuple[int, int],
                   calibration: np.ndarray) -> tuple[float, int, float]:
    """Int8 accuracy of a trained run on ``items``, with its size and latency here."""
    from linewatch.train.layers import load_model

    nbytes, engine = _int8_engine(load_model(run / "model.keras"), calibration)
    x, y, _, _ = data.load_images(items, classes, *size)
    scores = np.stack([engine.predict_pixels(image).scores for image in x])
    return classification_metrics(y, scores, classes)["accuracy"], nbytes, latency_ms(engine, x[0])["p50"]


HEADER = ("trial  model        width  input    lr        aug   KiB     here ms  target ms  epochs  val    int8 val  "
          "status")


def _row(c: Candidate) -> str:
    def acc(v: float | None) -> str:
        return f"{v:.4f}" if v is not None else "  -   "

    return (f"{c.number:>5}  {c.architecture:<11}  {c.width:<5}  {c.size[0]:>3}x{c.size[1]:<4} "
            f"{c.learning_rate:<8.2g}  {c.augment_strength:<4}  {c.kib:>6.1f}  {c.host_ms:>7.2f}  "
            f"{c.target_ms:>9.2f}  {c.epochs:>6}  {acc(c.val_accuracy)} {acc(c.int8_val_accuracy)}    {c.status}")


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The kept candidates no other kept one beats on int8 accuracy and target latency both."""
    kept = [c for c in candidates if c.int8_val_accuracy is not None]
    return sorted((c for c in kept if not any(
        o is not c and o.int8_val_accuracy >= c.int8_val_accuracy and o.target_ms <= c.target_ms  # type: ignore[operator]
        and (o.int8_val_accuracy > c.int8_val_accuracy or o.target_ms < c.target_ms)  # type: ignore[operator]
        for o in kept)), key=lambda c: c.target_ms)


def tune(source: str, out: str, budget_seconds: float, target: str = "pi4", max_latency_ms: float | None = None,
         max_kib: float | None = None, trials: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Search, write ``OUT/tune.json``, ``OUT/report.html`` and ``OUT/best``; returns the summary."""
    import optuna

    started = time.monotonic()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    dataset = data.scan(source)
    splits = data.split(dataset, seed)
    base = data.auto_size(splits["train"])
    factor, factor_note = target_factor(target)
    print(f"target: {factor_note}", flush=True)
    limits = ", ".join(([f"latency <= {max_latency_ms:g} ms on {target}"] if max_latency_ms else [])
                       + ([f"size <= {max_kib:g} KiB"] if max_kib else [])) or "none"
    print(f"budget {budget_seconds / 60:.1f} min; limits: {limits}; validation split chooses, the test split "
          f"only reports\n\n{HEADER}", flush=True)
    calibration = calibration_sample(splits["train"], 64, seed)
    candidates: list[Candidate] = []
    deadline = started + budget_seconds

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=6, reduction_factor=3))
    # The defaults go first: the search can only improve on what plain `linewatch train` gives.
    study.enqueue_trial({"architecture": "cnn", "cnn_width": 1.0, "size_scale": 1.0, "learning_rate": 2e-3,
                         "augment_strength": 0.5})

    def objective(trial: Any) -> float:
        c = Candidate(number=trial.number + 1, **_suggest(trial, base))
        candidates.append(c)
        trial_started = time.monotonic()
        run = root / f"trial-{c.number:03d}"
        cfg = TrainConfig(data=source, out=str(run), seed=seed, report=False, **c.settings())
        try:
            import keras

            keras.utils.set_random_seed(seed)
            cal, _, _, _ = data.load_images(calibration, dataset.classes, *c.size)
            size, host_ms = _time_int8(build_model(cfg, len(dataset.classes), *c.size), cal)
            c.kib, c.host_ms, c.target_ms = size / 1024, host_ms, host_ms * factor
            if max_latency_ms and c.target_ms > max_latency_ms:
                c.status = "over latency"
                raise optuna.TrialPruned()
            if max_kib and c.kib > max_kib:
                c.status = "over size"
                raise optuna.TrialPruned()
            cfg.minutes = max(0.1, (deadline - time.monotonic()) / 60)

            pruned = False

            def report(epoch: int, logs: dict[str, float]) -> bool:
                nonlocal pruned
                trial.report(float(logs.get("val_accuracy", 0.0)), epoch)
                c.epochs = epoch
                pruned = bool(trial.should_prune())
                return pruned

            metrics = train(cfg, on_epoch=report, quiet=True)
            history = metrics["history"]
            c.val_accuracy = history["val_accuracy"][metrics["best_epoch"] - 1]
            c.test_accuracy = metrics["test"]["accuracy"]
            if pruned:
                c.status = "pruned"
                raise optuna.TrialPruned()
            c.int8_val_accuracy, size, host_ms = _int8_accuracy(run, splits["val"], dataset.classes, c.size, cal)
            c.kib, c.host_ms, c.target_ms = size / 1024, host_ms, host_ms * factor
            c.status = ("stopped" if metrics["interrupted"] else
                        "out of time" if time.monotonic() >= deadline else "done")
            return c.int8_val_accuracy
        finally:
            c.seconds = round(time.monotonic() - trial_started, 1)
            if c.status == "running":
                c.status = "failed"
            print(_row(c), flush=True)

    try:
        study.optimize(objective, n_trials=trials, timeout=budget_seconds, catch=(),
                       callbacks=[lambda study, trial: study.stop() if time.monotonic() > deadline else None])
    except KeyboardInterrupt:
        print("\ninterrupted: keeping the best candidate so far", flush=True)
    finished = [c for c in candidates if c.int8_val_accuracy is not None]
    if not finished:
        raise UsageError("no candidate fit the limits and finished training: raise --max-latency or --max-size, "
                         "or give a longer --budget")
    best = max(finished, key=lambda c: (c.int8_val_accuracy, c.val_accuracy, -c.target_ms))
    best.status = "best"
    if (root / "best").exists():
        shutil.rmtree(root / "best")
    shutil.copytree(root / f"trial-{best.number:03d}", root / "best",
                    ignore=shutil.ignore_patterns("checkpoint.*", "best.weights.h5"))
    write_run_report(root / "best")
    front = pareto_front(candidates)
    summary = {"target": target, "factor": factor, "factor_note": factor_note, "max_latency_ms": max_latency_ms,
               "max_kib": max_kib, "budget_seconds": budget_seconds, "seconds": round(time.monotonic() - started, 1),
               "best": best.number, "pareto": [c.number for c in front],
               "candidates": [asdict(c) for c in candidates]}
    (root / "tune.json").write_text(json.dumps(summary, indent=1))
    pareto_plot(candidates, front, best, max_latency_ms, target, root / "pareto.png")
    _write_report(root, summary, candidates, best)
    print(f"\nbest: trial {best.number} ({best.architecture} width {best.width}, {best.size[0]}x{best.size[1]}), "
          f"int8 validation accuracy {best.int8_val_accuracy:.4f}, {best.target_ms:.2f} ms on {target}, "
          f"{best.kib:.0f} KiB; test accuracy {best.test_accuracy:.4f}\n"
          f"kept as {root / 'best'}: linewatch convert {root / 'best'} -o model.tflite\n"
          f"report: {root / 'report.html'}", flush=True)
    return summary


def pareto_plot(candidates: list[Candidate], front: list[Candidate], best: Candidate, max_latency_ms: float | None,
                target: str, path: Path) -> None:
    """Int8 validation accuracy against target latency and against size; the front and the choice marked."""
    from linewatch.train.report import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    kept = [c for c in candidates if c.int8_val_accuracy is not None]
    for ax, key, label in ((axes[0], "target_ms", f"int8 latency on {target} (ms)"),
                           (axes[1], "kib", "int8 model size (KiB)")):
        for arch, marker in (("cnn", "o"), ("mobilenetv2", "s")):
            pts = [c for c in kept if c.architecture == arch]
            ax.scatter([getattr(c, key) for c in pts], [c.int8_val_accuracy for c in pts], marker=marker,
                       alpha=0.7, label=arch)
        rejected = [c for c in candidates if c.status.startswith("over")]
        if rejected and key == "target_ms":
            ax.scatter([c.target_ms for c in rejected], [min(c.int8_val_accuracy or 1 for c in kept)] * len(rejected),
                       marker="x", color="grey", label="over budget (not trained)")
        if key == "target_ms" and front:
            ax.plot([c.target_ms for c in front], [c.int8_val_accuracy for c in front], "-", color="black",
                    alpha=0.5, label="Pareto front")
        if key == "target_ms" and max_latency_ms:
            ax.axvline(max_latency_ms, color="red", linestyle="--", label="latency limit")
        for c in kept:
            ax.annotate(str(c.number), (getattr(c, key), c.int8_val_accuracy), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        ax.scatter([getattr(best, key)], [best.int8_val_accuracy], s=220, marker="*", color="gold",
                   edgecolor="black", zorder=5, label="chosen")
        ax.set_xlabel(label)
        ax.set_ylabel("int8 accuracy (validation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("linewatch tune: accuracy against cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_report(root: Path, summary: dict[str, Any], candidates: list[Candidate], best: Candidate) -> None:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if v < 1.5 else f"{v:.2f}"
        if isinstance(v, (tuple, list)):
            return "x".join(map(str, v))
        return html.escape(str(v if v is not None else "-"))

    keys = ("number", "architecture", "width", "size", "learning_rate", "augment_strength", "kib", "target_ms",
            "epochs", "val_accuracy", "int8_val_accuracy", "test_accuracy", "seconds", "status")
    rows = "".join("<tr>" + "".join(f"<td>{cell(getattr(c, k))}</td>" for k in keys) + "</tr>" for c in candidates)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>linewatch tune</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}</style></head><body>"
            f"<h1>linewatch tune: {html.escape(root.name)}</h1>"
            f"<p>Target: {html.escape(summary['factor_note'])}. Latency limit: "
            f"{summary['max_latency_ms'] or 'none'} ms; size limit: {summary['max_kib'] or 'none'} KiB. "
            f"{len(candidates)} candidates in {summary['seconds'] / 60:.1f} min. Chosen on int8 validation accuracy; "
            f"the test accuracy is shown, never used.</p>"
            f"<p><b>Best: trial {best.number}</b>, kept as <code>best/</code>: "
            f"<code>linewatch convert {html.escape(str(root / 'best'))} -o model.tflite</code></p>"
            "<img src='pareto.png' alt='Pareto plot'>"
            "<table><tr>" + "".join(f"<th>{k.replace('_', ' ')}</th>" for k in keys) + f"</tr>{rows}</table>"
            "</body></html>")
    (root / "report.html").write_text(page)
