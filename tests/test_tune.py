"""``linewatch tune``: candidates timed as int8 before training, the budget enforced, a run convert takes as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from linewatch.convert.tune import TARGETS, Candidate, pareto_front, parse_duration, parse_kib, parse_ms
from linewatch.edge.cli import build_parser
from linewatch.edge.errors import UsageError
from linewatch.edge.model import artifact
from tests.helpers import linewatch

pytestmark = pytest.mark.workstation

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_size_limited_search_trains_only_what_fits_and_keeps_a_convertible_best(photos: Path,
                                                                                     tmp_path: Path) -> None:
    out = tmp_path / "tune"
    proc = linewatch("tune", str(photos), "-o", str(out), "--budget", "6m", "--trials", "6", "--target", "pi4",
                     "--max-size", "150k", "--seed", "3", timeout=900)
    result = json.loads((out / "tune.json").read_text())
    candidates = result["candidates"]
    assert 2 <= len(candidates) <= 6
    # The defaults go first, so the search starts from what plain `linewatch train` gives.
    assert (candidates[0]["architecture"], candidates[0]["width"]) == ("cnn", 1.0)
    # The latency on the target is the one measured here times the published reference ratio.
    assert "17.0 ms" in result["factor_note"] and "XNNPACK" in result["factor_note"] and result["factor"] > 0
    for c in candidates:
        trained = (out / f"trial-{c['number']:03d}" / "model.keras").is_file()
        assert c["host_ms"] > 0 and c["target_ms"] == pytest.approx(c["host_ms"] * result["factor"])
        if c["status"] == "over size":
            assert c["kib"] > 150 and not trained  # rejected before any training
        else:
            assert trained and c["status"] in ("done", "out of time", "pruned", "best"), c
    # Every candidate was printed as a row of the live table.
    assert sum(line.split()[:1] == [str(c["number"])] for c in candidates for line in proc.stdout.splitlines()) \
        >= len(candidates)
    best = next(c for c in candidates if c["status"] == "best")
    assert best["number"] == result["best"] and best["kib"] <= 150 * 1.1
    finished = [c for c in candidates if c["int8_val_accuracy"] is not None]
    assert best["int8_val_accuracy"] == max(c["int8_val_accuracy"] for c in finished)
    assert (out / "pareto.png").read_bytes().startswith(PNG) and "pareto.png" in (out / "report.html").read_text()
    assert "confusion_matrix.png" in (out / "best" / "report.html").read_text()
    # OUT/best is a run folder `linewatch convert` takes as it is.
    linewatch("convert", str(out / "best"), "-o", str(tmp_path / "best.tflite"), "--no-compare")
    card = artifact.load(tmp_path / "best.tflite").card
    assert card.architecture == best["architecture"] and (card.input.height, card.input.width) == tuple(best["size"])


def test_a_latency_limit_nothing_meets_is_a_usage_error_before_any_training(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    proc = linewatch("tune", str(photos), "-o", str(out), "--budget", "3m", "--trials", "2", "--max-latency",
                     "0.0001ms", check=False)
    assert proc.returncode == 2 and "no candidate fit the limits" in proc.stderr, proc.stderr
    assert proc.stdout.count("over latency") == 2 and not list(out.glob("trial-*/model.keras"))


def test_budget_and_limit_parsing() -> None:
    assert parse_duration("20m") == 1200 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("2") == 120 and parse_ms("20ms") == 20 and parse_kib("2m") == 2048
    assert parse_kib("512k") == 512 and parse_kib("300") == 300
    for bad in (lambda: parse_duration("soon"), lambda: parse_ms("fast"), lambda: parse_kib("big")):
        with pytest.raises(UsageError):
            bad()


def test_the_pareto_front_keeps_only_undominated_candidates() -> None:
    def cand(n: int, acc: float, ms: float) -> Candidate:
        return Candidate(n, "cnn", 1.0, (32, 32), 1e-3, 0.5, int8_val_accuracy=acc, target_ms=ms)

    a, b, c, d = cand(1, 0.90, 5), cand(2, 0.95, 10), cand(3, 0.93, 12), cand(4, 0.97, 30)
    assert pareto_front([a, b, c, d]) == [a, b, d]


def test_the_tune_commands_target_choices_are_the_targets_it_knows() -> None:
    """The CLI names them without importing the search (and TensorFlow); this keeps the two lists one."""
    tune = build_parser()._subparsers._group_actions[0].choices["tune"]
    assert next(a for a in tune._actions if a.dest == "target").choices == list(TARGETS)
