"""Telling systemd how the daemon is: ready, alive (watchdog), and a status line for ``systemctl status``.

The notify protocol is one datagram per message on ``$NOTIFY_SOCKET`` (a path, or an abstract
socket written ``@name``), so it is a few lines here rather than a dependency. Outside systemd
(no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``READY=1``, ``WATCHDOG=1``, ``STATUS=…``… in one datagram; False outside systemd or on error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
        except OSError as exc:
            logger.debug("cannot notify systemd at %s: %s", address, exc)
            return False
    return True


def watchdog_seconds() -> float | None:
    """``WatchdogSec=`` of the unit when it applies to this process, else None."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return int(usec) / 1_000_000
    except ValueError:
        return None


class ServiceNotifier:
    """Readiness, then watchdog pings only while the daemon makes progress, with a status line each time.

    ``last_progress()`` is the monotonic time the frame loop last moved (a frame classified, a
    camera reopen attempted, or the source finished). A camera or interpreter stuck in a call
    stops the pings, and systemd restarts the service after ``WatchdogSec``.
    """

    def __init__(self, last_progress: Callable[[], float], status: Callable[[], str]) -> None:
        self.last_progress = last_progress
        self.status = status
        self.watchdog = watchdog_seconds()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ready(self) -> None:
        """The model is loaded and the source delivers frames; the broker may well be away still."""
        if not self.enabled:
            return
        notify("READY=1", f"STATUS={self.status()}")
        self._thread = threading.Thread(target=self._run, name="systemd-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = self.watchdog / 2 if self.watchdog else 5.0
        while not self._stop.wait(period):
            stalled = time.monotonic() - self.last_progress()
            if self.watchdog and stalled < self.watchdog:
                notify("WATCHDOG=1", f"STATUS={self.status()}")
            else:
                if self.watchdog:
                    logger.warning("no progress for %.0f s: not reassuring the watchdog", stalled)
                notify(f"STATUS={self.status()}")

    def reloading(self) -> None:
        """A reload begins (systemd holds ``systemctl reload`` until ``reloaded``)."""
        if self.enabled:
            notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                   "STATUS=reloading the configuration")

    def reloaded(self) -> None:
        """The reload ended, taken or refused: the daemon runs on either way."""
        if self.enabled:
            notify("READY=1", f"STATUS={self.status()}")

    def stopping(self) -> None:
        self._stop.set()
        if self.enabled:
            notify("STOPPING=1", "STATUS=stopping: flushing the spool")
