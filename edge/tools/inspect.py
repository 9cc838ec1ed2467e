"""``linewatch inspect``: what a ``.tflite`` is, on the workstation or the Pi: card, I/O quantization, ops."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from linewatch.edge.model import artifact, audit


def inspect(model_path: str, labels: str | None = None, as_json: bool = False, out: TextIO = sys.stdout) -> None:
    model = artifact.load(model_path, labels)
    card: dict[str, Any] = model.card.model_dump(mode="json", exclude_none=True)
    info: dict[str, Any] = {"card": card if model.has_card else None, "io": audit.io_details(model),
            "ops": audit.summary(audit.ops(model))}
    if as_json:
        print(json.dumps(info), file=out)
        return
    print(json.dumps(card, indent=2) if model.has_card else f"{model_path} has no model card (made elsewhere)",
          file=out)
    for name, d in info["io"].items():
        print(f"{name}: {d['shape']} {d['dtype']}, scale {d['scale']:g}, zero point {d['zero_point']}", file=out)
    print("ops:", file=out)
    for op in info["ops"]:
        flags = ("float " if op["float"] else "") + ("" if op["edgetpu"] else "not-on-edgetpu")
        print(f"  {op['op']:<22} x{op['count']:<3} in {','.join(op['inputs'])} -> {','.join(op['outputs'])} {flags}",
              file=out)
