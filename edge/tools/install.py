"""``linewatch install`` and ``uninstall``: the service on Raspberry Pi OS or Debian, in one command.

Run as root from the venv that will run the daemon (made with ``--system-site-packages``, so
apt's picamera2 and the Pi's GPIO libraries are visible). It creates the system user, the
folders, the unit (its ``ExecStart`` pointing at this venv) and, only when there is none yet,
the configuration and an empty password file; then ``systemctl enable --now``, last. Running it
again changes only what is missing or stale, never the configuration. ``--root DIR`` installs
into a folder instead of ``/`` (for images and tests): no systemctl, no useradd there.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from linewatch.edge.errors import UsageError
from linewatch.edge.files import write_atomic

UNIT_NAME = "linewatch.service"


@dataclass
class Layout:
    """Where everything goes, below ``root``."""

    root: Path
    venv: Path
    user: str
    etc: Path = field(init=False)
    state: Path = field(init=False)
    unit: Path = field(init=False)

    def __post_init__(self) -> None:
        self.etc = self.root / "etc" / "linewatch"
        self.state = self.root / "var" / "lib" / "linewatch"
        self.unit = self.root / "etc" / "systemd" / "system" / UNIT_NAME

    @property
    def config(self) -> Path:
        return self.etc / "linewatch.toml"

    @property
    def password(self) -> Path:
        return self.etc / "mqtt-password"

    @property
    def model(self) -> Path:
        return self.state / "model.tflite"


def _packaged(name: str) -> str:
    return (resources.files("linewatch.systemd") / name).read_text()


def unit_text(layout: Layout) -> str:
    """The packaged unit, running this venv's ``linewatch`` as ``layout.user``."""
    text = _packaged(UNIT_NAME).replace("/opt/linewatch/bin/linewatch", str(layout.venv / "bin" / "linewatch"))
    return text.replace("User=linewatch", f"User={layout.user}").replace("Group=linewatch", f"Group={layout.user}")


def _has_system_site_packages(venv: Path) -> bool:
    cfg = venv / "pyvenv.cfg"
    return cfg.is_file() and "include-system-site-packages = true" in cfg.read_text()


def _ids(user: str) -> tuple[int, int]:
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _ensure_user(layout: Layout, out: list[str]) -> None:
    try:
        pwd.getpwnam(layout.user)
        return
    except KeyError:
        pass
    if layout.root != Path("/"):
        raise UsageError(f"user {layout.user} does not exist; with --root, name an existing one (--user)")
    groups = [g for g in ("video", "render", "gpio") if _group_exists(g)]
    subprocess.run(["useradd", "--system", "--home-dir", "/var/lib/linewatch", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", *(["--groups", ",".join(groups)] if groups else []), layout.user], check=True)
    out.append(f"created system user {layout.user}" + (f" in {', '.join(groups)}" if groups else ""))


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _place(path: Path, text: str | bytes, mode: int, owner: tuple[int, int], out: list[str],
           replace: bool = True) -> None:
    """Write ``path`` when it is missing or (with ``replace``) different; then its mode and owner."""
    data = text.encode() if isinstance(text, str) else text
    if not path.exists() or (replace and path.read_bytes() != data):
        write_atomic(path, data)
        out.append(f"wrote {path}")
    os.chmod(path, mode)
    os.chown(path, *owner)


def _folder(path: Path, mode: int, owner: tuple[int, int]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, *owner)


def install(root: Path = Path("/"), venv: Path | None = None, user: str = "linewatch", model: Path | None = None,
            settings: dict[str, str] | None = None, start: bool = True) -> list[str]:
    """Install or repair the service; returns what was done, a line each."""
    if os.geteuid() != 0:
        raise UsageError("linewatch install must run as root: sudo /opt/linewatch/bin/linewatch install")
    venv = venv or Path(sys.prefix)
    if not (venv / "bin" / "linewatch").exists():
        raise UsageError(f"{venv} has no bin/linewatch: run the linewatch of the venv you install for")
    if not _has_system_site_packages(venv):
        raise UsageError(f"{venv} was made without --system-site-packages, so apt's picamera2 is invisible to it: "
                         f"python3 -m venv --system-site-packages {venv}, then pip install 'linewatch[edge]' again")
    layout = Layout(root, venv, user)
    done: list[str] = []
    _ensure_user(layout, done)
    uid, gid = _ids(user)
    root_owned, shared = (0, 0), (0, gid)
    _folder(layout.etc, 0o750, shared)
    _folder(layout.state, 0o750, (uid, gid))
    _folder(layout.unit.parent, 0o755, root_owned)
    example = _packaged("linewatch.toml")
    for key, value in (settings or {}).items():  # first install only: never rewrites an existing config
        example = _set_line(example, key, value)
    _place(layout.config, example, 0o640, shared, done, replace=False)
    _place(layout.password, b"", 0o600, root_owned, done, replace=False)
    if model is not None:
        _place(layout.model, model.read_bytes(), 0o640, (uid, gid), done)
    _place(layout.unit, unit_text(layout), 0o644, root_owned, done)
    if root == Path("/") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", *(["--now"] if start else []), UNIT_NAME], check=True)
        done.append(f"enabled{' and started' if start else ''} {UNIT_NAME}: journalctl -u linewatch -f")
    elif root == Path("/"):
        done.append(f"systemctl is not here (a container?): enable {layout.unit} with the init system there")
    return done


def _set_line(toml: str, key: str, value: str) -> str:
    """Set ``key = "value"`` in the example's text (its first such line), keeping its comments."""
    section, _, name = key.rpartition(".")
    lines, current = toml.splitlines(), ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped.strip("[]")
        elif current == section and stripped.lstrip("# ").startswith(f"{name} ") and "=" in stripped:
            lines[i] = f'{name} = "{value}"'
            return "\n".join(lines) + "\n"
    raise UsageError(f"the example configuration has no key {key}")


def uninstall(root: Path = Path("/"), purge: bool = False) -> list[str]:
    """Stop and remove the service; configuration and data stay unless ``purge``."""
    if os.geteuid() != 0:
        raise UsageError("linewatch uninstall must run as root")
    layout = Layout(root, Path(sys.prefix), "linewatch")
    done: list[str] = []
    if root == Path("/") and shutil.which("systemctl") and layout.unit.exists():
        subprocess.run(["systemctl", "disable", "--now", UNIT_NAME], check=False)
    if layout.unit.exists():
        layout.unit.unlink()
        done.append(f"removed {layout.unit}")
    if purge:
        for folder in (layout.etc, layout.state):
            if folder.exists():
                shutil.rmtree(folder)
                done.append(f"removed {folder}")
    else:
        done.append(f"kept {layout.etc} and {layout.state} (--purge removes them)")
    return done
