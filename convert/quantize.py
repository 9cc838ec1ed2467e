"""Post-training quantization with an op audit and a parity gate against the float model.

Most edge projects lose accuracy here without noticing: calibration images prepared
differently from training, too few of them, or float ops left behind that an Edge TPU
cannot run. So calibration uses a class-stratified sample of the run's own training split,
prepared by the same code as training; the converted graph is audited op by op; and the
result is checked on the run's own test split before it is written.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.convert.config import QUANTIZATIONS, ConvertConfig
from linewatch.edge.errors import DataError, GateError, ModelError
from linewatch.edge.files import write_atomic
from linewatch.edge.model import artifact, audit
from linewatch.edge.model.card import InputSpec, ModelCard
from linewatch.edge.model.engine import Engine
from linewatch.train import data
from linewatch.train.metrics import classification_metrics
from linewatch.train.trainer import predict_scores

logger = logging.getLogger(__name__)


def calibration_sample(items: list[data.Item], count: int, seed: int) -> list[data.Item]:
    """Up to ``count`` images, the same share from every class, shuffled; never the first N files."""
    by_class: dict[str, list[data.Item]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    rng = random.Random(seed)
    per_class = max(1, count // max(1, len(by_class)))
    sample: list[data.Item] = []
    for members in by_class.values():
        sample += rng.sample(members, min(per_class, len(members)))
    rng.shuffle(sample)
    return sample[:count]


def tflite_bytes(saved_model: str, quantization: str, io_type: str = "int8",
                 calibration: np.ndarray | None = None, per_tensor: bool = False) -> bytes:
    """Convert an exported SavedModel (the robust route with Keras 3) with one quantization.

    ``per_tensor`` gives int8 weights one scale per tensor instead of one per output channel:
    a smaller file (per-channel parameters are about 12 bytes a channel) at some accuracy
    cost, which the parity gate measures.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        if calibration is None or not len(calibration):
            raise DataError("int8 needs calibration images and none could be read")

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8 if io_type == "int8" else tf.uint8
        converter.inference_output_type = converter.inference_input_type
        converter._experimental_disable_per_channel = per_tensor  # the converter's only switch for it
    return converter.convert()


def engine_for(flatbuffer: bytes, labels: list[str], card: ModelCard, threads: int | None = None) -> Engine:
    """An engine on converted bytes that are not written anywhere yet."""
    return Engine(artifact.ModelArtifact(Path("<converted>"), flatbuffer, card, labels), num_threads=threads)


def latency_ms(engine: Engine, image: np.ndarray, runs: int = 100) -> dict[str, float]:
    """Invoke latency on this host, p50 and p99, after a warm-up."""
    tensor = engine.quantize(image)
    for _ in range(10):
        engine.invoke(tensor)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        engine.invoke(tensor)
        times.append(1000 * (time.perf_counter() - t))
    return {"p50": round(float(np.percentile(times, 50)), 3), "p99": round(float(np.percentile(times, 99)), 3)}


def parity_report(y: np.ndarray, float_scores: np.ndarray, quant_scores: np.ndarray,
                  labels: list[str]) -> dict[str, Any]:
    """Accuracy of each model, their top-1 agreement, and per-class recall of each."""
    f = classification_metrics(y, float_scores, labels)
    q = classification_metrics(y, quant_scores, labels)
    return {
        "float_accuracy": f["accuracy"],
        "quantized_accuracy": q["accuracy"],
        "agreement": float((float_scores.argmax(1) == quant_scores.argmax(1)).mean()) if len(y) else 0.0,
        "test_images": int(len(y)),
        "per_class_recall": {c: {"float": f["per_class"][c]["recall"], "quantized": q["per_class"][c]["recall"],
                                 "support": f["per_class"][c]["support"]} for c in labels},
    }


def gate(parity: dict[str, Any], max_drop: float, max_class_drop: float) -> list[str]:
    """The reasons a converted model is rejected; empty when it passes.

    A class with few test images may lose one of them without failing the gate: in a class
    of 12 images one changed answer is 8 points, which says nothing about quantization.
    """
    failures = []
    drop = 100 * (parity["float_accuracy"] - parity["quantized_accuracy"])
    if drop > max_drop:
        failures.append(f"accuracy dropped {drop:.1f} points (limit {max_drop})")
    for label, r in parity["per_class_recall"].items():
        class_drop = 100 * (r["float"] - r["quantized"])
        limit = max(max_class_drop, 100 / r["support"] + 1e-9) if r["support"] else max_class_drop
        if class_drop > limit:
            failures.append(f"recall of '{label}' dropped {class_drop:.1f} points (limit {limit:.1f})")
    return failures


def _read_run(run_dir: Path) -> tuple[ModelCard, InputSpec, list[str]]:
    if not (run_dir / "model.keras").is_file():
        raise DataError(f"{run_dir} is not a run folder (no model.keras): pass the -o folder of 'linewatch train'")
    card = artifact.read_card(run_dir / "model_card.json")
    if card.input is None:
        raise ModelError(f"{run_dir / 'model_card.json'} does not say the model's input size: train it again")
    return card, card.input, artifact.read_labels(run_dir / "labels.txt")


