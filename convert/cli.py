"""``linewatch convert``: registered by ``linewatch.edge.cli``; TensorFlow loads only when run.

The options come from ``ConvertConfig``, where each default is written once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from linewatch.convert.config import ConvertConfig
from linewatch.edge import options
from linewatch.edge.errors import UsageError
from linewatch.train.cli import add_verbose
from linewatch.train.console import quiet_native_logs


def _cmd_convert(args: argparse.Namespace) -> int:
    from linewatch.convert.quantize import convert

    cfg: ConvertConfig = options.build(ConvertConfig, options.given(args, ConvertConfig), noun="setting")
    with quiet_native_logs(Path(args.out).with_suffix(".tensorflow.log"), args.verbose):
        report = convert(args.run_dir, args.out, cfg)
    parity = report["parity"]
    if report.get("task") == "anomaly":
        print(f"wrote {args.out}: test AUROC float {parity['float_auroc']}, int8 {parity['quantized_auroc']}, rank "
              f"correlation {parity['rank_correlation']} on {parity['test_images']} test photos", flush=True)
        return 0
    print(f"wrote {args.out}: float accuracy {parity['float_accuracy']:.4f}, {cfg.quantization} accuracy "
          f"{parity['quantized_accuracy']:.4f}, top-1 agreement {parity['agreement']:.4f} "
          f"on {parity['test_images']} test images", flush=True)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from linewatch.convert.tune import TARGETS, parse_duration, parse_kib, parse_ms, tune

    if args.target not in TARGETS:
        raise UsageError(f"unknown target {args.target}: choose from {', '.join(TARGETS)}")
    if args.trials is not None and args.trials < 1:
        raise UsageError("--trials must be at least 1")
    with quiet_native_logs(Path(args.out) / "tensorflow.log", args.verbose):
        tune(args.data, args.out, parse_duration(args.budget), target=args.target,
             max_latency_ms=parse_ms(args.max_latency) if args.max_latency else None,
             max_kib=parse_kib(args.max_size) if args.max_size else None, trials=args.trials, seed=args.seed)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a trained run folder to a self-describing int8 .tflite")
    p.add_argument("run_dir", help="the -o folder of 'linewatch train'")
    p.add_argument("-o", "--out", required=True, help="the .tflite to write (its report goes beside it)")
    options.add_options(p, ConvertConfig)
    add_verbose(p, "OUT with the ending .tensorflow.log")
    p.set_defaults(handler=_cmd_convert)

    p = sub.add_parser("tune", help="search architectures and settings under a device's latency and size budget; "
                                    "every candidate converted to int8 and timed")
    p.add_argument("data", help="dataset folder or CSV, as for train")
    p.add_argument("-o", "--out", required=True, help="folder for the trials, tune.json, report.html; the best run "
                                                      "is kept as OUT/best")
    p.add_argument("--budget", default="20m", help="wall time for the whole search, e.g. 20m, 90s, 1h")
    p.add_argument("--target", default="pi4", choices=["host", "pi4", "pi5"], help="where the latency limit applies")
    p.add_argument("--max-latency", help="int8 latency limit on the target, e.g. 20ms (default: none)")
    p.add_argument("--max-size", help="int8 model size limit, e.g. 512k or 2m (default: none)")
    p.add_argument("--trials", type=int, help="stop after this many candidates (default: when the budget ends)")
    p.add_argument("--seed", type=int, default=0, help="the split, the sampler and the initial weights")
    add_verbose(p, "OUT/tensorflow.log")
    p.set_defaults(handler=_cmd_tune)
