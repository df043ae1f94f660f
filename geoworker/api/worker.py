"""Worker routes: the queue operations of jobs.py over HTTP, for workers without database access.

Every route takes `Authorization: Worker <token>` and `X-Geoworker-Worker: <worker id>`;
the id is what the worker holds its jobs under (geo_jobs.locked_by), exactly as in
database mode. The lock semantics are jobs.py's own, because these routes call it:

    claim       200 + the job (attempts raised), or 204 when nothing is claimable. `wait`
                (seconds, at most 30) long-polls: the answer comes as soon as NOTIFY says a
                job arrived. A worker that already holds a running job gets that job again:
                its earlier claim's answer was lost on the way, and the job would otherwise
                sit locked until the worker exits.
    heartbeat,  200 {"held": true}, or 409 once the worker no longer holds the job
    progress    (cancelled, rescued); as in jobs.py nothing else is recorded.
    complete,   200 + the job, or 409 (lock lost: the refusal is recorded in the job's
    fail,       events, as jobs.py does) or 404. fail/release take `holder` to act for
    release     another worker: a supervisor settling the job of a child it killed.

The remote supervisor's chores: workers (register, touch, stop) keep geo_workers true for
`geoworker stats` and for the reaper, which leaves a live worker's job alone; workers/{id}/job
tells it what a dead child still held; queue/summary serves `geoworker run --drain`. Stale-job rescue runs in the API process itself.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from loguru import logger

from geoworker.api.auth import current_worker, valid_worker_id
from geoworker.api.errors import ApiError, check_json
from geoworker.api.schemas import (Complete, Fail, Held, Ok, Progress, QueueSummary, Release, WorkerRegistration,
                                   WorkersSeen, WorkersStopped)
from geoworker.api.state import ApiState
from geoworker.api.user import api_state
from geoworker.api.wire import MAX_CLAIM_WAIT, job_to_wire
from geoworker.errors import JobNotFound
from geoworker.jobs import Job

router = APIRouter(prefix="/api/internal", tags=["workers"])
AUTH = {401: {"description": "no or wrong worker token"}}
JOB = {"description": "the job, every field camelCase", "content": {"application/json": {"schema": {"type": "object"}}}}
LOCK = {409: {"description": "this worker no longer holds the job"}, 404: {"description": "no such job"}}
WAIT_SLICE = 5.0  # re-check at least this often: a retry whose run_at comes due sends no NOTIFY


def _job_id(raw: str) -> str:
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise JobNotFound(f"no job {raw!r}") from None


def _lock_lost(job_id: str, worker: str, operation: str) -> ApiError:
    return ApiError(409, f"job {job_id}: {operation} refused, {worker} no longer holds it", code="lock_lost")


@router.post("/geo-jobs/claim", summary="Claim the next job",
             responses={**AUTH, 200: JOB, 204: {"description": "nothing to claim"}})
async def claim(request: Request, wait: float = Query(0.0, ge=0.0, le=MAX_CLAIM_WAIT, allow_inf_nan=False),
                worker: str = Depends(current_worker)):
    state = api_state(request)
    deadline = time.monotonic() + wait
    while True:
        wake = state.notifier.current()  # before the claim, so a NOTIFY during it is not missed
        job = await run_in_threadpool(_claim, state, worker)
        if job is not None:
            return JSONResponse(job_to_wire(job))
        left = deadline - time.monotonic()
        if left <= 0 or await request.is_disconnected():
            return Response(status_code=204)
        await state.notifier.wait(wake, min(left, WAIT_SLICE))


def _claim(state: ApiState, worker: str) -> Job | None:
    with state.pool.lease(worker) as queue:
        held = queue.held_job(worker)
        if held is not None:
            logger.warning(f"worker {worker} claims again while holding job {held.id}: handing it over again "
                           "(the first answer was lost)")
            return held
        return queue.claim()


@router.patch("/geo-jobs/{job_id}/heartbeat", response_model=Held, summary="Prove the worker still holds the job",
              responses={**AUTH, **LOCK})
def heartbeat(job_id: str, request: Request, worker: str = Depends(current_worker)):
    job_id = _job_id(job_id)
    with api_state(request).pool.lease(worker) as queue:
        if not queue.heartbeat(job_id):
            raise _lock_lost(job_id, worker, "heartbeat")
    return {"held": True}


@router.patch("/geo-jobs/{job_id}/progress", response_model=Held, summary="Record progress (also a heartbeat)",
              responses={**AUTH, **LOCK})
def progress(job_id: str, body: Progress, request: Request, worker: str = Depends(current_worker)):
    job_id = _job_id(job_id)
    with api_state(request).pool.lease(worker) as queue:
        if not queue.progress(job_id, body.progress, body.message):
            raise _lock_lost(job_id, worker, "progress")
    return {"held": True}


@router.patch("/geo-jobs/{job_id}/complete", summary="Mark the job succeeded", responses={**AUTH, **LOCK, 200: JOB})
def complete(job_id: str, body: Complete, request: Request, worker: str = Depends(current_worker)):
    job_id = _job_id(job_id)
    check_json(body.outputs, "outputs")
    check_json(body.result, "result")
    with api_state(request).pool.lease(worker) as queue:
        job = queue.complete(job_id, body.outputs, body.result)
    return job_to_wire(job)


@router.patch("/geo-jobs/{job_id}/fail", summary="End an attempt: failed for good or retried after backoff",
              responses={**AUTH, **LOCK, 200: JOB})
def fail(job_id: str, body: Fail, request: Request, worker: str = Depends(current_worker)):
    job_id = _job_id(job_id)
    holder = body.holder or worker
    with api_state(request).pool.lease(worker) as queue:
        attempts = body.attempts if body.attempts is not None else queue.get(job_id).attempts
        job = queue.end_attempt(job_id, attempts, holder=holder, code=body.errorCode, message=body.message,
                                permanent=body.permanent, reason=body.reason, min_delay=body.minDelay)
    return job_to_wire(job)


@router.patch("/geo-jobs/{job_id}/release", summary="Give a running job back without counting the attempt",
              responses={**AUTH, **LOCK, 200: JOB})
def release(job_id: str, body: Release, request: Request, worker: str = Depends(current_worker)):
    job_id = _job_id(job_id)
    with api_state(request).pool.lease(worker) as queue:
        job = queue.release(job_id, body.holder or worker, body.message, delay=body.delay)
    return job_to_wire(job)


@router.get("/ping", response_model=Ok, summary="Check the token", responses=AUTH)
def ping(worker: str = Depends(current_worker)):
    return {"ok": True, "worker": worker}


@router.post("/workers", response_model=Ok, summary="Announce a worker process", responses=AUTH)
def register_worker(body: WorkerRegistration, request: Request, worker: str = Depends(current_worker)):
    with api_state(request).pool.lease(worker) as queue:
        queue.register_worker(body.id, body.kind, body.pid, parent_id=body.parentId, host=body.host)
    return {"ok": True, "worker": worker}


@router.patch("/workers", response_model=Ok, summary="Mark worker processes alive", responses=AUTH)
def touch_workers(body: WorkersSeen, request: Request, worker: str = Depends(current_worker)):
    rows = [{"id": w.id, "rss": w.rss, "current_job": str(w.currentJob) if w.currentJob else None,
             "jobs_done": w.jobsDone} for w in body.workers]
    with api_state(request).pool.lease(worker) as queue:
        queue.touch_workers(rows)
    return {"ok": True, "worker": worker}


@router.post("/workers/stop", response_model=Ok, summary="Mark worker processes gone", responses=AUTH)
def stop_workers(body: WorkersStopped, request: Request, worker: str = Depends(current_worker)):
    with api_state(request).pool.lease(worker) as queue:
        queue.stop_workers(body.ids)
    return {"ok": True, "worker": worker}


@router.get("/workers/{worker_id}/job", summary="The running job a worker holds",
            responses={**AUTH, 200: JOB, 204: {"description": "it holds none"}})
def held_job(worker_id: str, request: Request, worker: str = Depends(current_worker)):
    """A supervisor asks what a child it lost still held (a job claimed in the same call that completed the last)."""
    valid_worker_id(worker_id, "worker_id")
    with api_state(request).pool.lease(worker) as queue:
        job = queue.held_job(worker_id)
    return Response(status_code=204) if job is None else JSONResponse(job_to_wire(job))


@router.get("/queue/summary", response_model=QueueSummary, summary="Claimable, scheduled and running counts",
            responses=AUTH)
def queue_summary(request: Request, worker: str = Depends(current_worker)):
    with api_state(request).pool.lease(worker) as queue:
        s = queue.summary()
    return {"ready": s["ready"], "scheduled": s["scheduled"], "running": s["running"],
            "oldestReadyAge": s["oldest_ready_age"]}
