"""Holding a finite source to a frame rate, as a camera would deliver it."""

from __future__ import annotations

import time

MIN_SLEEP_S = 0.001  # a sleep overshoots by tens of microseconds: shorter waits are run through, and caught up


class Pacer:
    """Spaces successive ``wait()`` calls ``1/fps`` apart on average; no-op without a rate.

    A wait shorter than ``MIN_SLEEP_S`` is not slept: at thousands of frames a second a sleep's
    own overshoot would lower the rate, so such frames come in short bursts at the right mean
    rate. A source more than a period late starts afresh rather than bursting to catch up.
    """

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.period:
            return
        self._next += self.period
        delay = self._next - time.monotonic()
        if delay > MIN_SLEEP_S:
            time.sleep(delay)
        elif delay < -self.period:  # fell behind: do not burst to catch up
            self._next = time.monotonic()
