"""A child's lease on its running job: how long it may go on working without a heartbeat.

Any host's rescuer may take a running job back once its `heartbeat_at` is older than
worker.stale_after (and its worker looks gone: on the far side of a partition, the
supervisor's own rows stop too). `heartbeat_at` is the database's now() when a heartbeat
(or the claim, or a progress report) ran, which is never earlier than when the child sent
it. So a child whose heartbeat sent at `t` succeeded holds its job at least until
`t + stale_after`, whatever became of the reply; past that, someone else may be running it.

The child therefore trusts its job until `renewed + stale_after - margin` and then fences
itself: it stops working on the job and stores nothing more for it (keeper.py, child.py). The margin
covers the fence's own reaction time and an output store already under way. Everything here
is a pure function of the times given; tests/test_fencing.py drives it with plain numbers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

MIN_MARGIN = 0.5  # seconds: twice child.FENCE_CHECK, so an expired lease is noticed within half the margin
MAX_MARGIN = 30.0  # a long stale_after (minutes) needs no more slack than this


def lease_clock() -> float:
    """The leases' clock, in seconds: CLOCK_BOOTTIME where there is one, else monotonic.

    BOOTTIME goes on counting while the machine is suspended, as the database's clock does on
    its own machine: a host that wakes up finds its lease spent, not frozen where it slept.
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def margin_for(stale_after: float) -> float:
    """How long before stale_after a child stops: a quarter of it, within [MIN_MARGIN, MAX_MARGIN]
    (and never more than half of it, so that an absurdly short stale_after still leaves a lease)."""
    return min(max(MIN_MARGIN, min(MAX_MARGIN, stale_after / 4)), stale_after / 2)


@dataclass
class Lease:
    """One job's lease, in lease_clock() seconds.

    Args:
        job_id: the job it is for.
        renewed: when the last call the database confirmed (claim, heartbeat, progress) was *sent*.
        stale_after: worker.stale_after.
    """

    job_id: str
    renewed: float
    stale_after: float

    @property
    def margin(self) -> float:
        return margin_for(self.stale_after)

    @property
    def expires(self) -> float:
        """When the child must stop: `renewed + stale_after - margin`."""
        return self.renewed + self.stale_after - self.margin

    def renew(self, sent: float) -> None:
        """A call sent at `sent` was confirmed: the job is ours until `sent + stale_after` at least.

        A reply that arrives late (a call stuck in a partition that went through after all)
        renews from when it was sent, and a stale reply never moves the lease backwards.
        """
        self.renewed = max(self.renewed, sent)

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def silent_for(self, now: float) -> float:
        """Seconds since the last confirmed call was sent."""
        return now - self.renewed
