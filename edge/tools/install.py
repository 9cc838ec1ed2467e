"""``linewatch install`` and ``uninstall``: the service on Raspberry Pi OS or Debian, in one command.

Run as root from the venv that will run the daemon (made with ``--system-site-packages``, so
apt's picamera2 and the Pi's GPIO libraries are visible). It creates the system user, the
folders, the unit (its ``ExecStart`` pointing at this venv), the configuration from the flags
given (the MQTT user is the device id, as the shipped broker ACL expects), the CA certificate,
the password file and the OPC UA server's certificate. Then it checks the installed
configuration as the daemon would (``linewatch check``) and only when that passes runs
``systemctl enable --now``; otherwise it starts nothing and prints what to fix. Running it
again changes only what is missing or stale: a configuration the user edited is never
rewritten. ``--root DIR`` installs into a folder instead of ``/`` (for images and tests): no
systemctl, no useradd there.
"""

from __future__ import annotations

import asyncio
import grp
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from linewatch.edge.errors import UsageError
from linewatch.edge.files import write_atomic
from linewatch.edge.tools.check import Report, check

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
    def ca(self) -> Path:
        return self.etc / "ca.pem"

    @property
    def written(self) -> Path:
        """The sha256 of the configuration as install last wrote it: another means the user edited it."""
        return self.etc / ".linewatch.toml.installed"

    def on_device(self, path: Path) -> str:
        """``path`` as the device sees it (without ``root``)."""
        return "/" + str(path.relative_to(self.root))

    @property
    def model(self) -> Path:
        return self.state / "model.tflite"


def _packaged(name: str) -> str:
    return (resources.files("linewatch.systemd") / name).read_text()


def unit_text(layout: Layout) -> str:
    """The packaged unit, running this venv's ``linewatch`` as ``layout.user``, its documentation in this venv."""
    text = _packaged(UNIT_NAME).replace("/opt/linewatch/", f"{layout.venv}/")
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
        write_atomic(path, data, mode)
        out.append(f"wrote {path}")
    os.chmod(path, mode)
    os.chown(path, *owner)


def _folder(path: Path, mode: int, owner: tuple[int, int]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, *owner)


def _opcua_certificate(layout: Layout, owner: tuple[int, int], done: list[str]) -> None:
    """The OPC UA server's own certificate, made now so that the SCADA or PLC can be told to trust it before the
    server is turned on; the daemon keeps it (and makes it again as ``ensure_certificate`` says)."""
    from linewatch.edge.device.plc.opcua import ensure_certificate, own_certificate  # asyncua: only when installing

    try:
        device_id = tomllib.loads(layout.config.read_text()).get("device_id", socket.gethostname())
    except tomllib.TOMLDecodeError:
        return  # the check names what is wrong with the file
    cert, key = own_certificate(layout.state)
    before = cert.read_bytes() if cert.is_file() else None
    asyncio.run(ensure_certificate(cert, key, str(device_id)))
    for path in (cert.parent, cert, key):
        os.chown(path, *owner)
    if cert.read_bytes() != before:
        done.append(f"made the OPC UA server's certificate {cert}: OPC UA clients trust it once (docs/plc.md)")


@dataclass
class Outcome:
    """What install did (a line each), how the installed configuration checked, and whether the unit runs."""

    done: list[str]
    report: Report
    started: bool


def install(root: Path = Path("/"), venv: Path | None = None, user: str = "linewatch", model: Path | None = None,
            settings: dict[str, str] | None = None, start: bool = True, ca_file: Path | None = None,
            password: str | None = None) -> Outcome:
    """Install or repair the service, check its configuration, and start it when the check passes."""
    if os.geteuid() != 0:
        raise UsageError("linewatch install must run as root: sudo /opt/linewatch/bin/linewatch install")
    venv = venv or Path(sys.prefix)
    if not (venv / "bin" / "linewatch").exists():
        raise UsageError(f"{venv} has no bin/linewatch: run the linewatch of the venv you install for")
    if not _has_system_site_packages(venv):
        raise UsageError(f"{venv} was made without --system-site-packages, so apt's picamera2 is invisible to it: "
                         f"python3 -m venv --system-site-packages {venv}, then install linewatch into it again")
    if ca_file is not None and not ca_file.is_file():
        raise UsageError(f"--ca-file {ca_file} does not exist: the CA certificate that signed the broker's")
    layout = Layout(root, venv, user)
    done: list[str] = []
    _ensure_user(layout, done)
    uid, gid = _ids(user)
    root_owned, shared = (0, 0), (0, gid)
    _folder(layout.etc, 0o750, shared)
    _folder(layout.state, 0o750, (uid, gid))
    _folder(layout.unit.parent, 0o755, root_owned)
    settings = dict(settings or {})
    if not layout.config.exists():  # a new configuration names this device, and its MQTT user after it
        settings.setdefault("device_id", socket.gethostname())
    if "device_id" in settings:
        settings.setdefault("mqtt.username", settings["device_id"])  # the shipped ACL's rule: user = device id
    if ca_file is not None:
        _place(layout.ca, ca_file.read_bytes(), 0o644, root_owned, done)
        settings["mqtt.ca_file"] = layout.on_device(layout.ca)
    _write_config(layout, settings, shared, done)
    if password is not None:
        _place(layout.password, password + "\n", 0o600, root_owned, done)
    else:
        _place(layout.password, b"", 0o600, root_owned, done, replace=False)
    if model is not None:
        _place(layout.model, model.read_bytes(), 0o640, (uid, gid), done)
    _place(layout.unit, unit_text(layout), 0o644, root_owned, done)
    _opcua_certificate(layout, (uid, gid), done)
    # The daemon reads the password through systemd's credential; the check reads the file itself.
    report = check(layout.config, root=root, environ={})
    started = False
    if root == Path("/") and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        if not report.exit_code:
            subprocess.run(["systemctl", "enable", *(["--now"] if start else []), UNIT_NAME], check=True)
            started = start
            done.append(f"enabled{' and started' if start else ''} {UNIT_NAME}: journalctl -u linewatch -f")
    elif root == Path("/"):
        done.append(f"systemctl is not here (a container?): enable {layout.unit} with the init system there")
    return Outcome(done, report, started)


def still_example(config_path: Path) -> list[str]:
    """What the configuration still has of the packaged example's placeholders, as lines to fix."""
    placeholder = tomllib.loads(_packaged("linewatch.toml"))["mqtt"]["broker"]
    broker = tomllib.loads(config_path.read_text()).get("mqtt", {}).get("broker")
    return [f"mqtt.broker is still the example's {placeholder}: pass --broker URL"] if broker == placeholder else []


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_config(layout: Layout, settings: dict[str, str], owner: tuple[int, int], done: list[str]) -> None:
    """The configuration from the flags: new from the example, or the flags applied to the one install wrote
    before. One the user edited since is left as it is (and the flags not applied are said)."""
    path = layout.config
    if path.exists():
        current = path.read_text()
        recorded = layout.written.read_text().strip() if layout.written.is_file() else None
        if recorded != _digest(current):
            if settings:
                done.append(f"kept {path}: it was edited since install wrote it, so these were not applied: "
                            + ", ".join(f"{k} = {v}" for k, v in settings.items()))
            return
        text = current
    else:
        text = _packaged("linewatch.toml")
    for key, value in settings.items():
        text = _set_line(text, key, value)
    _place(path, text, 0o640, owner, done)
    write_atomic(layout.written, _digest(text) + "\n", mode=0o600)


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
