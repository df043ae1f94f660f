"""Leave the database alone for a while after it failed, so that a stalled server cannot stall a loop.

The supervisor's loop must keep watching its children whatever the database does: after a
failure its chores skip the database for a pause (doubling from `first` to `cap` seconds),
and the first success closes the breaker again. One warning per outage, one line when it ends.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from loguru import logger

from geoworker.backoff import Backoff
from geoworker.errors import DatabaseUnavailable

T = TypeVar("T")


class Breaker:
    """Args: what it guards (for the log line); first and cap pauses (s); clock (monotonic seconds)."""

    def __init__(self, what: str = "database", first: float = 1.0, cap: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.what = what
        self.clock = clock
        self.ok = False
        self.paused_until = 0.0
        self._backoff = Backoff(first, cap)
        self._warned = False

    def paused(self) -> bool:
        return self.clock() < self.paused_until

    def call(self, fn: Callable[[], T]) -> T | None:
        """fn(), or None when paused or when it raised DatabaseUnavailable (which opens the breaker)."""
        if self.paused():
            return None
        try:
            result = fn()
        except DatabaseUnavailable as exc:
            self.down(exc)
            return None
        self.up()
        return result

    def up(self) -> None:
        if not self.ok and self._warned:
            logger.info(f"{self.what} reachable again")
        self.ok = True
        self._warned = False
        self._backoff.reset()

    def down(self, exc: Any) -> None:
        self.ok = False
        self.paused_until = self.clock() + self._backoff.next_delay()
        if not self._warned:
            logger.error(f"{self.what} unavailable, will keep retrying: {exc}")
            self._warned = True
