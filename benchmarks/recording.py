"""What the long benchmarks share: mean ± spread over seeds, and writing a table into its document.

A recorded table sits between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in its document;
``make docs`` (docs/generate.py) copies the block into the README, so a figure is typed nowhere.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spread(values: list[float], digits: int = 4) -> str:
    """Mean ± sample standard deviation (0 for a single value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def record(doc: Path, name: str, text: str) -> None:
    """Write ``text`` into ``doc`` between its ``name`` markers."""
    block = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    doc.write_text(block.sub(lambda m: m.group(1) + text + m.group(2), doc.read_text()))
    print(f"recorded in {doc.relative_to(ROOT)}")
