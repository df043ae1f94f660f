"""Every queue operation, by name, over one connection; and the retry policy.

`JobQueue` is the only caller of sql/queries.sql. Complete, fail and requeue act only
while the job is still `running` and locked by the caller; otherwise they raise
LockLost and leave an event saying who tried what, so a worker that lost its job can
never overwrite a newer outcome.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import random
import uuid
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

import psycopg2.extras

from geoworker import db
from geoworker.backoff import equal_jitter, exponential
from geoworker.errors import InvalidState, JobNotFound, LockLost
from geoworker.session import Session

psycopg2.extras.register_default_jsonb(loads=json.loads, globally=True)


class Status(str, enum.Enum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


@dataclass(frozen=True)
class Job:
    """One row of geo_jobs."""

    id: str
    task_type: str
    status: str
    priority: int = 0
    params: dict = field(default_factory=dict)
    input: Any = None
    outputs: Any = None
    result: Any = None
    progress: int = 0
    progress_message: str | None = None
    attempts: int = 0
    max_attempts: int = 5
    run_at: dt.datetime | None = None
    locked_by: str | None = None
    heartbeat_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error_code: str | None = None
    last_error: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    owner: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Job":
        names = {f.name for f in fields(cls)}
        return cls(**{k: (str(v) if k == "id" else v) for k, v in row.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: timestamps as ISO 8601 strings."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.isoformat() if isinstance(value, dt.datetime) else value
        return out


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter: attempt n waits in [d/2, d], d = min(cap, base * 2^(n-1))."""

    base: float = 10.0
    cap: float = 3600.0

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        return equal_jitter(exponential(self.base, self.cap, attempts - 1), rng)

    @classmethod
    def from_settings(cls, settings) -> "RetryPolicy":
        return cls(base=settings.retry.backoff_base, cap=settings.retry.backoff_max)


