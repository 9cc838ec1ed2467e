"""Workstation subcommands (train, evaluate, tune), registered by ``linewatch.edge.cli``.

TensorFlow loads only when a command runs, so ``linewatch --help`` stays instant. The options
of ``train`` come from ``TrainConfig``, where each default is written once.
"""

from __future__ import annotations

import argparse
import json
import os

from linewatch.edge import options
from linewatch.edge.errors import INTERRUPTED, UsageError
from linewatch.train.config import TrainConfig


def _config(args: argparse.Namespace) -> TrainConfig:
    cfg: TrainConfig = options.build(TrainConfig, {"data": args.data, "out": args.out,
                                                   **options.given(args, TrainConfig)}, noun="setting")
    if cfg.weights and not os.path.isfile(cfg.weights):
        raise UsageError(f"weights file {cfg.weights} does not exist (nothing is downloaded: pass a local file)")
    if cfg.weights and cfg.architecture != "mobilenetv2":
        raise UsageError("--weights goes with --architecture mobilenetv2")
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from linewatch.train.trainer import train

    metrics = train(_config(args), resume=args.resume)
    return INTERRUPTED if metrics["interrupted"] else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from linewatch.train.evaluate import evaluate

    result = evaluate(args.model, args.data, args.out, labels=args.labels)
    if args.json:
        print(json.dumps(result))
    else:
        from linewatch.train.metrics import describe

        print(f"{describe(result['test'])}; report in {result['report']}")
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from linewatch.train.tune import tune

    if args.budget < 1:
        raise UsageError("--budget must be at least 1 run")
    tune(args.data, args.out, budget=args.budget, epochs=args.epochs, seed=args.seed)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CNN from labeled photos (a folder per class, train/val/test, or a CSV)")
    p.add_argument("data", help=TrainConfig.model_fields["data"].description)
    p.add_argument("-o", "--out", required=True, help=TrainConfig.model_fields["out"].description)
    options.add_options(p, TrainConfig)
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
