"""An anomaly model to full int8, gated by what matters for it: the ranking of its scores.

A classifier is gated on accuracy; an anomaly model's worth is how well its score separates
good photos from anomalous ones, so the gate compares the float and int8 models' AUROC on the
run's test split (when it has anomalous photos) and the rank correlation of their scores on
every test photo. Calibration uses good photos only: ranges stretched to cover defects too
(synthetic ones were tried) leave too few steps where good photos and faint defects differ,
and the AUROC fell by 0.05 to 0.1; a defect's activations may saturate, which keeps it above
the threshold. The held-out good photos are among them: the memory's distance is 0 on the
training photos it holds, so those alone would give its output no range at all. A model with a
memory is also calibrated on one black frame, which matches no good photo: its distance is the
memory's ceiling, so int8 resolves distances up to it rather than tying every anomaly at the
farthest good photo. The int8 model's own scores set its threshold again, on the
same held-out good photos as training.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.convert.config import ConvertConfig
from linewatch.edge.errors import ModelError
from linewatch.edge.model import artifact, audit
from linewatch.edge.model.card import ModelCard
from linewatch.edge.model.engine import Engine, heat_map_peaks
from linewatch.train import data
from linewatch.train.anomaly import MEMORY_METHODS, auroc, heat_maps, ranks, threshold_for

MAX_AUROC_DROP = 0.01
# Loose on purpose: among good photos the order is noise, and defects that saturate the heat map tie. It catches
# a model int8 has scrambled; good against bad is the AUROC's to judge.
MIN_RANK_CORRELATION = 0.8


def int8_scores(engine: Engine, x: np.ndarray) -> np.ndarray:
    """Raw scores (largest heat-map cell) of the converted model, in blocks."""
    maps = [engine.dequantize(engine.invoke(engine.quantize(x[i : i + 32]))) for i in range(0, len(x), 32)]
    return heat_map_peaks(np.concatenate(maps)[..., 0]) if maps else np.zeros(0)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's: 1.0 when both models order the photos the same way."""
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1]) if len(a) > 1 else 1.0


def convert_anomaly(run_dir: Path, out: Path, card: ModelCard, labels: list[str], model: Any,
                    cfg: ConvertConfig) -> dict[str, Any]:
    """Convert, gate and write an anomaly run's model; raises ``GateError`` when int8 ranks photos differently."""
    from linewatch.convert.quantize import engine_for, latency_ms, tflite_bytes, write_or_reject

    assert card.input is not None and card.anomaly is not None  # the anomaly trainer writes both
    spec, splits = card.input, data.load_splits(run_dir / "splits.json")
    h, w, mode = spec.height, spec.width, spec.resize_mode
    good = set(card.good_labels)

    def load(name: str) -> tuple[np.ndarray, np.ndarray]:
        classes = sorted({label for _, label in splits[name]})
        x, y, _, _ = data.load_images(splits[name], classes, h, w, mode)
        return x, np.isin(np.array(classes)[y], list(good)) if len(y) else np.zeros(0, bool)

    x_train, good_train = load("train")
    x_val, good_val = load("val")
    rng = np.random.default_rng(int(card.training.get("seed", 0)))
    calibration = np.concatenate([x_train[good_train][rng.permutation(int(good_train.sum()))[: cfg.calibration]],
                                  x_val[good_val]])
    if card.anomaly.method in MEMORY_METHODS:  # a black frame, the farthest photo there is: see the docstring
        calibration = np.concatenate([calibration, np.zeros_like(calibration[:1])])
    print(f"calibrating on {len(calibration)} good photos, {int(good_val.sum())} of them held out", flush=True)
    x_test, good_test = load("test")
    float_test = heat_map_peaks(heat_maps(model, x_test))
    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, verbose=False)
        print("[1/1] converting to int8", flush=True)
        flatbuffer = tflite_bytes(saved_model, "int8", cfg.io, calibration.astype(np.uint8))
    engine = engine_for(flatbuffer, labels, card)
    int8_test = int8_scores(engine, x_test)
    scale = threshold_for(int8_scores(engine, x_val[good_val]), card.anomaly.false_alarm)
    has_bad = bool(len(x_test)) and not good_test.all()
    parity: dict[str, Any] = {
        "test_images": int(len(x_test)),
        "rank_correlation": round(rank_correlation(float_test, int8_test), 4),
        "float_auroc": round(auroc(float_test[good_test], float_test[~good_test]), 4) if has_bad else None,
        "quantized_auroc": round(auroc(int8_test[good_test], int8_test[~good_test]), 4) if has_bad else None,
        "score_scale": {"float": card.anomaly.score_scale, "quantized": scale},
    }
    failures = []
    if has_bad and parity["float_auroc"] - parity["quantized_auroc"] > MAX_AUROC_DROP:
        failures.append(f"AUROC dropped from {parity['float_auroc']} to {parity['quantized_auroc']} "
                        f"(limit {MAX_AUROC_DROP})")
    if parity["rank_correlation"] < MIN_RANK_CORRELATION:
        failures.append(f"int8 orders the test photos differently (rank correlation {parity['rank_correlation']}, "
                        f"limit {MIN_RANK_CORRELATION})")
    op_list = audit.ops(artifact.ModelArtifact(out, flatbuffer, card, labels))
    float_ops = sorted({op.name for op in op_list if op.is_float})
    if float_ops and not cfg.allow_float_ops:
        failures.append(f"float ops remain in the int8 model: {', '.join(float_ops)} (--allow-float-ops to accept)")
    parity["accepted"] = not failures
    io = audit.io_details(artifact.ModelArtifact(out, flatbuffer, card, labels))
    full_card = card.model_copy(update={
        "quantization": "int8", "io": io, "calibration_images": int(len(calibration)), "parity": parity,
        "anomaly": card.anomaly.model_copy(update={"score_scale": scale})})
    report = {"task": "anomaly", "parity": parity, "ops": audit.summary(op_list), "io": io, "failures": failures,
              "quantizations": [{"quantization": "int8", "bytes": len(flatbuffer),
                                 "auroc": parity["quantized_auroc"],
                                 "latency_ms": {"1_thread": latency_ms(engine_for(flatbuffer, labels, card, 1),
                                                                       x_test[0] if len(x_test) else x_val[0]),
                                                f"{engine.num_threads}_threads":
                                                    latency_ms(engine, x_test[0] if len(x_test) else x_val[0])}}]}
    print(f"parity: AUROC float {parity['float_auroc']}, int8 {parity['quantized_auroc']}; rank correlation "
          f"{parity['rank_correlation']} on {parity['test_images']} test photos; int8 threshold {scale:.4g} "
          f"(float {card.anomaly.score_scale:.4g})", flush=True)
    write_or_reject(out, flatbuffer, full_card, labels, report, failures,
                    "Try more calibration images (--calibration) or another width")
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=1))
    return report


def check_heat_map_model(model: Any, path: Path) -> None:
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 4 or model.outputs[0].shape[-1] != 1:
        raise ModelError(f"{path} does not output one heat map: train it again with --task anomaly")
