"""The queue interface: what a child, a supervisor and the CLI may ask of the job queue.

Two implementations, each complete:

    geoworker.jobs.JobQueue        PostgreSQL, named SQL over one connection (queue.mode = "postgres")
    geoworker.remote.HttpJobQueue  the API's worker routes, for hosts without database access
                                   (queue.mode = "http")

Nothing above this module knows which one it has: `open_queue()` picks it from the settings,
and the child and the supervisor are written against `Queue` only. Both raise the same
exceptions (geoworker.errors): DatabaseUnavailable for an outage (retried with backoff),
LockLost when the caller no longer holds the job, JobNotFound, ConfigError for a queue that can
never work as configured. tests/test_queue_interface.py checks that both implement every
member with the same parameters.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from geoworker.jobs import Job, JobQueue


@runtime_checkable
class Queue(Protocol):
    """The job queue seen from one process, acting as `worker_id` (written to locked_by and to events)."""

    worker_id: str

    # --- connection -----------------------------------------------------------------------

    def check(self) -> None:
        """Prove the queue usable once at start: reachable, schema current (or token accepted).

        Raises:
            DatabaseUnavailable: not reachable now (wait and try again).
            ConfigError: it can never work as configured (an old schema, a refused token).
        """

    def ping(self) -> None:
        """One round trip; DatabaseUnavailable if it fails."""

    def close(self) -> None:
        """Drop the connection or session; the next call opens a new one."""

    # --- waking up ------------------------------------------------------------------------

    def listen(self, *channels: str) -> None:
        """Subscribe to NOTIFY channels (default: new claimable jobs), again after reconnects."""

    def wakeup_fd(self) -> int | None:
        """A file descriptor that turns readable when a notification arrives, or None.

        Never connects: None while there is no connection (or, over HTTP, never anything to select).
        """

    def notifications(self) -> list[tuple[str, str]]:
        """(channel, payload) pairs that have arrived, without blocking."""

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """Block until a notification arrives or `timeout` seconds pass."""

    # --- a worker's own jobs -----------------------------------------------------------------

    def claim(self) -> Job | None:
        """The next claimable job, now running under this worker (attempts += 1), or None."""

    def held_job(self, worker_id: str | None = None) -> Job | None:
        """The running job `worker_id` (default: this worker) holds, or None."""

    def heartbeat(self, job_id: str) -> bool:
        """True while this worker still holds the job."""

    def progress(self, job_id: str, percent: int, message: str | None = None) -> bool:
        """Record progress (also a heartbeat); True while this worker still holds the job."""

    def complete(self, job_id: str, outputs: Any = None, result: Any = None) -> Job:
        """Mark the job succeeded; LockLost if this worker no longer holds it."""

    def complete_and_claim(self, job_id: str, outputs: Any = None, result: Any = None) -> tuple[bool, Job | None]:
        """complete() then claim(): (whether it was completed, the next job or None)."""

    def fail(self, job: Job, code: str, message: str, *, permanent: bool, reason: str = "error") -> Job:
        """End this worker's attempt: failed for good, or queued again after the backoff."""

    def end_attempt(self, job_id: str, attempts: int, *, holder: str, code: str, message: str,
                    permanent: bool = False, reason: str = "error", min_delay: float = 0.0) -> Job:
        """End the attempt `holder` is running (a supervisor settling a child it killed)."""

    def release(self, job_id: str, holder: str, message: str, delay: float = 0.0) -> Job:
        """Give `holder`'s running job back without counting the attempt."""

    # --- a supervisor's chores ------------------------------------------------------------

    def register_worker(self, worker_id: str, kind: str, pid: int, parent_id: str | None = None,
                        host: str | None = None) -> None:
        """Announce a process that may hold jobs."""

    def touch_workers(self, workers: Iterable[Mapping[str, Any]]) -> None:
        """Mark processes alive: each {id, rss, current_job, jobs_done}."""

    def stop_workers(self, ids: Sequence[str]) -> None:
        """Mark processes gone."""

    def forget_workers(self, older_than: float = 86400.0) -> None:
        """Delete worker rows that stopped long ago."""

    def requeue_stale(self, stale_after: float, limit: int = 100) -> list[Job]:
        """Rescue running jobs whose heartbeat is stale and whose worker is gone."""

    def summary(self) -> dict[str, Any]:
        """{ready, scheduled, running, oldest_ready_age} over the whole queue."""

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status ({} where the caller cannot see the whole queue)."""


def open_queue(settings, worker_id: str, application_name: str = "geoworker", dsn: str | None = None,
               statement_timeout: float | None = None) -> Queue:
    """The queue `settings.queue.mode` asks for: JobQueue on the database, or HttpJobQueue on the API.

    In http mode nothing here touches the database: the DSN is not even resolved (so no
    embedded server is started).

    Args:
        worker_id: the identity the queue acts as.
        dsn: an already resolved DSN (the supervisor passes its own to its children).
        statement_timeout: seconds before the database cancels a statement (postgres mode).
    """
    if settings.queue.mode == "http":
        from geoworker.remote import HttpJobQueue  # late: requests and the wire format only in http mode

        return HttpJobQueue.from_settings(settings, worker_id)
    return JobQueue.from_settings(settings, worker_id, application_name, dsn=dsn, statement_timeout=statement_timeout)
