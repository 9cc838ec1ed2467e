"""How many messages of a kind may pass: the devices' samples per reason, the station's per device."""

from __future__ import annotations

from collections.abc import Callable


class RateLimit:
    """A token bucket per key (a reason, a device): ``per_hour`` an hour each, a tenth of that at once."""

    def __init__(self, per_hour: float, clock: Callable[[], float]) -> None:
        self.rate = per_hour / 3600
        self.capacity = max(1.0, per_hour / 10)
        self.clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # key -> (tokens, when counted)

    def take(self, key: str) -> bool:
        """One message of ``key`` may pass (and is counted), or not."""
        now = self.clock()
        tokens, then = self._tokens.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - then) * self.rate)
        taken = tokens >= 1
        self._tokens[key] = (tokens - taken, now)
        return taken