def _edgetpu_compile(out: Path, flatbuffer: bytes, card: ModelCard, labels: list[str]) -> Path | None:
    """Run ``edgetpu_compiler`` when it is installed; the result carries the same card."""
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / out.name
        bare.write_bytes(flatbuffer)
        proc = subprocess.run([compiler, "-s", "-o", tmp, str(bare)], capture_output=True, text=True)
        compiled = Path(tmp) / f"{out.stem}_edgetpu.tflite"
        if proc.returncode != 0 or not compiled.is_file():
            logger.warning("edgetpu_compiler failed: %s", proc.stdout[-500:] + proc.stderr[-500:])
            return None
        target = out.with_name(f"{out.stem}_edgetpu.tflite")
        write_atomic(target, artifact.pack(compiled.read_bytes(), card.model_copy(update={"delegate": "edgetpu"}),
                                           labels))
        return target


MOBILENET_CLASS = ("mobilenetv2",)  # depthwise convolutions: per-tensor scales often collapse their accuracy


def weight_scale_candidates(choice: str, architecture: str | None) -> list[bool]:
    """The ``per_tensor`` values to try, in order: the smaller file first, when there is a choice."""
    if choice == "per-tensor":
        return [True]
    if choice == "auto" and architecture in MOBILENET_CLASS:
        return [True, False]
    return [False]


def _scales(per_tensor: bool) -> str:
    return "per-tensor" if per_tensor else "per-channel"


def convert(run_dir: Path | str, out: Path | str, cfg: ConvertConfig | None = None,
            calibration_images: np.ndarray | None = None) -> dict[str, Any]:
    """Convert a run folder's model, audit and check it, write the artifact and its report.

    ``calibration_images`` (uint8, N x H x W x 3, prepared like training) replaces the
    stratified sample of the training split. Raises ``GateError`` when the parity gate or
    the op audit rejects the model; the rejected model is kept as ``*.rejected.tflite``.
    """
    from linewatch.train.layers import load_model

    cfg = cfg or ConvertConfig()
    quantization = cfg.quantization
    run_dir, out = Path(run_dir), Path(out)
    card, spec, labels = _read_run(run_dir)
    h, w, mode = spec.height, spec.width, spec.resize_mode
    splits = data.load_splits(run_dir / "splits.json")
    try:
        model: Any = load_model(run_dir / "model.keras")
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load {run_dir / 'model.keras'}: {str(exc).splitlines()[0]}") from None
    if card.task == "anomaly":
        from linewatch.convert.anomaly import check_heat_map_model, convert_anomaly

        check_heat_map_model(model, run_dir / "model.keras")
        return convert_anomaly(run_dir, out, card, labels, model, cfg)
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2 or model.outputs[0].shape[-1] != len(labels):
        raise ModelError(f"{run_dir / 'model.keras'} does not output one vector of {len(labels)} class scores")

    if quantization == "int8" or cfg.compare:
        if calibration_images is None:
            sample = calibration_sample(splits["train"], cfg.calibration, seed=int(card.training.get("seed", 0)))
            calibration_images, _, _, _ = data.load_images(sample, labels, h, w, mode)
        print(f"calibrating on {len(calibration_images)} training images, stratified by class", flush=True)
    x_test, y_test, _, _ = data.load_images(splits["test"], labels, h, w, mode)
    float_scores = predict_scores(model, x_test)

    def convert_one(q: str, per_tensor: bool) -> dict[str, Any]:
        started = time.monotonic()
        flatbuffer = tflite_bytes(saved_model, q, cfg.io, calibration_images, per_tensor)
        engine = engine_for(flatbuffer, labels, card)
        scores = np.stack([engine.predict_pixels(image).scores for image in x_test])
        return {"quantization": q, "per_tensor": per_tensor, "bytes": len(flatbuffer),
                "accuracy": classification_metrics(y_test, scores, labels)["accuracy"],
                "latency_ms": {"1_thread": latency_ms(engine_for(flatbuffer, labels, card, 1), x_test[0]),
                               f"{engine.num_threads}_threads": latency_ms(engine, x_test[0])},
                "convert_seconds": round(time.monotonic() - started, 1), "flatbuffer": flatbuffer, "scores": scores}

    scale_choices = weight_scale_candidates(cfg.weight_scales, card.architecture) if quantization == "int8" \
        else [False]
    others = [q for q in QUANTIZATIONS if q != quantization] if cfg.compare else []
    comparison: list[dict[str, Any]] = []
    scales_rejected: dict[str, list[str]] = {}
    target: dict[str, Any] | None = None  # the conversion kept
    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, verbose=False)
        steps = len(scale_choices) + len(others)
        for step, per_tensor in enumerate(scale_choices, start=1):
            print(f"[{step}/{steps}] converting to {quantization}"
                  + (f" ({_scales(per_tensor)} weight scales)" if quantization == "int8" else ""), flush=True)
            target = convert_one(quantization, per_tensor)
            rejected_by = gate(parity_report(y_test, float_scores, target["scores"], labels), cfg.max_drop,
                               cfg.max_class_drop)
            if not rejected_by or step == len(scale_choices):
                break
            scales_rejected[_scales(per_tensor)] = rejected_by
            print(f"  {_scales(per_tensor)} scales rejected by the gate ({'; '.join(rejected_by)}): trying "
                  f"{_scales(not per_tensor)}", flush=True)
        assert target is not None  # scale_choices is never empty
        if len(scale_choices) > 1:
            print(f"  kept {_scales(target['per_tensor'])} weight scales", flush=True)
        comparison.append(target)
        for step, q in enumerate(others, start=len(scale_choices) + 1):
            print(f"[{step}/{steps}] converting to {q} for the comparison", flush=True)
            comparison.append(convert_one(q, False))
    comparison = [{k: v for k, v in row.items() if k not in ("flatbuffer", "scores")} for row in comparison]

    flatbuffer = target["flatbuffer"]
    bare = artifact.ModelArtifact(out, flatbuffer, card, labels)
    op_list = audit.ops(bare)
    parity = parity_report(y_test, float_scores, target["scores"], labels)
    failures = gate(parity, cfg.max_drop, cfg.max_class_drop)
    float_ops = sorted({op.name for op in op_list if op.is_float})
    if quantization == "int8" and float_ops:
        message = f"float ops remain in the int8 model: {', '.join(float_ops)}"
        if cfg.allow_float_ops:
            logger.warning("%s (allowed by --allow-float-ops)", message)
        else:
            failures.append(message + " (--allow-float-ops to accept)")
    not_on_tpu = sorted({op.name for op in op_list if not op.edgetpu})
    io = audit.io_details(bare)
    parity["accepted"] = not failures
    full_card = card.model_copy(update={
        "quantization": quantization, "per_tensor": target["per_tensor"], "io": io,
        "calibration_images": int(len(calibration_images)) if quantization == "int8" and calibration_images is not None
        else 0,
        "parity": {k: v for k, v in parity.items() if k != "per_class_recall"}})
    report = {"parity": parity, "quantizations": comparison,
              "weight_scales": {"kept": _scales(target["per_tensor"]), "rejected_by_gate": scales_rejected},
              "ops": audit.summary(op_list),
              "edgetpu_unsupported_ops": not_on_tpu, "io": io, "failures": failures}
    print_report(report)
    write_or_reject(out, flatbuffer, full_card, labels, report, failures,
                    "Try more calibration images (--calibration), another width, or quantization-aware training")
    if quantization == "int8":
        report["edgetpu_model"] = str(_edgetpu_compile(out, flatbuffer, full_card, labels) or "")
    out.with_suffix(".report.json").write_text(json.dumps(report, indent=1))
    return report