def _json(value: Any) -> psycopg2.extras.Json | None:
    return None if value is None else psycopg2.extras.Json(value, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


class JobQueue:
    """The queue, seen from one process: a connection (opened lazily, reopened after loss) and an identity.

    Args:
        dsn: where the database is.
        worker_id: written to locked_by and to events this process causes.
        retry: the backoff policy for failed attempts.
    """

    def __init__(self, dsn: str, worker_id: str = "cli", retry: RetryPolicy | None = None,
                 application_name: str = "geoworker", connect_timeout: float = 10, sslmode: str = "",
                 prepare: bool = True, statement_timeout: float | None = None, own_schema: bool = False):
        self.dsn = dsn
        self.own_schema = own_schema  # the embedded server: check() keeps its schema current
        self.worker_id = worker_id
        self.retry = retry or RetryPolicy()
        # the connection: opened lazily, reopened after loss (session.py)
        self.session = Session(dsn, application_name=application_name, connect_timeout=connect_timeout,
                               sslmode=sslmode, statement_timeout=statement_timeout, prepare=prepare)

    @classmethod
    def from_settings(cls, settings, worker_id: str = "cli", application_name: str = "geoworker",
                      dsn: str | None = None, statement_timeout: float | None = None,
                      connect_timeout: float | None = None) -> "JobQueue":
        """The one way geoworker builds a queue from its settings.

        Args:
            dsn: an already resolved DSN (default: resolve it, starting the embedded server if need be).
            statement_timeout: seconds before the server cancels a statement (a long-running
                process must never wait forever on a stalled database).
            connect_timeout: overrides database.connect_timeout (health checks want it short).
        """
        d = settings.database
        return cls(dsn or db.resolve_dsn(settings), worker_id, RetryPolicy.from_settings(settings),
                   application_name=application_name, connect_timeout=connect_timeout or d.connect_timeout,
                   sslmode=d.sslmode, prepare=d.prepared_statements, statement_timeout=statement_timeout,
                   own_schema=not d.dsn)

    # --- connection ---------------------------------------------------------------

    @property
    def conn(self):
        return self.session.conn

    @property
    def connected(self) -> bool:
        return self.session.connected

    def check(self) -> None:
        """Reachable, and the schema is the one this code needs (the embedded server's is migrated here)."""
        if self.own_schema:
            db.migrate(self.conn)  # nothing to coordinate on a private server: keep it current
        db.require_schema(self.conn)

    def wakeup_fd(self) -> int | None:
        """The connection's socket while connected (for select() beside other fds); never connects."""
        return self.session.fileno()

    def close(self) -> None:
        self.session.close()

    def query(self, name: str, params: Mapping[str, Any] | None = None, cursor=None) -> list[dict]:
        """Run one named statement of sql/queries.sql (Session.run)."""
        return self.session.run(name, params, cursor)

    def ping(self) -> None:
        db.ping(self.conn)

    # --- producing ------------------------------------------------------------------

    def enqueue(self, task_type: str, params: Mapping[str, Any] | None = None, *, input: Any = None,
                priority: int = 0, max_attempts: int = 5, run_at: dt.datetime | None = None,
                owner: str | None = None, status: Status = Status.QUEUED) -> Job:
        """Create a job (queued, or pending while its input is uploaded); NOTIFY wakes workers."""
        rows = self.query("enqueue_job", {
            "task_type": task_type, "status": Status(status).value, "priority": int(priority),
            "params": _json(dict(params or {})), "input": _json(input), "max_attempts": int(max_attempts),
            "run_at": run_at, "owner": owner, "actor": self.worker_id})
        return Job.from_row(rows[0])

    def enqueue_many(self, task_type: str, params_list: Sequence[Mapping[str, Any]], *, priority: int = 0,
                     max_attempts: int = 5, run_at: dt.datetime | None = None) -> int:
        """Create many queued jobs of one task in one statement; returns how many."""
        rows = self.query("enqueue_jobs", {
            "task_type": task_type, "priority": int(priority), "params": _json(list(params_list)),
            "max_attempts": int(max_attempts), "run_at": run_at, "actor": self.worker_id})
        return int(rows[0]["inserted"])

    def queue_pending(self, job_id: str, input: Any, data: Mapping[str, Any] | None = None) -> Job:
        """A pending job's input has arrived: queue it."""
        rows = self.query("queue_pending_job", {"id": job_id, "input": _json(input), "data": _json(data),
                                                "actor": self.worker_id})
        if not rows:
            job = self.get(job_id)
            raise InvalidState(f"job {job_id} is {job.status}, not pending")
        return Job.from_row(rows[0])

    # --- consuming ------------------------------------------------------------------

    def claim(self) -> Job | None:
        """Take the next claimable job for this worker (attempts += 1), or None."""
        rows = self.query("claim_next_job", {"worker": self.worker_id})
        return Job.from_row(rows[0]) if rows else None

    def held_job(self, worker_id: str | None = None) -> Job | None:
        """The running job `worker_id` (default: this worker) holds, or None."""
        rows = self.query("held_job", {"worker": worker_id or self.worker_id})
        return Job.from_row(rows[0]) if rows else None

    def heartbeat(self, job_id: str) -> bool:
        """True while this worker still holds the job."""
        return bool(self.query("heartbeat", {"id": job_id, "worker": self.worker_id}))

    def progress(self, job_id: str, percent: int, message: str | None = None) -> bool:
        """Record progress (an event too); True while this worker still holds the job."""
        percent = max(0, min(100, int(percent)))
        return bool(self.query("report_progress", {"id": job_id, "worker": self.worker_id,
                                                   "progress": percent, "message": message}))

    def complete(self, job_id: str, outputs: Any = None, result: Any = None) -> Job:
        """Mark the job succeeded; LockLost if this worker no longer holds it."""
        rows = self.query("complete_job", {"id": job_id, "worker": self.worker_id,
                                           "outputs": _json(outputs), "result": _json(result)})
        if not rows:
            self._refuse(job_id, "complete")
        return Job.from_row(rows[0])

    def complete_and_claim(self, job_id: str, outputs: Any = None, result: Any = None) -> tuple[bool, Job | None]:
        """complete(), then claim(), in one statement (one commit per job for a busy worker).

        Returns:
            (whether the job was completed, the next job or None). When the lock was lost,
            the refusal is recorded as with complete(), and the next job is still this
            worker's to run.
        """
        [row] = self.query("complete_and_claim", {"id": job_id, "worker": self.worker_id,
                                                  "outputs": _json(outputs), "result": _json(result)})
        completed = bool(row.pop("completed"))
        next_job = Job.from_row(row) if row.get("id") is not None else None
        if not completed:
            try:
                self._refuse(job_id, "complete")
            except LockLost:
                pass
        return completed, next_job

    def fail(self, job: Job, code: str, message: str, *, permanent: bool, reason: str = "error") -> Job:
        """End this worker's attempt: failed for good, or queued again after the backoff delay."""
        return self.end_attempt(job.id, job.attempts, holder=self.worker_id, code=code, message=message,
                                permanent=permanent, reason=reason)

    def end_attempt(self, job_id: str, attempts: int, *, holder: str, code: str, message: str,
                    permanent: bool = False, reason: str = "error", cursor=None, min_delay: float = 0.0) -> Job:
        """End the attempt that `holder` is running; the supervisor uses it for a child it killed.

        A killed or crashed attempt is transient (it counts: attempts was raised at claim),
        so a poison job still ends in `failed` once its attempts are spent.

        Args:
            min_delay: the retry waits at least this long (a killed child may need its grace
                period to die; the job must not run twice at once meanwhile).
        """
        rows = self.query("fail_attempt", {
            "id": job_id, "worker": holder, "actor": self.worker_id, "code": code,
            "message": " ".join(str(message).split())[:2000], "permanent": bool(permanent),
            # no retry, no delay: a failure for good must not depend on a backoff it will never wait
            "delay": 0.0 if permanent else round(max(min_delay, self.retry.delay(attempts)), 3),
            "reason": reason}, cursor=cursor)
        if not rows:
            self._refuse(job_id, "fail", holder=holder, cursor=cursor)
        return Job.from_row(rows[0])

    def release(self, job_id: str, holder: str, message: str, delay: float = 0.0) -> Job:
        """Give `holder`'s running job back to the queue without counting the attempt (claimable after `delay` s)."""
        rows = self.query("release_job", {"id": job_id, "worker": holder, "actor": self.worker_id,
                                          "message": message, "delay": float(delay)})
        if not rows:
            self._refuse(job_id, "release", holder=holder)
        return Job.from_row(rows[0])

    def _refuse(self, job_id: str, operation: str, holder: str | None = None, cursor=None):
        rows = self.query("refuse_stale_result", {"id": job_id, "worker": holder or self.worker_id,
                                                  "operation": operation}, cursor=cursor)
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        job = self.get(job_id) if cursor is None else None
        state = f" (now {job.status}" + (f", locked by {job.locked_by})" if job.locked_by else ")") if job else ""
        raise LockLost(f"job {job_id}: {operation} refused, {holder or self.worker_id} no longer holds it{state}")

    def requeue_stale(self, stale_after: float, limit: int = 100) -> list[Job]:
        """Rescue running jobs whose heartbeat is stale and whose worker is gone (any host)."""
        return self.session.queries.replanned(self.conn, lambda: self._requeue_stale(stale_after, limit))

    def _requeue_stale(self, stale_after: float, limit: int) -> list[Job]:
        rescued: list[Job] = []
        with db.transaction(self.conn) as cur:
            stale = self.query("find_stale_jobs", {"stale_after": float(stale_after), "limit": limit}, cursor=cur)
            for row in stale:
                age = (dt.datetime.now(dt.timezone.utc) - row["heartbeat_at"]).total_seconds()
                rescued.append(self.end_attempt(
                    str(row["id"]), row["attempts"], holder=row["locked_by"], code="crashed",
                    message=f"worker {row['locked_by']} is gone; last heartbeat {age:.0f} s ago",
                    reason="rescued", cursor=cur))
        return rescued

    # --- operator actions -------------------------------------------------------------

    def cancel(self, job_id: str, reason: str = "cancelled by operator", owner: str | None = None) -> Job:
        """Cancel a pending, queued or running job (a running one is killed by its supervisor)."""
        self.get(job_id, owner=owner)
        rows = self.query("cancel_job", {"id": job_id, "reason": reason, "actor": self.worker_id})
        if not rows:
            raise InvalidState(f"job {job_id} is already {self.get(job_id).status}; nothing to cancel")
        return Job.from_row(rows[0])

    def retry_now(self, job_id: str, owner: str | None = None) -> Job:
        """Queue a failed or cancelled job again with fresh attempts (only `owner`'s, when given)."""
        self.get(job_id, owner=owner)  # JobNotFound for a stranger's job or a malformed id
        rows = self.query("retry_job", {"id": job_id, "actor": self.worker_id})
        if not rows:
            raise InvalidState(f"job {job_id} is {self.get(job_id).status}; only failed or cancelled jobs can be retried")
        return Job.from_row(rows[0])

    def add_event(self, job_id: str, kind: str, message: str, data: Mapping[str, Any] | None = None) -> None:
        self.query("add_event", {"id": job_id, "kind": kind, "message": message, "worker": self.worker_id,
                                 "data": _json(data)})

    # --- reading ----------------------------------------------------------------------

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """One job; JobNotFound if there is none (or it is someone else's)."""
        if not _is_uuid(job_id):
            raise JobNotFound(f"no job {job_id!r} (a job id is a UUID)")
        rows = self.query("get_job", {"id": job_id, "owner": owner})
        if not rows:
            raise JobNotFound(f"no job {job_id}")
        return Job.from_row(rows[0])

    def list(self, status: str | None = None, limit: int = 50, owner: str | None = None,
             task: str | None = None, offset: int = 0) -> list[Job]:
        """The newest jobs first, `limit` of them after skipping `offset`."""
        rows = self.query("list_jobs", {"status": status, "limit": int(limit), "owner": owner, "task": task,
                                        "offset": int(offset)})
        return [Job.from_row(r) for r in rows]

    def events(self, job_id: str, owner: str | None = None) -> list[dict[str, Any]]:
        self.get(job_id, owner=owner)
        return [{**r, "at": r["at"].isoformat()} for r in self.query("job_events", {"id": job_id})]

    def summary(self) -> dict[str, Any]:
        """Claimable, scheduled and running counts, and the age of the oldest claimable job."""
        row = self.query("queue_summary")[0]
        return {k: (float(v) if k == "oldest_ready_age" else int(v)) for k, v in row.items()}

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status (every status, zeros included)."""
        counts = {s.value: 0 for s in Status}
        counts.update({r["status"]: int(r["n"]) for r in self.query("count_by_status")})
        return counts

    # --- processes ----------------------------------------------------------------------

    def register_worker(self, worker_id: str, kind: str, pid: int, parent_id: str | None = None,
                        host: str | None = None) -> None:
        """Announce a process; host defaults to this one (the API passes a remote worker's own)."""
        self.query("register_worker", {"id": worker_id, "host": host or db.hostname(), "pid": pid, "kind": kind,
                                       "parent_id": parent_id})

    def touch_workers(self, workers: Iterable[Mapping[str, Any]]) -> None:
        """Mark workers alive now: each {id, rss, current_job, jobs_done}."""
        batch = [dict(w) for w in workers]
        if batch:
            self.query("touch_workers", {"workers": _json(batch)})

    def stop_workers(self, ids: Sequence[str]) -> None:
        if ids:
            self.query("stop_workers", {"ids": list(ids)})

    def forget_workers(self, older_than: float = 86400.0) -> None:
        self.query("forget_workers", {"older_than": older_than})

    # --- waking -------------------------------------------------------------------------

    def listen(self, *channels: str) -> None:
        """Subscribe this connection to NOTIFY channels (default: new claimable jobs), again after reconnects."""
        self.session.listen(channels or (db.LISTEN_CHANNEL,))

    def notifications(self) -> list[tuple[str, str]]:
        """Read what has arrived, without blocking; returns (channel, payload) pairs."""
        return self.session.notifications()

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """Block until a notification arrives or timeout passes; returns (channel, payload) pairs."""
        return self.session.wait(timeout)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True
