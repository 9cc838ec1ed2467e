"""Training throughput of the default CNN on this machine: images per second, with and without augmentation.

    .venv/bin/python benchmarks/train_throughput.py [--per-class 100] [--epochs 4] [--json]

Measured in one run, as a ratio too (augmented / plain), because shared machines are noisy.
The first epoch (graph tracing) is left out of the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Seconds per epoch, printed as images/s as they come."""

        def __init__(self, name: str, images: int) -> None:
            super().__init__()
            self.name, self.images, self.times = name, images, []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.started)
            print(f"  {self.name} epoch {epoch + 1}: {self.images / self.times[-1]:.0f} images/s", file=sys.stderr,
                  flush=True)

    return EpochTimer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import keras

    EpochTimer = _epoch_timer()
    from linewatch.edge.simulator import write_dataset
    from linewatch.train import data
    from linewatch.train.augment import DEFAULT_AUGMENT, build_augmenter
    from linewatch.train.model import build_cnn
    from linewatch.train.trainer import _compile, _tf_dataset

    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), args.per_class, seed=0)
        dataset = data.scan(tmp)
        height, width = data.auto_size(dataset.items)
        x, y, _, _ = data.load_images(dataset.items, dataset.classes, height, width)

    results = {"input": f"{height}x{width}", "images": len(x), "cpu_count": os.cpu_count()}
    for name, augmenter in (("plain", None), ("augmented", build_augmenter(DEFAULT_AUGMENT, 0.5, 0))):
        keras.utils.set_random_seed(0)
        model = build_cnn(len(dataset.classes), height, width)
        _compile(model, 2e-3, 1000)
        ds = _tf_dataset(x, y, 32, 0, augmenter)
        timer = EpochTimer(name, len(x))
        model.fit(ds, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[timer])
        steady = timer.times[1:] or timer.times
        results[f"{name}_images_per_s"] = round(len(x) * len(steady) / sum(steady), 1)
    results["augmented_over_plain"] = round(results["augmented_images_per_s"] / results["plain_images_per_s"], 3)
    print(json.dumps(results) if args.json else "\n".join(f"{k}: {v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
