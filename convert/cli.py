"""``linewatch convert``: registered by ``edge.cli``; TensorFlow loads only when run."""

from __future__ import annotations

import argparse
import os


def _cmd_convert(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our progress
    from convert.quantize import convert

    report = convert(args.run_dir, args.out, quantization=args.quantization, io_type=args.io,
                     calibration=args.calibration, max_drop=args.max_drop, allow_float_ops=args.allow_float_ops,
                     compare=not args.no_compare, per_tensor=args.per_tensor)
    parity = report["parity"]
    print(f"wrote {args.out}: float accuracy {parity['float_accuracy']:.4f}, {args.quantization} accuracy "
          f"{parity['quantized_accuracy']:.4f}, top-1 agreement {parity['agreement']:.4f} "
          f"on {parity['test_images']} test images", flush=True)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a trained run folder to a self-describing int8 .tflite")
    p.add_argument("run_dir", help="the -o folder of 'linewatch train'")
    p.add_argument("-o", "--out", required=True, help="the .tflite to write (its report goes beside it)")
    p.add_argument("--quantization", default="int8", choices=["int8", "float16", "dynamic", "float32"])
    p.add_argument("--io", default="int8", choices=["int8", "uint8"], help="int8 for CPU, uint8 for the Edge TPU")
    p.add_argument("--calibration", type=int, default=300, help="calibration images, stratified (default: 300)")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points the converted model may lose")
    p.add_argument("--allow-float-ops", action="store_true", help="warn instead of failing on float ops in int8")
    p.add_argument("--per-tensor", action="store_true",
                   help="one int8 scale per weight tensor: a smaller file, at an accuracy cost the gate checks")
    p.add_argument("--no-compare", action="store_true", help="skip converting to the other quantizations for the table")
    p.set_defaults(handler=_cmd_convert)
