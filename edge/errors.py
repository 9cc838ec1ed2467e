"""The errors a user can cause, each with the exit code the CLI documents (docs/exit-codes.md).

A user's mistake ends in one line that names the thing and what to do, never a traceback.
"""

from __future__ import annotations


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
