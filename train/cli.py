"""``linewatch train``: workstation subcommands, registered by ``edge.cli``. TensorFlow loads only when run."""

from __future__ import annotations

import argparse
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


def _cmd_train(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our progress
    from train.trainer import TrainConfig, train

    if args.epochs < 1:
        raise UsageError("--epochs must be at least 1")
    height, width = args.size
    train(TrainConfig(data=args.data, out=args.out, epochs=args.epochs, height=height, width=width,
                      resize_mode=args.resize_mode, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      seed=args.seed))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CNN from a folder of labeled photos (one sub-folder per class)")
    p.add_argument("data", help="dataset folder: DATA/<class>/*.jpg")
    p.add_argument("-o", "--out", required=True, help="run folder to write (model, labels, card, metrics)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--size", type=parse_size, default=(96, 128), help="model input, N or HxW (default: 96x128)")
    p.add_argument("--resize-mode", default="stretch", choices=["stretch", "crop", "letterbox"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_train)
