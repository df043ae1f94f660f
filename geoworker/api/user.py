"""The platform's user routes: create a job, get an upload URL, follow it, download its outputs.

Every route takes `Authorization: Bearer <JWT>`; a user sees only jobs whose owner is
their `sub`, and anyone else's job answers 404 exactly as a job that does not exist.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal, Optional

from fastapi import APIRouter, Depends, Query, Request, Response

from geoworker.api.auth import current_user
from geoworker.api.errors import ApiError, check_json
from geoworker.api.schemas import CreateJob, Downloads, EventList, JobList, JobView, UploadGrant, UploadRequest
from geoworker.api.state import ApiState
from geoworker.api.views import output_name, user_job
from geoworker.errors import BadParams, InvalidInput, UnknownTask
from geoworker.jobs import Job, Status
from geoworker.submit import SubmissionRefused, prepare, submit

router = APIRouter(prefix="/api/geo-jobs", tags=["jobs"])
UPLOAD_PREFIX = "/api/uploads"
FILES_PREFIX = "/api/files"
AUTH_ERRORS = {401: {"description": "no, expired or invalid token"}}
NOT_FOUND = {404: {"description": "no such job (or not yours)"}}


def api_state(request: Request) -> ApiState:
    return request.app.state.api


def own_job(state: ApiState, job_id: str, owner: str) -> Job:
    with state.pool.lease(f"user:{owner}") as queue:
        return queue.get(job_id, owner=owner)


def base_url(request: Request, state: ApiState) -> str:
    """Where clients reach this API: api.base_url when set (behind a proxy), else what they called."""
    return (state.settings.api.base_url or str(request.base_url)).rstrip("/")


def expires_at(seconds: float) -> tuple[int, str]:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    when = now + dt.timedelta(seconds=int(seconds))
    return int(seconds), when.isoformat().replace("+00:00", "Z")


# --- routes ----------------------------------------------------------------------------


@router.post("", status_code=201, response_model=JobView, summary="Create a job",
             responses={**AUTH_ERRORS, 422: {"description": "unknown task type, bad parameter or wrong type"}})
def create_job(body: CreateJob, request: Request, response: Response, owner: str = Depends(current_user)):
    """A job in status `pending` (waiting for its input upload); tasks without input are `queued` at once.

    inputPayload is checked by the task's own parameter schema (camelCase or snake_case; stored
    snake_case), so a 422 names the very key that is wrong.
    """
    state = api_state(request)
    check_json(body.inputPayload, "inputPayload")
    try:
        sub = prepare(state.settings, body.taskType, None, body.inputPayload, priority=body.priority, owner=owner,
                      input_later=True)
    except UnknownTask as exc:
        raise ApiError(422, f"taskType: {exc}", field="taskType") from None
    except BadParams as exc:
        field = f"inputPayload.{exc.key}" if exc.key else "inputPayload"
        raise ApiError(422, f"{field}: {exc}", field=field) from None
    except SubmissionRefused as exc:
        raise ApiError(422, str(exc)) from None
    with state.pool.lease(f"user:{owner}") as queue:
        job = submit(queue, state.settings, sub)
    response.headers["Location"] = f"/api/geo-jobs/{job.id}"
    return user_job(job)


@router.get("", response_model=JobList, summary="List my jobs", responses=AUTH_ERRORS)
def list_jobs(request: Request, owner: str = Depends(current_user),
              status: Optional[Literal[tuple(s.value for s in Status)]] = None,  # type: ignore[valid-type]
              limit: int = Query(50, ge=1, le=500)):
    state = api_state(request)
    with state.pool.lease(f"user:{owner}") as queue:
        jobs = queue.list(status=status, limit=limit, owner=owner)
    return {"jobs": [user_job(j) for j in jobs]}


@router.get("/{job_id}", response_model=JobView, summary="Get a job", responses={**AUTH_ERRORS, **NOT_FOUND})
def get_job(job_id: str, request: Request, owner: str = Depends(current_user)):
    """Status, progress, attempts, error and outputs."""
    return user_job(own_job(api_state(request), job_id, owner))


@router.get("/{job_id}/events", response_model=EventList, summary="A job's history",
            responses={**AUTH_ERRORS, **NOT_FOUND})
def job_events(job_id: str, request: Request, owner: str = Depends(current_user)):
    state = api_state(request)
    with state.pool.lease(f"user:{owner}") as queue:
        events = queue.events(job_id, owner=owner)
    return {"jobId": job_id, "events": events}


@router.post("/{job_id}/cancel", response_model=JobView, summary="Cancel a job",
             responses={**AUTH_ERRORS, **NOT_FOUND, 409: {"description": "the job has already finished"}})
def cancel_job(job_id: str, request: Request, owner: str = Depends(current_user)):
    """A pending or queued job is cancelled at once; a running one is stopped by its worker's supervisor."""
    state = api_state(request)
    with state.pool.lease(f"user:{owner}") as queue:
        return user_job(queue.cancel(job_id, reason=f"cancelled by {owner}", owner=owner))


