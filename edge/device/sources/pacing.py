"""Holding a finite source to a frame rate, as a camera would deliver it."""

from __future__ import annotations

import time


class Pacer:
    """Sleeps so that successive ``wait()`` calls are ``1/fps`` apart; no-op without a rate."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.period:
            return
        self._next += self.period
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self._next = time.monotonic()  # fell behind: do not burst to catch up
