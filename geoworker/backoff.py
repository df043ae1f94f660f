"""Exponential backoff, in one place: job retries, reconnects, child boots, transfers."""

from __future__ import annotations

import random
import time

# 2**30 times any sensible first delay is past every cap; it also keeps the float finite
_MAX_DOUBLINGS = 30


def exponential(first: float, cap: float, n: int) -> float:
    """The n-th delay (n = 0, 1, 2, ...): first * 2**n, capped; never overflows however large n grows."""
    return min(cap, first * (2 ** min(max(0, n), _MAX_DOUBLINGS)))


def equal_jitter(ceiling: float, rng: random.Random | None = None) -> float:
    """A delay in [ceiling/2, ceiling]: still backing off, but spread so that things failing
    together do not come back together."""
    return ceiling / 2 + (rng or random).random() * ceiling / 2


class Backoff:
    """Delays for retrying one thing: first, 2 x first, ... capped at cap; reset on success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0):
        self.first, self.cap, self.failures = first, cap, 0

    def next_delay(self) -> float:
        delay = exponential(self.first, self.cap, self.failures)
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0

    def sleep(self) -> float:
        delay = self.next_delay()
        time.sleep(delay)
        return delay
