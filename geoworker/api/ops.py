"""Operators' routes: the whole service at a glance (the dashboard's overview and workers).

    GET /api/overview   counts by status; jobs finished per minute over the last hour,
                        succeeded vs failed; queue depth and the oldest queued job's age;
                        p50/p95 duration by task; recent failures with their error codes
    GET /api/workers    live processes: host, supervisor pid, each child's pid, RSS, the job
                        it runs and its progress, jobs done, last seen

Both take an operator's token ("role": "operator"); a user's is 403: these are about
everyone's jobs. The live stream (api.stream) pushes the same documents when they change.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from fastapi import APIRouter, Depends, Request

from geoworker import reports
from geoworker.api.auth import Viewer, current_operator
from geoworker.api.schemas import Overview, WorkerBoard
from geoworker.api.user import api_state
from geoworker.casing import camel

router = APIRouter(prefix="/api", tags=["operators"])
ERRORS = {401: {"description": "no, expired or invalid token"}, 403: {"description": "not an operator"}}
HOUR_MINUTES = 60
RECENT_FAILURES = 10
MIN_WORKER_WINDOW = 120.0  # seconds: supervisors report every 5 s at most; a minute or two is "alive"


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()


def overview_doc(state) -> dict[str, Any]:
    """What the overview page shows, from one connection."""
    with state.pool.lease("operator") as queue:
        stats = reports.stats(queue, window=HOUR_MINUTES * 60.0, worker_window=worker_window(state.settings))
        minutes = reports.finished_per_minute(queue, HOUR_MINUTES)
        failures = reports.recent_failures(queue, RECENT_FAILURES)
    q = stats["queue"]
    return {
        "generatedAt": _now(),
        "counts": stats["counts"],
        "queue": {"ready": q["ready"], "scheduled": q["scheduled"], "running": q["running"],
                  "oldestReadyAge": q["oldest_ready_age"]},
        "windowSeconds": stats["window_seconds"],
        "finished": stats["finished"],
        "perMinute": [{"minute": _iso(m["minute"]), "succeeded": m["succeeded"], "failed": m["failed"]}
                      for m in minutes],
        "durations": [{"taskType": d["task_type"], "n": d["n"], "p50": d["p50"], "p95": d["p95"], "max": d["max"]}
                      for d in stats["durations"]],
        "failureReasons": stats["failure_reasons"],
        "recentFailures": [{"id": f["id"], "taskType": f["task_type"], "errorCode": f["error_code"],
                            "error": f["last_error"], "attempts": f["attempts"], "owner": f["owner"],
                            "finishedAt": _iso(f["finished_at"])} for f in failures],
        "workersAlive": len(stats["workers"]),
    }


def worker_window(settings) -> float:
    return max(MIN_WORKER_WINDOW, settings.worker.stale_after)


def worker_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """One geo_workers row (with the running job it holds) as the dashboard reads it."""
    job = None
    if row.get("job_id"):
        job = {"id": row["job_id"], "taskType": row["job_task"], "progress": row["job_progress"],
               "message": row["job_message"], "startedAt": _iso(row["job_started_at"])}
    keys = ("id", "host", "pid", "kind", "parent_id", "started_at", "last_seen", "rss", "jobs_done")
    return {**{camel(k): _iso(row[k]) for k in keys}, "job": job}


def workers_doc(state) -> dict[str, Any]:
    window = worker_window(state.settings)
    with state.pool.lease("operator") as queue:
        board = reports.worker_board(queue, window)
    return {"generatedAt": _now(), "windowSeconds": window, "workers": [worker_view(r) for r in board]}


@router.get("/overview", response_model=Overview, summary="The service at a glance (operators)", responses=ERRORS)
def overview(request: Request, _viewer: Viewer = Depends(current_operator)):
    return overview_doc(api_state(request))


@router.get("/workers", response_model=WorkerBoard, summary="Live worker processes (operators)", responses=ERRORS)
def workers(request: Request, _viewer: Viewer = Depends(current_operator)):
    return workers_doc(api_state(request))
