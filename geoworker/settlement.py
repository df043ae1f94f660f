"""What happens to the job of a child the supervisor killed, or that died on its own.

Three cases, each an Outcome (a pure function of what is known):

    for_kill()   the watchdog stopped the child (timeout, memory, silence), a cancel or a shutdown:
                 the attempt ends with the verdict's code (retried with backoff, or failed when
                 attempts are spent); a shutdown releases the job without counting the attempt.
                 Either way the job is claimable again no sooner than the kill grace + 1 s, when
                 the child is surely dead: the same job never runs twice at once.
    for_crash()  the child died mid-job by itself (segfault, OOM killer, os._exit): `crashed`.
    for_held()   the database says a dead child still held a job the supervisor never heard of
                 (a busy child claims its next job in the statement that completes the last):
                 `crashed` if the child died by itself, released if it was stopped for another
                 job's sake.

The Settler writes outcomes through the queue; while the database is away (the breaker is
open) they wait in memory, in order, and are written once it answers. A job someone else
settled meanwhile (LockLost, JobNotFound) is moot, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from loguru import logger

from geoworker.breaker import Breaker
from geoworker.errors import DatabaseUnavailable, DataRefused, JobNotFound, LockLost
from geoworker.queue import Queue
from geoworker.watchdog import KILL_GRACE, RunningJob


@dataclass
class Outcome:
    """A job outcome the supervisor owes the database."""

    job_id: str
    attempts: int
    holder: str  # the child's worker id: the queue acts only while it still holds the job
    code: str | None
    message: str
    reason: str
    release: bool = False  # back to the queue without counting the attempt
    delay: float = 0.0  # claimable again no sooner than this
    tries: int = 0


def for_kill(job: RunningJob, holder: str, reason: str, code: str | None, message: str,
             release: bool = False) -> Outcome:
    return Outcome(job.id, job.attempt or 1, holder, code, message or reason, reason, release=release,
                   delay=KILL_GRACE + 1)


def for_crash(job: RunningJob, holder: str, how: str) -> Outcome:
    return Outcome(job.id, job.attempt or 1, holder, "crashed", f"the worker process died ({how})", "crashed")


def for_held(job_id: str, attempts: int, holder: str, kill_reason: str | None, how: str) -> Outcome:
    if kill_reason is None:
        return Outcome(job_id, attempts, holder, "crashed", f"the worker process died ({how})", "crashed")
    # stopped for another job's sake: this one did nothing wrong
    return Outcome(job_id, attempts, holder, None, f"its worker was stopped ({kill_reason})", "shutdown",
                   release=True)


class Settler:
    """Writes outcomes, keeping those the database cannot take yet.

    Args:
        queue: returns the supervisor's queue (it may be replaced).
        breaker: the supervisor's database breaker: while it is open, nothing is tried.
        emit: the supervisor's observer hook, told of each attempt it ended ("job_settled").
    """

    def __init__(self, queue: Callable[[], Queue], breaker: Breaker, emit: Callable[..., None]):
        self._queue = queue
        self.breaker = breaker
        self.emit = emit
        self.pending: list[Outcome] = []

    def settle(self, outcome: Outcome) -> None:
        if not self._write(outcome):
            self.pending.append(outcome)

    def retry_pending(self) -> None:
        pending, self.pending = self.pending, []
        for outcome in pending:
            if not self._write(outcome):
                self.pending.append(outcome)

    def _fail_for_good(self, queue: Queue, o: Outcome, exc: Exception) -> bool:
        """A value the database refuses will be refused again: say so once and fail the job, never loop."""
        logger.error(f"job {o.job_id}: the database refused its outcome ({exc}); failing it as internal_error")
        try:
            queue.end_attempt(o.job_id, o.attempts, holder=o.holder, code="internal_error",
                              message=f"the outcome could not be recorded: {exc}", permanent=True, reason=o.reason)
        except (LockLost, JobNotFound, DataRefused) as again:
            logger.error(f"job {o.job_id}: could not be failed either ({again}); left to the stale-job rescuer")
        except DatabaseUnavailable as down:
            self.breaker.down(down)
            return False
        return True

    def _write(self, o: Outcome) -> bool:
        """True when written (or moot); False to try again later."""
        if self.breaker.paused():
            return False
        o.tries += 1
        queue = self._queue()
        try:
            if o.release:
                queue.release(o.job_id, o.holder, f"released: {o.message}; this attempt does not count",
                              delay=o.delay)
            else:
                job = queue.end_attempt(o.job_id, o.attempts, holder=o.holder, code=o.code or "crashed",
                                        message=o.message, reason=o.reason, min_delay=o.delay)
                self.emit("job_settled", job=job, reason=o.reason)
            self.breaker.up()
            return True
        except (LockLost, JobNotFound) as exc:
            logger.info(f"job {o.job_id}: nothing to settle ({exc})")
            return True
        except DataRefused as exc:
            return self._fail_for_good(queue, o, exc)
        except DatabaseUnavailable as exc:
            self.breaker.down(exc)
            return False
        except Exception:
            # anything else (a refused API call, a read-only replica after a failover) must not
            # stop the loop either: keep the outcome and try again later
            logger.exception(f"job {o.job_id}: settling failed; will retry")
            return False

