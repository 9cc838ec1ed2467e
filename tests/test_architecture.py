"""The structure holds: one installed namespace, the import rules of docs/architecture.md, generated docs.

The device never imports TensorFlow, and the command line answers without loading it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ENV, ROOT

CHECK = """
import importlib, pkgutil, sys
import linewatch.edge as edge
for mod in pkgutil.walk_packages(edge.__path__, "linewatch.edge."):
    importlib.import_module(mod.name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(",".join(heavy) or "none")
"""

HELP = """
import sys
from linewatch.edge.cli import main
for argv in (["--help"], ["run", "--help"], ["train", "--help"], ["convert", "--help"]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code == 0, argv
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print(",".join(heavy) or "none")
"""

FOLDERS = {"edge": "linewatch.edge", "train": "linewatch.train", "convert": "linewatch.convert"}


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=ENV,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.workstation  # meaningful where TensorFlow could be imported
def test_every_edge_module_imports_without_tensorflow() -> None:
    assert _run(CHECK) == "none"


@pytest.mark.workstation
def test_help_does_not_load_tensorflow() -> None:
    assert _run(HELP) == "none"


def test_console_script_is_installed() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "linewatch"), "--version"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("linewatch ")


def _modules() -> dict[str, Path]:
    """Every module of the three folders by its installed name."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            out[name] = path
    return out


def _unit(module: str) -> str:
    """``linewatch.edge.device.daemon`` → ``edge.device``; ``linewatch.train.data`` → ``train``."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if parts[0] == "edge" and len(parts) > 1 else parts[0]


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every linewatch module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {name for name in found if name.split(".")[0] == "linewatch"}


def _allowed() -> dict[str, set[str]]:
    """The 'may import' column of docs/architecture.md."""
    rules = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0] != "`unit`":
            rules[cells[0].strip("`")] = set(re.findall(r"`([\w.]+)`", cells[2]))
    return rules


def test_imports_follow_docs_architecture() -> None:
    modules, rules = _modules(), _allowed()
    units = {_unit(m) for m in modules if m != "linewatch.edge"}
    assert units <= rules.keys(), f"units missing from docs/architecture.md: {sorted(units - rules.keys())}"
    assert rules.keys() <= units, f"docs/architecture.md names units that do not exist: {sorted(rules.keys() - units)}"
    broken = []
    for name, path in modules.items():
        unit = _unit(name) if name != "linewatch.edge" else "edge"
        for imported in _imports(path, modules):
            target = "edge" if imported == "linewatch.edge" else _unit(imported)
            if target != unit and target not in rules.get(unit, set()):
                broken.append(f"{path.relative_to(ROOT)} imports {imported} ({unit} may not import {target})")
    assert not broken, "\n".join(broken)
    assert "convert" not in rules["train"]
    tensorflow = [str(p.relative_to(ROOT)) for n, p in modules.items() if n.startswith("linewatch.edge")
                  and re.search(r"^\s*(import|from)\s+(tensorflow|keras|tf_keras)\b", p.read_text(), re.M)]
    assert not tensorflow


def test_the_setup_page_and_the_metrics_see_the_daemon_only_through_its_reading() -> None:
    """docs/architecture.md: they (and the Sparkplug node) read a frozen ``DeviceReading``, and change only what they
    are handed."""
    from linewatch.edge.device.view import DeviceReading

    modules = _modules()
    parts = {f"linewatch.edge.device.{m}" for m in ("daemon", "results", "line", "ota", "commands", "stats", "state")}
    parts |= {"linewatch.edge.comms.publisher", "linewatch.edge.comms.spool"}
    for name in ("linewatch.edge.device.setup", "linewatch.edge.device.metrics", "linewatch.edge.device.web",
                 "linewatch.edge.device.sparkplug"):
        assert not _imports(modules[name], modules) & parts, name
        assert "Daemon" not in modules[name].read_text(), name
    assert DeviceReading.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_generated_docs_match_their_sources() -> None:
    """Schemas, configuration reference and exit-code tables are what the code says (`make docs`)."""
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_the_layout_names_every_folder_of_edge() -> None:
    layout = (ROOT / "docs" / "architecture.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    packages = sorted(p.name for p in (ROOT / "edge").iterdir() if (p / "__init__.py").is_file())
    assert packages and all(f"{name}/" in layout for name in packages), packages


@pytest.mark.workstation
def test_wheel_installs_only_the_linewatch_namespace(tmp_path: Path) -> None:
    """A fresh venv gains ``linewatch`` and nothing named ``train``, ``convert`` or ``edge``."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("linewatch-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith((".dist-info", ".data"))} == {"linewatch"}  # .data: the docs
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=300)
    site = next(venv.glob("lib/python*/site-packages"))
    installed = {p.name for p in site.iterdir()}
    assert "linewatch" in installed and not installed & {"train", "convert", "edge"}
    assert (site / "linewatch" / "edge" / "device" / "daemon.py").is_file()
    assert not (site / "linewatch" / "__init__.py").exists()  # a namespace: other linewatch.* may join it
    docs = venv / "share" / "doc" / "linewatch"  # where the unit's Documentation= points once installed
    unit = (site / "linewatch" / "systemd" / "linewatch.service").read_text()
    for line in unit.splitlines():
        if line.startswith("Documentation=file:///opt/linewatch/"):
            assert (venv / line.removeprefix("Documentation=file:///opt/linewatch/")).is_file(), line
    assert (docs / "raspberry-pi.md").is_file() and (docs / "mosquitto" / "linewatch.acl").is_file()


PROBE = """
from linewatch.edge.device.pipeline import Pipeline
from linewatch.edge.device.config import Config
from linewatch.edge.errors import UsageError
from linewatch.train.config import TrainConfig
reveal_type(Pipeline)
reveal_type(Config)
reveal_type(UsageError)
reveal_type(TrainConfig)
"""


@pytest.mark.workstation  # mypy is a workstation tool (make lint)
def test_the_type_checker_sees_the_projects_own_imports_as_what_they_are(tmp_path: Path) -> None:
    """linewatch/ links the folders, so mypy follows linewatch.* from a clean checkout: none of it is Any."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--no-incremental", str(probe)], capture_output=True, text=True, cwd=ROOT,
                          env={**ENV, "MYPYPATH": str(ROOT)}, timeout=300)
    revealed = [line.split("Revealed type is ")[1] for line in proc.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == 4 and proc.returncode == 0, proc.stdout
    for line, name in zip(revealed, ("pipeline.Pipeline", "config.Config", "errors.UsageError", "config.TrainConfig")):
        assert line != '"Any"' and "linewatch." in line and name in line, line


@pytest.mark.skipif(not (ROOT / "linewatch").is_dir(), reason="a copy of the tests beside an installed wheel (make "
                    "pi-check) has no checkout's linewatch/")
def test_linewatch_resolves_from_a_clean_checkout_without_an_import_hook() -> None:
    """What editors' language servers see: the committed linewatch/ namespace, each entry a link to its folder."""
    for name, folder in (("edge", "edge"), ("train", "train"), ("convert", "convert"), ("systemd", "systemd")):
        link = ROOT / "linewatch" / name
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve(), link
    assert not (ROOT / "linewatch" / "__init__.py").exists()  # a namespace, as installed
    code = "import linewatch.edge.errors as e, linewatch.train, linewatch.convert; print(e.__file__)"
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().startswith(str(ROOT / "linewatch")), proc.stderr
