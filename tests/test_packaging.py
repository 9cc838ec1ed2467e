"""The device never imports TensorFlow, and the command line answers without loading it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ENV, ROOT

CHECK = """
import importlib, pkgutil, sys
import edge
for mod in pkgutil.walk_packages(edge.__path__, "edge."):
    importlib.import_module(mod.name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(",".join(heavy) or "none")
"""

HELP = """
import sys
from pathlib import Path
from edge.cli import main
for argv in (["--help"], ["run", "--help"], ["train", "--help"], ["convert", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, argv
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print(",".join(heavy) or "none")
"""


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_every_edge_module_imports_without_tensorflow() -> None:
    assert _run(CHECK) == "none"


def test_help_does_not_load_tensorflow() -> None:
    assert _run(HELP) == "none"


def test_console_script_is_installed() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "linewatch"), "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("linewatch ")
