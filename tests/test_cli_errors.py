"""A user's mistake ends in one line naming the thing, with the documented exit code."""

from __future__ import annotations

import argparse
import stat
import subprocess
from pathlib import Path

import pytest

from linewatch.edge.cli import build_parser
from linewatch.edge.demo.brokers import free_port
from linewatch.edge.simulator import write_dataset
from tests.helpers import linewatch, spooled_results, start_daemon, stop_daemon, summary, wait_until


def _one_line_error(proc, code: int, *needles: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert ": error: " in line
    for needle in needles:
        assert needle in line, line


def test_missing_source_folder(tiny: Path, broker, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = linewatch("run", "--model", str(tiny), "--source", str(missing), "--device-id", "x",
                     "--broker", broker.url, "--once", check=False)
    _one_line_error(proc, 3, str(missing), "does not exist")


def test_bad_broker_url(tiny: Path, tmp_path: Path) -> None:
    proc = linewatch("run", "--model", str(tiny), "--source", str(tmp_path), "--device-id", "x",
                     "--broker", "http://example:1883", check=False)
    _one_line_error(proc, 2, "http://example:1883", "mqtt://")


def test_unreachable_broker_is_not_an_error(tiny: Path, holdout: Path, tmp_path: Path) -> None:
    """The Pi often boots before the broker: it inspects and spools, says so once, and never gives up."""
    port = free_port()  # nothing listens there
    proc = start_daemon(tiny, f"mqtt://127.0.0.1:{port}", "x", tmp_path, "--once", "--json", source=str(holdout))
    try:
        assert wait_until(lambda: spooled_results(tmp_path, "x") == 60, timeout=60)  # every image classified
        assert proc.poll() is None  # --once waits for the broker to acknowledge them
        out, err = stop_daemon(proc)
    finally:
        proc.kill()
    assert summary(out)["frames"] == 60 and summary(out)["acknowledged"] == 0
    assert f"cannot reach the MQTT broker at 127.0.0.1:{port}" in err and "Traceback" not in err


@pytest.mark.workstation
def test_train_needs_two_classes(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", per_class=3)
    for extra in ("crack", "empty", "scratch", "stain"):
        for f in (tmp_path / "d" / extra).iterdir():
            f.unlink()
        (tmp_path / "d" / extra).rmdir()
    proc = linewatch("train", str(tmp_path / "d"), "-o", str(tmp_path / "run"), check=False)
    _one_line_error(proc, 3, "at least 2")


@pytest.mark.workstation
def test_train_names_a_class_too_small_to_split(tmp_path: Path) -> None:
    write_dataset(tmp_path / "d", per_class=4)
    for f in sorted((tmp_path / "d" / "stain").iterdir())[2:]:
        f.unlink()
    proc = linewatch("train", str(tmp_path / "d"), "-o", str(tmp_path / "run"), check=False)
    _one_line_error(proc, 3, "'stain'", "2 image(s)")


@pytest.mark.workstation
@pytest.mark.parametrize("args", [["convert", "/nonexistent/run", "-o", "/tmp/x.tflite"]])
def test_convert_needs_a_run_folder(args: list[str]) -> None:
    _one_line_error(linewatch(*args, check=False), 3, "/nonexistent/run", "run folder")


@pytest.mark.workstation
def test_bad_size_option_is_a_usage_error(tmp_path: Path) -> None:
    proc = linewatch("train", str(tmp_path), "-o", str(tmp_path / "r"), "--size", "big", check=False)
    assert proc.returncode == 2 and "is not a size" in proc.stderr


def test_every_documented_exit_code_is_produced_by_a_cli_test() -> None:
    """docs/exit-codes.md promises these codes: each (but 0, and 1 which only a bug gives) has a test that makes
    the real command line exit with it."""
    import re

    from linewatch.edge.errors import EXIT_CODES

    tests = "".join(path.read_text() for path in Path(__file__).parent.glob("test_*.py"))
    for code in (c.code for c in EXIT_CODES if c.code > 1):
        assert re.search(rf"(returncode == {code}\b|\.wait\(\d+\) == {code}\b|_one_line_error\(proc, {code}\b)",
                         tests), f"no CLI test exits {code}"


def test_check_says_what_the_daemon_would_with_its_exit_code(tiny: Path, make_broker, tmp_path: Path) -> None:
    """`linewatch check`: 0 when the daemon would start, else each problem in a line with the daemon's exit code."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "cam", "right-pw"], check=True)
    passwords.chmod(0o644)
    broker = make_broker(password_file=passwords)
    secret = tmp_path / "pw"
    secret.write_text("right-pw\n")
    secret.chmod(0o600)
    good = tmp_path / "good.toml"
    good.write_text(f'state_dir = "{tmp_path}"\n[model]\npath = "{tiny}"\n[source]\nspec = "conveyor"\n'
                    f'[mqtt]\nbroker = "{broker.url}"\nusername = "cam"\npassword_file = "{secret}"\n')
    ok = linewatch("check", "--config", str(good), check=False)
    assert ok.returncode == 0 and "accepted user cam" in ok.stdout and "would start" in ok.stdout, ok.stderr

    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(tiny.read_bytes()[:4000])
    wrong = tmp_path / "wrong-pw"
    wrong.write_text("guess\n")
    for case, set_, code, words in (
            ("an unknown key", "mqtt.colour=red", 2, "mqtt.colour"),
            ("a truncated model", f"model.path={truncated}", 4, str(truncated)),
            ("a wrong password", f"mqtt.password_file={wrong}", 6, "refused user cam")):
        proc = linewatch("check", "--config", str(good), "--set", set_, check=False)
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("INFO: ")]  # LiteRT's own note
        assert proc.returncode == code and len(lines) == 1 and words in lines[0], (case, proc.stderr)
    secret_on_argv = linewatch("check", "--config", str(good), "--set", "http.token=abc", check=False)
    assert secret_on_argv.returncode == 2 and "LINEWATCH_HTTP_TOKEN" in secret_on_argv.stderr


def test_inspect_and_sign_refuse_a_model_that_does_not_load_and_public_files_are_readable(tiny: Path,
                                                                                           tmp_path: Path) -> None:
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(tiny.read_bytes()[:4000])
    key = tmp_path / "key"
    linewatch("keygen", "--out", str(key))
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(Path(f"{key}.pub").stat().st_mode) == 0o644
    for args in (("inspect", str(truncated)), ("sign", str(truncated), "--key", str(key))):
        proc = linewatch(*args, check=False)
        lines = [line for line in proc.stderr.splitlines() if not line.startswith("INFO: ")]  # LiteRT's own note
        assert proc.returncode == 4 and len(lines) == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "cannot be loaded" in proc.stderr
    assert not Path(f"{truncated}.sig").exists()
    model = tmp_path / "model.tflite"
    model.write_bytes(tiny.read_bytes())
    linewatch("sign", str(model), "--key", str(key))
    assert stat.S_IMODE(Path(f"{model}.sig").stat().st_mode) == 0o644  # the service user reads a copied signature


def test_log_level_is_taken_after_the_command_too(tmp_path: Path) -> None:
    proc = linewatch("keygen", "-o", str(tmp_path / "key"), "--log-level", "DEBUG", check=False)
    assert proc.returncode == 0 and (tmp_path / "key.pub").is_file(), proc.stderr


def test_every_option_of_every_command_shows_its_default_and_choices() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if not action.option_strings:
                continue
            if action.default not in (None, False, argparse.SUPPRESS):
                assert f"default: {action.default}" in text or "default:" in (action.help or ""), (name, action.dest)
            if action.choices:
                assert "{" + ",".join(map(str, action.choices)) + "}" in text, (name, action.dest)
