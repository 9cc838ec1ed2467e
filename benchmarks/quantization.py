"""Size and speed of int8 against float32 for MobileNetV2, on this host, in one run.

    .venv/bin/python benchmarks/quantization.py [--size 224] [--width 1.0] [--json]

The network has random weights, as in XNNPACK's own benchmarks: size and speed do not depend
on what it learned. Calibration uses synthetic line frames prepared like training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from linewatch.convert.quantize import engine_for, latency_ms, tflite_bytes
    from linewatch.edge import simulator
    from linewatch.edge.model.images import prepare
    from linewatch.train.model import build_mobilenetv2

    rng = np.random.default_rng(0)
    calibration = np.stack([prepare(simulator.render(simulator.random_part(label, rng), rng), args.size, args.size)
                            for label in simulator.CLASSES for _ in range(20)])
    model = build_mobilenetv2(args.classes, args.size, args.size, args.width)
    labels = [f"c{i}" for i in range(args.classes)]
    card = {"input": {"resize_mode": "stretch", "color_order": "RGB"}}
    rows = {}
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved, verbose=False)
        for name, quantization, per_tensor in (("float32", "float32", False), ("int8", "int8", False),
                                               ("int8 per-tensor", "int8", True)):
            print(f"converting {name}", file=sys.stderr, flush=True)
            flatbuffer = tflite_bytes(saved, quantization, "int8", calibration, per_tensor)
            rows[name] = {"bytes": len(flatbuffer),
                          **{f"p50_ms_{t}_threads": latency_ms(engine_for(flatbuffer, labels, card, t), calibration[0],
                                                               runs=50)["p50"] for t in (1, 2)}}
    f32, i8, pt = rows["float32"], rows["int8"], rows["int8 per-tensor"]
    result = {"input": f"{args.size}x{args.size}", "width": args.width, "rows": rows,
              "size_ratio": round(f32["bytes"] / i8["bytes"], 2),
              "size_ratio_per_tensor": round(f32["bytes"] / pt["bytes"], 2),
              "speedup_1_thread": round(f32["p50_ms_1_threads"] / i8["p50_ms_1_threads"], 2),
              "speedup_2_threads": round(f32["p50_ms_2_threads"] / i8["p50_ms_2_threads"], 2)}
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
