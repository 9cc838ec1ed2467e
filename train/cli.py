"""Workstation subcommands (train, evaluate, tune), registered by ``edge.cli``.

TensorFlow loads only when a command runs, so ``linewatch --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os

from edge.errors import UsageError


def parse_size(text: str) -> tuple[int, int]:
    """``96`` or ``96x128`` (height x width) as (height, width)."""
    h, _, w = text.lower().partition("x")
    try:
        height, width = int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size: use N or HxW, e.g. 96x128") from None
    if not (16 <= height <= 1024 and 16 <= width <= 1024):
        raise argparse.ArgumentTypeError(f"size {text} is out of range: 16 to 1024 pixels a side")
    return height, width


def _augment(text: str) -> tuple[str, ...]:
    from train.augment import parse_augment

    try:
        return parse_augment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our progress


def _config(args: argparse.Namespace):
    from train.trainer import TrainConfig

    if args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    if args.weights and not os.path.isfile(args.weights):
        raise UsageError(f"weights file {args.weights} does not exist (nothing is downloaded: pass a local file)")
    if args.weights and args.architecture != "mobilenetv2":
        raise UsageError("--weights goes with --architecture mobilenetv2")
    return TrainConfig(data=args.data, out=args.out, epochs=args.epochs, size=args.size,
                       resize_mode=args.resize_mode, batch_size=args.batch_size, learning_rate=args.learning_rate,
                       patience=args.patience, architecture=args.architecture, width=args.width,
                       weights=args.weights, fine_tune_epochs=args.fine_tune_epochs, augment=args.augment,
                       augment_strength=args.augment_strength, class_weights=args.class_weights, seed=args.seed)


def _cmd_train(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from train.trainer import train

    metrics = train(_config(args), resume=args.resume)
    return 130 if metrics["interrupted"] else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from train.evaluate import evaluate

    result = evaluate(args.model, args.data, args.out, labels=args.labels)
    if args.json:
        print(json.dumps(result))
    else:
        from train.metrics import describe

        print(f"{describe(result['test'])}; report in {result['report']}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    _quiet_tensorflow()
    from train.tune import tune

    if args.budget < 1:
        raise UsageError("--budget must be at least 1 run")
    tune(args.data, args.out, budget=args.budget, epochs=args.epochs, seed=args.seed)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CNN from labeled photos (a folder per class, train/val/test, or a CSV)")
    p.add_argument("data", help="DATA/<class>/*.jpg, DATA/{train,val,test}/<class>/, or a CSV of path,label")
    p.add_argument("-o", "--out", required=True, help="run folder to write (model, labels, card, metrics, report)")
    p.add_argument("--epochs", type=int, default=40, help="most epochs; early stopping usually ends sooner")
    p.add_argument("--size", type=parse_size, help="model input, N or HxW (default: from the photos, long side <= 128)")
    p.add_argument("--resize-mode", default="stretch", choices=["stretch", "crop", "letterbox"])
    p.add_argument("--architecture", default="cnn", choices=["cnn", "mobilenetv2"])
    p.add_argument("--width", type=float, default=1.0, help="width multiplier (alpha for mobilenetv2)")
    p.add_argument("--weights", help="local backbone weights file for mobilenetv2 (never downloaded)")
    p.add_argument("--fine-tune-epochs", type=int, default=10, help="second stage with --weights: top of backbone")
    p.add_argument("--augment", type=_augment, default=("rotate", "zoom", "color", "noise"),
                   help="comma list of flip,rotate,zoom,color,noise, or none (default: rotate,zoom,color,noise)")
    p.add_argument("--augment-strength", type=float, default=0.5, help="0 (none) to 1 (strong)")
    p.add_argument("--class-weights", default="auto", choices=["auto", "on", "off"],
                   help="weight rare classes up (auto: when the largest class is >1.5x the smallest)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=8, help="epochs without a better validation loss before stopping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="go on from the last checkpoint in the run folder")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics and report of a .keras or .tflite model on labeled photos")
    p.add_argument("model", help="model.keras of a run folder, or a .tflite")
    p.add_argument("data", help="a run folder (its test split) or a dataset folder/CSV (all of its images)")
    p.add_argument("-o", "--out", help="where metrics.json and report.html go (default: beside the model)")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--json", action="store_true", help="print the metrics object as JSON")
    p.set_defaults(handler=_cmd_evaluate)

    p = sub.add_parser("tune", help="budgeted random search over learning rate, width, augmentation, input size")
    p.add_argument("data", help="dataset folder or CSV, as for train")
    p.add_argument("-o", "--out", required=True, help="folder for the runs; the best is kept as OUT/best")
    p.add_argument("--budget", type=int, default=8, help="number of training runs")
    p.add_argument("--epochs", type=int, default=25, help="most epochs per run")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_tune)
