"""The stale-job rescuer, one service shared by every supervisor and by the API process.

A running job whose heartbeat is older than worker.stale_after and whose worker is gone (or
no longer reports it as its current job) goes back to the queue, its attempt counted
(`crashed`), or to `failed` when its attempts are spent; an event says which worker vanished.
Every supervisor runs it (any host's jobs: PostgreSQL is the only coordinator), and so does
`geoworker api`, because remote workers (queue.mode = "http") cannot reach the database.
Worker rows that stopped a week ago are forgotten on the same schedule, hourly.

The schedule is a pure function of a clock, so tests drive it with a fake one; what counts as
stale is the database's own judgement (find_stale_jobs in sql/queries.sql).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from loguru import logger

from geoworker.errors import DatabaseUnavailable
from geoworker.jobs import Job
from geoworker.queue import Queue

FORGET_EVERY = 3600.0  # seconds between two sweeps of old worker rows
FORGET_AFTER = 7 * 86400.0  # worker rows stopped (or vanished) longer ago than this are deleted


class Rescuer:
    """When to rescue, and the rescue itself.

    Args:
        stale_after: worker.stale_after, seconds.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic):
        self.stale_after = stale_after
        self.clock = clock
        self.next_rescue = 0.0  # at once: a supervisor starting after a crash rescues first
        self.next_forget = 0.0

    @property
    def interval(self) -> float:
        """As often as a quarter of stale_after, between 1 and 10 s: a dead worker's job waits at most that."""
        return max(1.0, min(10.0, self.stale_after / 4))

    def due(self) -> bool:
        return self.clock() >= self.next_rescue

    def run(self, queue: Queue) -> list[Job]:
        """Rescue what is stale now (and forget old worker rows when due); logs each rescue.

        Raises:
            DatabaseUnavailable: the next try is still one interval away.
        """
        now = self.clock()
        self.next_rescue = now + self.interval
        rescued = queue.requeue_stale(self.stale_after)
        for job in rescued:
            logger.warning(f"rescued job {job.id} from a worker that is gone: now {job.status}"
                           + (f" ({job.last_error})" if job.last_error else ""))
        if now >= self.next_forget:
            self.next_forget = now + FORGET_EVERY
            queue.forget_workers(older_than=FORGET_AFTER)
        return rescued


class RescueThread:
    """The rescuer on a thread of its own (the API process), with its own queue connection."""

    def __init__(self, rescuer: Rescuer, open_queue: Callable[[], Queue]):
        self.rescuer = rescuer
        self.open_queue = open_queue
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rescuer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        queue = self.open_queue()
        warned = False
        while not self._stop.wait(self.rescuer.interval):
            try:
                self.rescuer.run(queue)
                warned = False
            except DatabaseUnavailable as exc:
                if not warned:
                    logger.error(f"stale-job rescuer: database unavailable, will keep trying: {exc}")
                    warned = True
            except Exception:
                logger.exception("stale-job rescuer failed")
        queue.close()