def write_or_reject(out: Path, flatbuffer: bytes, card: ModelCard, labels: list[str], report: dict[str, Any],
                    failures: list[str], advice: str) -> None:
    """Write the model; or keep it as ``.rejected.tflite`` beside its report and raise ``GateError`` saying why."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if failures:
        rejected = out.with_suffix(".rejected.tflite")
        write_atomic(rejected, artifact.pack(flatbuffer, card.model_copy(update={"rejected": failures}), labels))
        out.with_suffix(".rejected.report.json").write_text(json.dumps(report, indent=1))
        raise GateError("; ".join(failures) + f" (kept as {rejected} for inspection). {advice}")
    write_atomic(out, artifact.pack(flatbuffer, card, labels))


def print_report(report: dict[str, Any]) -> None:
    """The comparison table and the audit, for the terminal."""
    rows = report["quantizations"]
    threads = [k for k in rows[0]["latency_ms"]]
    print("\nquantization   size KiB   accuracy   " + "   ".join(f"p50/p99 ms {t.replace('_', ' ')}" for t in threads))
    for r in rows:
        lat = "   ".join(f"{r['latency_ms'][t]['p50']:>7.3f}/{r['latency_ms'][t]['p99']:<7.3f}     " for t in threads)
        print(f"{r['quantization']:<14} {r['bytes'] / 1024:>8.1f}   {r['accuracy']:.4f}     {lat}")
    p = report["parity"]
    print(f"parity: float {p['float_accuracy']:.4f}, converted {p['quantized_accuracy']:.4f}, "
          f"top-1 agreement {p['agreement']:.4f} on {p['test_images']} test images")
    ops = ", ".join(f"{o['op']} x{o['count']}" for o in report["ops"])
    print(f"ops: {ops}")
    unsupported = report["edgetpu_unsupported_ops"]
    print("Edge TPU: every op can be mapped" if not unsupported else
          f"Edge TPU: cannot map {', '.join(unsupported)} (those run on the CPU)", flush=True)