@router.post("/{job_id}/upload", response_model=UploadGrant, summary="Get a signed upload URL",
             responses={**AUTH_ERRORS, **NOT_FOUND, 409: {"description": "the job is not waiting for its input"},
                        422: {"description": "bad fileName, fileSize or fileType"}})
def upload_url(job_id: str, body: UploadRequest, request: Request, owner: str = Depends(current_user)):
    """A URL to PUT the input to: signed, expiring, for this job, this name and exactly this size."""
    from geoworker.storage import safe_filename
    from geoworker.storage.checks import check_content_type
    from geoworker.storage.signing import sign_path

    state = api_state(request)
    settings = state.settings
    job = own_job(state, job_id, owner)
    if job.status != Status.PENDING.value:
        raise ApiError(409, f"job {job.id} is {job.status}, not waiting for its input", code="invalid_state")
    refusal = state.backend().refuses_local_inputs
    if refusal:
        raise ApiError(409, f"this API's storage.backend is \"{settings.storage.backend}\": {refusal}, "
                            "not uploads", code="unsupported")
    limit = settings.storage.max_file_size
    if body.fileSize > limit:
        raise ApiError(422, f"fileSize: {body.fileSize} bytes is more than this service accepts "
                            f"({limit} bytes, storage.max_file_size)", field="fileSize", code="too_large")
    if settings.storage.validate_headers:
        try:
            check_content_type(body.fileType, source="fileType", archives=True)
        except InvalidInput as exc:
            raise ApiError(422, f"fileType: {exc}", field="fileType") from None
    name = safe_filename(body.fileName)
    seconds, when = expires_at(settings.storage.presign_expiry)
    signed = sign_path(settings.api.signing_secret, "PUT", f"{UPLOAD_PREFIX}/{job.id}/{name}", seconds,
                       size=body.fileSize)
    return {"uploadUrl": base_url(request, state) + signed, "expiresAt": when, "method": "PUT",
            "maxSize": body.fileSize}


@router.get("/{job_id}/download/output", response_model=Downloads, summary="Signed download URLs of the outputs",
            responses={**AUTH_ERRORS, **NOT_FOUND, 409: {"description": "the job has not succeeded"}})
def download_outputs(job_id: str, request: Request, owner: str = Depends(current_user)):
    """Every output: served by this API (local storage) or presigned (s3), valid storage.presign_expiry s."""
    state = api_state(request)
    job = own_job(state, job_id, owner)
    if job.status != Status.SUCCEEDED.value:
        raise ApiError(409, f"job {job.id} is {job.status}; its outputs are ready once it has succeeded",
                       code="invalid_state")
    seconds, when = expires_at(state.settings.storage.presign_expiry)
    result = job.result if isinstance(job.result, dict) else {}
    checksums = (result.get("sha256") or {}).get("outputs") or {}
    files = [_download(state, request, job, str(kind), ref, seconds, checksums.get(kind))
             for kind, ref in (job.outputs or {}).items()]
    return {"jobId": job.id, "expiresAt": when, "files": files}


def _download(state: ApiState, request: Request, job: Job, kind: str, ref: Any, seconds: int,
              sha256: str | None) -> dict[str, Any]:
    """A file the backend keeps on this host is served by this API (a signed /api/files URL);
    otherwise the backend presigns it if it can (s3). An http:// reference is the platform's
    own storage, which has its own way to hand it out: no URL."""
    from geoworker.storage.content_types import content_type_for
    from geoworker.storage.signing import sign_path

    text = str(ref)
    name = output_name(text)
    item: dict[str, Any] = {"kind": kind, "fileName": name, "url": None, "size": None, "sha256": sha256,
                            "contentType": content_type_for(Path(name))}
    backend = state.backend()
    path = backend.output_file(job.id, name) if "://" not in text else None
    if path is not None:
        item["size"] = path.stat().st_size
        item["url"] = base_url(request, state) + sign_path(
            state.settings.api.signing_secret, "GET", f"{FILES_PREFIX}/{job.id}/{name}", seconds)
    elif "://" in text:
        item["url"] = backend.presign(text)
    return item
