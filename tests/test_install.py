"""``linewatch install`` into a temporary root: every file, owner and mode; idempotent; uninstall keeps data."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from linewatch.edge.device import config
from tests.helpers import linewatch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installing sets owners: root only (CI runs as root)")

NOBODY = pwd.getpwnam("nobody")


def _venv(folder: Path, system_site_packages: bool = True) -> Path:
    """What ``python3 -m venv [--system-site-packages]`` leaves that install looks at."""
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "linewatch").touch()
    (folder / "pyvenv.cfg").write_text(f"include-system-site-packages = {str(system_site_packages).lower()}\n")
    return folder


def _mode_owner(path: Path) -> tuple[str, int, int]:
    info = path.stat()
    return oct(stat.S_IMODE(info.st_mode)), info.st_uid, info.st_gid


def test_install_into_a_root_sets_every_file_owner_and_mode(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    venv = _venv(tmp_path / "opt" / "linewatch")
    proc = linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody", "--model", str(tiny),
                     "--device-id", "line-7", "--broker", "mqtt://broker.plant:1883", "--source", "usb:0")
    uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
    etc, state = root / "etc" / "linewatch", root / "var" / "lib" / "linewatch"
    unit = root / "etc" / "systemd" / "system" / "linewatch.service"
    assert _mode_owner(etc) == ("0o750", 0, gid)
    assert _mode_owner(etc / "linewatch.toml") == ("0o640", 0, gid)
    assert _mode_owner(etc / "mqtt-password") == ("0o600", 0, 0)
    assert _mode_owner(state) == ("0o750", uid, gid)
    assert _mode_owner(state / "model.tflite") == ("0o640", uid, gid)
    assert _mode_owner(unit) == ("0o644", 0, 0)
    assert (state / "model.tflite").read_bytes() == tiny.read_bytes()
    text = unit.read_text()
    assert f"ExecStart={venv}/bin/linewatch run --config /etc/linewatch/linewatch.toml" in text
    assert "User=nobody" in text and "Type=notify" in text
    cfg = config.load(etc / "linewatch.toml", environ={})
    assert (cfg.device_id, cfg.mqtt.broker, cfg.source.spec) == ("line-7", "mqtt://broker.plant:1883", "usb:0")
    assert "wrote" in proc.stdout

    (etc / "linewatch.toml").write_text((etc / "linewatch.toml").read_text().replace("line-7", "line-8"))
    again = linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody", "--device-id", "other")
    assert "linewatch.toml" not in again.stdout.split("configuration:")[0]  # the configuration is never rewritten
    assert config.load(etc / "linewatch.toml", environ={}).device_id == "line-8"

    kept = linewatch("uninstall", "--root", str(root))
    assert not unit.exists() and (etc / "linewatch.toml").is_file() and (state / "model.tflite").is_file()
    assert "kept" in kept.stdout
    linewatch("uninstall", "--root", str(root), "--purge")
    assert not etc.exists() and not state.exists()


def test_install_names_what_is_wrong(tmp_path: Path) -> None:
    venv = _venv(tmp_path / "venv")
    proc = linewatch("install", "--root", str(tmp_path), "--venv", str(venv), "--user", "no-such-user-here",
                     check=False)
    assert proc.returncode == 2 and "no-such-user-here does not exist" in proc.stderr.strip().splitlines()[-1]
    flat = _venv(tmp_path / "flat-venv", system_site_packages=False)
    proc = linewatch("install", "--root", str(tmp_path), "--venv", str(flat), "--user", "nobody", check=False)
    assert proc.returncode == 2 and "--system-site-packages" in proc.stderr.strip().splitlines()[-1]
