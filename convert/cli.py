"""``linewatch convert``: registered by ``linewatch.edge.cli``; TensorFlow loads only when run.

The options come from ``ConvertConfig``, where each default is written once.
"""

from __future__ import annotations

import argparse

from linewatch.convert.config import ConvertConfig
from linewatch.edge import options


def _cmd_convert(args: argparse.Namespace) -> int:
    from linewatch.convert.quantize import convert

    cfg: ConvertConfig = options.build(ConvertConfig, options.given(args, ConvertConfig), noun="setting")
    report = convert(args.run_dir, args.out, cfg)
    parity = report["parity"]
    print(f"wrote {args.out}: float accuracy {parity['float_accuracy']:.4f}, {cfg.quantization} accuracy "
          f"{parity['quantized_accuracy']:.4f}, top-1 agreement {parity['agreement']:.4f} "
          f"on {parity['test_images']} test images", flush=True)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a trained run folder to a self-describing int8 .tflite")
    p.add_argument("run_dir", help="the -o folder of 'linewatch train'")
    p.add_argument("-o", "--out", required=True, help="the .tflite to write (its report goes beside it)")
    options.add_options(p, ConvertConfig)
    p.set_defaults(handler=_cmd_convert)
