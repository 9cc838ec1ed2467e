"""The errors a user can cause, each with the exit code the CLI documents.

A user's mistake ends in one line that names the thing and what to do, never a traceback.
``EXIT_CODES`` is the one table of exit codes: the ``--help`` epilog and docs/exit-codes.md
are generated from it (``make docs``), and a test checks they agree.
"""

from __future__ import annotations

from typing import NamedTuple


class ExitCode(NamedTuple):
    code: int
    meaning: str
    examples: str = ""


EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "success"),
    ExitCode(1, "internal error: a bug, please report it with the log"),
    ExitCode(2, "usage or configuration error",
             "unknown option or config key, `--size big`, a broker URL that is not `mqtt://` or `mqtts://`"),
    ExitCode(3, "input data error",
             "missing dataset or source folder, fewer than 2 classes, a class too small to split"),
    ExitCode(4, "model error",
             "model file missing, truncated, altered (sha256 mismatch), not a classifier, labels that do not fit"),
    ExitCode(5, "a model failed its gate: the parity gate at conversion, or the shadow rules of `deploy --auto`",
             "int8 accuracy dropped more than `--max-drop` points, or a class's recall more than 3 points; a "
             "candidate in shadow under `--min-agreement`"),
    ExitCode(6, "MQTT broker unreachable or refused the connection", "nothing listens at `--broker`, a wrong password"),
    ExitCode(130, "interrupted (Ctrl-C)"),
)
INTERRUPTED = 130


class LinewatchError(Exception):
    """Base of every user-facing error; ``exit_code`` is what ``linewatch`` exits with."""

    exit_code = 1


class UsageError(LinewatchError):
    """A wrong option, config key or value."""

    exit_code = 2


class DataError(LinewatchError):
    """Missing or unusable input data: a folder, an image, a frame source."""

    exit_code = 3


class ModelError(LinewatchError):
    """A model file that is missing, truncated, or does not fit what is asked of it."""

    exit_code = 4


class GateError(LinewatchError):
    """A converted model that failed the parity gate against its float original."""

    exit_code = 5


class BrokerError(LinewatchError):
    """The MQTT broker could not be reached or refused us."""

    exit_code = 6


def exit_code_epilog() -> str:
    """The exit-code list at the end of ``linewatch --help``."""
    return "exit codes:\n" + "\n".join(f"  {c.code:<3} {c.meaning}" for c in EXIT_CODES)


def exit_code_table() -> str:
    """The Markdown table of docs/exit-codes.md."""
    rows = ["| code | meaning | examples |", "| --- | --- | --- |"]
    rows += [f"| {c.code} | {c.meaning} | {c.examples} |" for c in EXIT_CODES]
    return "\n".join(rows)
