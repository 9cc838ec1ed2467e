"""A user's mistake ends in one line naming the thing, with the documented exit code."""

from __future__ import annotations

from pathlib import Path

import pytest

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
