"""Workstation subcommands (train, evaluate), registered by ``linewatch.edge.cli``.

TensorFlow loads only when a command runs, so ``linewatch --help`` stays instant. The options
of ``train`` come from ``TrainConfig``, where each default is written once.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from linewatch.edge import options
from linewatch.edge.errors import INTERRUPTED, UsageError
from linewatch.train.config import TrainConfig
from linewatch.train.console import quiet_native_logs


def _config(args: argparse.Namespace) -> TrainConfig:
    cfg: TrainConfig = options.build(TrainConfig, {"data": args.data, "out": args.out,
                                                   **options.given(args, TrainConfig)}, noun="setting")
    if cfg.weights and not os.path.isfile(cfg.weights):
        raise UsageError(f"weights file {cfg.weights} does not exist (nothing is downloaded: pass a local file)")
    if cfg.weights and not (cfg.anomaly_method == "features" if cfg.task == "anomaly" else
                            cfg.architecture == "mobilenetv2"):
        raise UsageError("--weights goes with --architecture mobilenetv2, or with --task anomaly "
                         "--anomaly-method features")
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from linewatch.train.trainer import train

    cfg = _config(args)
    with quiet_native_logs(Path(cfg.out) / "tensorflow.log", args.verbose):
        metrics = train(cfg, resume=args.resume)
    return INTERRUPTED if metrics["interrupted"] else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from linewatch.train.evaluate import evaluate

    with quiet_native_logs(Path(args.out or Path(args.model).parent) / "tensorflow.log", args.verbose):
        result = evaluate(args.model, args.data, args.out, labels=args.labels)
    if args.json:
        print(json.dumps(result))
    else:
        from linewatch.train.metrics import describe

        print(f"{describe(result['test'])}; report in {result['report']}")
    return 0


def add_verbose(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help=f"show TensorFlow's own messages on the terminal (otherwise they go to {where})")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CNN from labeled photos (a folder per class, train/val/test, or a CSV)")
    p.add_argument("data", help=TrainConfig.model_fields["data"].description)
    p.add_argument("-o", "--out", required=True, help=TrainConfig.model_fields["out"].description)
    options.add_options(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="go on from the last checkpoint in the run folder")
    add_verbose(p, "OUT/tensorflow.log")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("evaluate", help="metrics and report of a .keras or .tflite model on labeled photos")
    p.add_argument("model", help="model.keras of a run folder, or a .tflite")
    p.add_argument("data", help="a run folder (its test split) or a dataset folder/CSV (all of its images)")
    p.add_argument("-o", "--out", help="where metrics.json and report.html go (default: beside the model)")
    p.add_argument("--labels", help="labels file, for a .tflite without a model card")
    p.add_argument("--json", action="store_true", help="print the metrics object as JSON")
    add_verbose(p, "tensorflow.log beside the report")
    p.set_defaults(handler=_cmd_evaluate)
