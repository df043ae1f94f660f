"""The running job's keeper in a child: its heartbeats, its lease and the fence.

A child's job stays its own while the database keeps confirming calls about it (the claim,
a heartbeat, a progress report); lease.py says for how long, as pure arithmetic. The keeper
holds that lease for the job the child runs: its thread sends the heartbeats, every
confirmed call renews the lease, a refused one means someone else decided the job
("lost"), and once the lease runs out the job must stop at once and store nothing more
("fenced"), before another host's rescuer may take it over. child.py runs jobs and reacts
(raises Fenced, signals itself); the keeper only knows whether the job is still ours.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from loguru import logger

from geoworker.errors import DatabaseUnavailable
from geoworker.jobs import Job
from geoworker.lease import Lease, lease_clock, margin_for
from geoworker.queue import Queue

PING_INTERVAL = 1.0  # seconds between two pings to the supervisor (child.py) and the heartbeat thread's tick


class JobKeeper:
    """The lease of the job a child holds, kept alive by heartbeats, from its claim to its outcome.

    Args:
        settings: the worker's Settings (worker.heartbeat_interval, worker.stale_after).
        send: the child's message to its supervisor (`send(event, **data)`).
    """

    def __init__(self, settings, send: Callable[..., None]):
        self.settings = settings
        self.send = send
        self.queue: Queue | None = None  # the child's, once it has booted
        self.current: Job | None = None  # the job this child holds: heartbeated until its outcome is written
        self.working: Job | None = None  # the job whose handler runs: what a fence stops
        self.lease: Lease | None = None
        self._fenced: str | None = None  # the job this child fenced itself off (said once per job)
        self._fence_lock = threading.Lock()
        self._heartbeat_due = 0.0

    def hold(self, job: Job, claimed: float | None = None) -> None:
        """`job` is now this child's; its lease starts when the call that claimed it was sent (default now)."""
        self.lease = Lease(job.id, lease_clock() if claimed is None else claimed, self.settings.worker.stale_after)
        self._heartbeat_due = time.monotonic() + self.settings.worker.heartbeat_interval
        self.current = job

    def drop(self) -> None:
        """The job's outcome is written (or given up): no more heartbeats for it."""
        self.current = None

    @contextmanager
    def working_on(self, job: Job) -> Iterator[None]:
        """While the job's handler runs: the part a fence stops.

        Once the work is done, writing its outcome is safe however late (a job someone else holds
        by then refuses it), so the fence no longer applies.
        """
        self.working = job
        try:
            yield
        finally:
            self.working = None

    def confirmed(self, job: Job, sent: float, still_ours: bool) -> None:
        """A call about `job` sent at `sent` (lease_clock()) was answered: renew the lease, or stop the job.

        A progress report counts as a heartbeat, so the next heartbeat waits a full interval.
        """
        self._heartbeat_due = time.monotonic() + self.settings.worker.heartbeat_interval
        if still_ours:
            lease = self.lease
            if lease is not None and lease.job_id == job.id:
                lease.renew(sent)
        elif self.working is job:  # (while its outcome is written, that write learns it is refused)
            self.lost(job)

    def spent(self) -> Job | None:
        """The running job if its lease has run out: it must stop now."""
        job, lease = self.working, self.lease
        if job is not None and lease is not None and lease.job_id == job.id and lease.expired(lease_clock()):
            return job
        return None

    def fenced_now(self) -> bool:
        """True while the job this child fenced itself off is still running (a stop is a fence, not a shutdown)."""
        job = self.working
        return self._fenced is not None and job is not None and job.id == self._fenced

    def fence(self, job: Job) -> bool:
        """Say once that this child stops working on `job` (log and supervisor); False if already said."""
        with self._fence_lock:
            if self._fenced == job.id:
                return False
            self._fenced = job.id
        lease = self.lease
        silent = lease.silent_for(lease_clock()) if lease is not None else 0.0
        stale_after = lease.stale_after if lease is not None else self.settings.worker.stale_after
        logger.bind(job=job.id).warning(
            f"job {job.id}: no heartbeat confirmed for {silent:.1f} s (worker.stale_after is "
            f"{stale_after:g} s): stopping work on it and storing nothing more, so that another "
            f"worker may take it over")
        self.send("fenced", job=job.id, silent=round(silent, 3), stale_after=stale_after)
        return True

    def lost(self, job: Job) -> None:
        """Someone else decided this job (cancelled, rescued): ask the supervisor to stop us."""
        logger.warning(f"job {job.id} is no longer ours (cancelled or rescued); stopping it")
        self.send("lost", job=job.id)

    def heartbeat_loop(self) -> None:
        """Heartbeat the held job every heartbeat_interval (a daemon thread of the child).

        A thread of the child rather than the supervisor's job, so that it proves what the rest
        of the fleet needs to know: this very process is alive and scheduling. A stopped or
        wedged child stops both its pings and its heartbeats, and is killed locally (silence)
        or rescued from another host (stale heartbeat). It shares the child's one connection.
        """
        w = self.settings.worker
        # after a failure, try again sooner: two missed heartbeats in a row must not cost the lease
        retry_after = min(w.heartbeat_interval, max(PING_INTERVAL, margin_for(w.stale_after) / 2))
        while True:
            time.sleep(min(PING_INTERVAL, w.heartbeat_interval))
            job = self.current
            if job is None or self.queue is None or time.monotonic() < self._heartbeat_due:
                continue
            self._heartbeat_due = time.monotonic() + w.heartbeat_interval
            sent = lease_clock()
            try:
                self.confirmed(job, sent, self.queue.heartbeat(job.id))
            except DatabaseUnavailable as exc:
                self._heartbeat_due = time.monotonic() + retry_after
                logger.warning(f"heartbeat failed: {exc}")
            except Exception:
                logger.exception("heartbeat failed")
