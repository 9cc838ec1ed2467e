"""What the workstation commands show on the terminal: linewatch's progress, not TensorFlow's start-up.

TensorFlow and its C++ libraries write to file descriptor 2 directly (oneDNN notices, absl
warnings, ``NodeDef mentions attribute ...``), from threads and before Python's logging is
set up, so no logging setting silences them all. Unless ``--verbose``, :func:`quiet_native_logs`
points descriptor 2 at a log file for the length of the command and gives Python's
``sys.stderr`` (our errors, warnings and logging) a copy of the real terminal.

:class:`EpochProgress` is the one progress display of ``train`` and ``tune``: a bar within the
epoch on a terminal, and one line per epoch with the validation metrics and the time left.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

# Set before TensorFlow is first imported: its C++ side reads them once.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR", "ABSL_MIN_LOG_LEVEL": "3"}


@contextlib.contextmanager
def quiet_native_logs(log_file: Path | None, verbose: bool = False) -> Iterator[None]:
    """Send what TensorFlow's native code writes to ``log_file`` (or nowhere) instead of the terminal."""
    if verbose:
        yield
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal = io.TextIOWrapper(os.fdopen(terminal_fd, "wb", buffering=0), write_through=True,
                                encoding=sys.stderr.encoding or "utf-8", errors="backslashreplace")
    target = os.devnull
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            target = str(log_file)
        except OSError:
            pass  # the command itself will name the unwritable folder
    sink = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old_stderr = sys.stderr
    handlers = [h for h in logging.root.handlers
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old_stderr]
    os.dup2(sink, 2)
    os.close(sink)
    sys.stderr = terminal
    for handler in handlers:
        handler.setStream(terminal)
    _quiet_python_loggers()
    try:
        yield
    finally:
        sys.stderr = old_stderr
        for handler in handlers:
            handler.setStream(old_stderr)
        os.dup2(terminal_fd, 2)
        terminal.close()


def _quiet_python_loggers() -> None:
    """TensorFlow's and absl's Python loggers speak only of errors."""
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", module=r"keras(\..*)?$")
    warnings.filterwarnings("ignore", module=r"tensorflow(\..*)?$")


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


class EpochProgress:
    """Per-epoch progress of one training: a live bar on a terminal, a line per epoch always.

    ``ceiling`` is the most epochs the run may take and ``deadline`` its time budget
    (``time.monotonic()``): the time left is the nearer of the two, an upper bound, since a
    run that converges stops sooner.
    """

    def __init__(self, ceiling: int, steps: int, deadline: float, prefix: str = "", lines: bool = True,
                 stream: TextIO | None = None) -> None:
        self.ceiling, self.steps, self.deadline, self.prefix, self.lines = ceiling, steps, deadline, prefix, lines
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty()
        self._epoch_started = self._last_draw = 0.0
        self._epoch_seconds: list[float] = []

    def begin_epoch(self) -> None:
        self._epoch_started = time.monotonic()

    def step(self, epoch: int, done: int) -> None:
        """A live bar within the epoch, redrawn at most ten times a second (terminals only)."""
        now = time.monotonic()
        if not self.live or now - self._last_draw < 0.1:
            return
        self._last_draw = now
        filled = int(20 * done / max(1, self.steps))
        self.stream.write(f"\r{self.prefix}epoch {epoch:>3}/{self.ceiling} [{'#' * filled}{'.' * (20 - filled)}] "
                          f"{done}/{self.steps}")
        self.stream.flush()

    def end_epoch(self, epoch: int, logs: dict[str, Any], best_epoch: int, learning_rate: float) -> str:
        """Print the epoch's line (only redraw the live one when ``lines`` is off) and return it."""
        now = time.monotonic()
        self._epoch_seconds.append(now - self._epoch_started)
        recent = self._epoch_seconds[-3:]
        by_epochs = (self.ceiling - epoch) * sum(recent) / len(recent)
        left = max(0.0, min(by_epochs, self.deadline - now))
        line = (f"{self.prefix}epoch {epoch:>3}/{self.ceiling}  loss {logs.get('loss', float('nan')):.4f}  "
                f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
                + (f"val_acc {logs['val_accuracy']:.4f}  " if "val_accuracy" in logs else "")  # none for autoencoders
                + f"best @{best_epoch}  lr {learning_rate:.2g}  "
                f"{self._epoch_seconds[-1]:.1f} s  (at most {_clock(left)} left)")
        if self.lines or self.live:
            self.stream.write(("\r\033[K" if self.live else "") + line + ("\n" if self.lines else ""))
            self.stream.flush()
        return line
