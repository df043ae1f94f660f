"""What operators read about the queue: `geoworker stats` and the dashboard's overview and worker board.

Reads only, each over named statements of sql/queries.sql run on a JobQueue's connection; the
queue itself (jobs.py) keeps what workers and submitters do. Times come back as ISO strings and
ids as strings, ready for JSON.
"""

from __future__ import annotations

from typing import Any

from geoworker.jobs import JobQueue


def stats(queue: JobQueue, window: float = 3600.0, worker_window: float = 120.0) -> dict[str, Any]:
    """What `geoworker stats` shows: counts, throughput, durations, failures, workers.

    Args:
        window: seconds of history for throughput, durations and failures.
        worker_window: a process seen within this many seconds counts as alive.
    """
    done = queue.query("throughput", {"window": window})[0]
    durations = [{**r, "n": int(r["n"]), "p50": _num(r["p50"]), "p95": _num(r["p95"]), "max": _num(r["max"])}
                 for r in queue.query("durations_by_task", {"window": window})]
    failures = {r["error_code"]: int(r["n"]) for r in queue.query("failure_reasons", {"window": window})}
    workers = [{**r, "started_at": r["started_at"].isoformat(), "last_seen": r["last_seen"].isoformat(),
                "current_job": str(r["current_job"]) if r["current_job"] else None}
               for r in queue.query("live_workers", {"window": worker_window})]
    return {
        "counts": queue.count_by_status(),
        "window_seconds": window,
        "finished": {k: int(v) for k, v in done.items()},
        "jobs_per_minute": round(int(done["succeeded"]) / (window / 60.0), 3),
        "durations": durations,
        "failure_reasons": failures,
        "queue": queue.summary(),
        "workers": workers,
    }


def finished_per_minute(queue: JobQueue, minutes: int = 60) -> list[dict[str, Any]]:
    """[{minute, succeeded, failed}] for each of the last `minutes` minutes, oldest first, zeros included."""
    return [{"minute": r["minute"], "succeeded": int(r["succeeded"]), "failed": int(r["failed"])}
            for r in queue.query("finished_per_minute", {"minutes": int(minutes)})]


def recent_failures(queue: JobQueue, limit: int = 10) -> list[dict[str, Any]]:
    """The jobs that failed for good most recently: id, task_type, error_code, last_error, ..."""
    return [{**r, "id": str(r["id"])} for r in queue.query("recent_failures", {"limit": int(limit)})]


def worker_board(queue: JobQueue, window: float = 120.0) -> list[dict[str, Any]]:
    """Processes seen within `window` s, each with the running job it holds (job_* keys, or None)."""
    return [{**r, "job_id": str(r["job_id"]) if r["job_id"] else None}
            for r in queue.query("worker_board", {"window": window})]


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)
