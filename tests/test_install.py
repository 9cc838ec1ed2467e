"""``linewatch install`` into a temporary root: every file, owner and mode; idempotent; uninstall keeps data."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest
from cryptography import x509

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


def _certificate_uri(path: Path) -> str:
    cert = x509.load_der_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)[0]


def test_install_into_a_root_sets_every_file_owner_and_mode(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    venv = _venv(tmp_path / "opt" / "linewatch")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    proc = linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody", "--model", str(tiny),
                     "--device-id", "line-7", "--broker", "mqtt://broker.plant:1883", "--source", "usb:0",
                     "--password-file", str(secret))
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
    assert f"Documentation=file://{venv}/share/doc/linewatch/raspberry-pi.md" in text  # the docs pip put there
    cfg = config.load(etc / "linewatch.toml", environ={})
    assert (cfg.device_id, cfg.mqtt.broker, cfg.source.spec) == ("line-7", "mqtt://broker.plant:1883", "usb:0")
    assert "wrote" in proc.stdout
    # The OPC UA server's certificate, made at install for this device (clients can be told to trust it before the
    # server is turned on), its key the service user's alone.
    opcua = state / "opcua"
    assert _mode_owner(opcua) == ("0o700", uid, gid) and _mode_owner(opcua / "server-key.pem") == ("0o600", uid, gid)
    assert _certificate_uri(opcua / "server-cert.der") == "urn:linewatch:line-7"
    assert f"made the OPC UA server's certificate {opcua / 'server-cert.der'}" in proc.stdout

    (etc / "linewatch.toml").write_text((etc / "linewatch.toml").read_text().replace("line-7", "line-8"))
    again = linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody", "--device-id", "other")
    assert f"wrote {etc / 'linewatch.toml'}" not in again.stdout  # an edited configuration is never rewritten
    assert "it was edited since install wrote it, so these were not applied: device_id = other" in again.stdout
    assert config.load(etc / "linewatch.toml", environ={}).device_id == "line-8"
    assert _certificate_uri(opcua / "server-cert.der") == "urn:linewatch:line-8"  # made again for the new id
    assert "made the OPC UA server's certificate" in again.stdout
    kept_certificate = (opcua / "server-cert.der").read_bytes()
    linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody")
    assert (opcua / "server-cert.der").read_bytes() == kept_certificate  # kept while it is still this device's

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


def test_install_with_only_a_model_and_a_device_id_does_not_start_and_says_what_to_fill_in(tiny: Path,
                                                                                           tmp_path: Path) -> None:
    root, venv = tmp_path / "root", _venv(tmp_path / "venv")
    proc = linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody", "--model", str(tiny),
                     "--device-id", "line-9", check=False)
    etc = root / "etc" / "linewatch"
    assert proc.returncode == 2, proc.stderr  # the daemon's own exit code for what is missing
    assert (etc / "linewatch.toml").is_file() and (root / "etc/systemd/system/linewatch.service").is_file()
    said = proc.stderr
    assert "not started" in said
    assert f"mqtt.ca_file {etc / 'ca.pem'} cannot be read" in said  # the example's CA file: --ca-file brings it
    assert f"mqtt.password_file {etc / 'mqtt-password'} is empty" in said
    assert "mqtt.broker is still the example's" in said and "Traceback" not in said
    cfg = config.load(etc / "linewatch.toml", environ={})
    assert (cfg.device_id, cfg.mqtt.username) == ("line-9", "line-9")  # the MQTT user is the device id (the ACL)

    # The flags again, on the configuration install wrote and nobody edited: applied there, and now it checks (a
    # plain mqtt:// broker needs no CA file; nothing listens on port 1, which is a note, not a failure).
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    again = linewatch("install", "--root", str(root), "--venv", str(venv), "--user", "nobody", "--broker",
                      "mqtt://127.0.0.1:1", "--password-file", str(secret), check=False)
    assert again.returncode == 0, again.stderr
    assert "cannot be reached now" in again.stdout and "checked as the daemon reads it" in again.stdout
    assert (etc / "mqtt-password").read_text() == "s3cret\n" and _mode_owner(etc / "mqtt-password")[0] == "0o600"
    assert config.load(etc / "linewatch.toml", environ={}).mqtt.broker == "mqtt://127.0.0.1:1"
