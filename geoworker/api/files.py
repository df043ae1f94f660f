"""The signed URLs themselves: PUT an input, GET an output. The signature is the credential.

    PUT /api/uploads/<job id>/<name>?expires=..&size=..&signature=..
    GET /api/files/<job id>/<name>?expires=..&signature=..

An upload is refused, and nothing is stored, when the signature does not match the
method, path, expiry and size (altered), the expiry has passed, the job is no longer
pending (the URL was used already), another upload to the job is in progress, the body
is not exactly the signed size (oversized bodies are cut off at the size while streaming),
or it does not start with a TIFF signature. The body streams to storage in chunks, so an
upload never sits in memory.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterable, Iterator, Optional

import anyio.from_thread
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from loguru import logger
from starlette.requests import ClientDisconnect

from geoworker.api.errors import ApiError
from geoworker.api.schemas import JobView
from geoworker.api.state import ApiState
from geoworker.api.user import FILES_PREFIX, UPLOAD_PREFIX, api_state
from geoworker.api.views import user_job
from geoworker.errors import InvalidInput, InvalidState, JobNotFound, TooLarge
from geoworker.storage.content_types import content_type_for
from geoworker.storage import ziparchive
from geoworker.storage.names import safe_filename
from geoworker.storage.stream import write_capped
from geoworker.storage.workdir import create_workdir, remove_workdir
from geoworker.jobs import Job, Status

router = APIRouter(tags=["signed URLs"])
SIGNED = {403: {"description": "signature missing, altered or expired"}}
BINARY_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "image/tiff": {"schema": {"type": "string", "format": "binary"}}}}}


def _verify(request: Request, method: str):
    """The signed grant; 403 when the URL is unsigned, altered or expired (the query parameters
    are declared optional so that a missing one is a 403 like any other bad signature)."""
    from geoworker.storage.signing import SignatureInvalid, verify

    try:
        return verify(api_state(request).settings.api.signing_secret, method, request.url.path,
                      dict(request.query_params))
    except SignatureInvalid as exc:
        raise ApiError(403, str(exc), code="signature_invalid") from None


@router.put(UPLOAD_PREFIX + "/{job_id}/{file_name}", response_model=JobView, openapi_extra=BINARY_BODY,
            summary="Upload a job's input (the signed uploadUrl)",
            responses={**SIGNED, 409: {"description": "already used, or the job no longer waits for its input"},
                       413: {"description": "larger than the size the URL was issued for"},
                       415: {"description": "declared as something other than a TIFF"},
                       422: {"description": "not a TIFF, or shorter than the signed size"}})
async def put_upload(job_id: str, file_name: str, request: Request,
                     expires: Optional[str] = Query(None, description="unix time the URL expires"),
                     size: Optional[str] = Query(None, description="the exact body size the URL allows"),
                     signature: Optional[str] = Query(None, description="HMAC-SHA256, hex")):
    state = api_state(request)
    grant = _verify(request, "PUT")
    if grant.size is None:
        raise ApiError(403, "an upload URL must be signed with a size", code="signature_invalid")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > grant.size:
        raise ApiError(413, f"the body is {declared} bytes; this URL was issued for {grant.size}", code="too_large")
    content_type = request.headers.get("content-type")
    if state.settings.storage.validate_headers:
        from geoworker.storage.checks import check_content_type

        try:
            check_content_type(content_type, source="the upload", archives=True)
        except InvalidInput as exc:
            raise ApiError(415, str(exc)) from None
    if job_id in state.uploading:  # one event loop: no await between this check and the add
        raise ApiError(409, f"an upload to job {job_id} is already in progress", code="invalid_state")
    state.uploading.add(job_id)
    try:
        job = await run_in_threadpool(_pending_job, state, job_id)
        chunks = _from_async(request.stream())
        ref = await run_in_threadpool(_store, state, job, file_name, chunks, grant.size, content_type)
        job = await run_in_threadpool(_queue, state, job, ref)
    finally:
        state.uploading.discard(job_id)
    logger.info(f"job {job.id}: input {ref.get('name')} received ({ref.get('size')} bytes); queued")
    return user_job(job)


def _pending_job(state: ApiState, job_id: str) -> Job:
    with state.pool.lease("api") as queue:
        job = queue.get(job_id)
    if job.status != Status.PENDING.value:
        raise ApiError(409, f"job {job.id} is {job.status}: this upload URL was used already or the job no longer "
                            "waits for its input; nothing was stored", code="invalid_state")
    return job


def _from_async(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The request body as a plain iterator, for code running in a worker thread."""
    while True:
        try:
            chunk = anyio.from_thread.run(stream.__anext__)
        except StopAsyncIteration:
            return
        if chunk:
            yield chunk


def _checked(chunks: Iterable[bytes], size: int, check_magic: bool, as_zip: bool = False) -> Iterator[bytes]:
    """Pass the body through, refusing it past `size`, short of `size`, or without a TIFF (or ZIP) signature."""
    from geoworker.processing.validate import TIFF_MAGICS, sniff_kind

    total, head = 0, b""
    for chunk in chunks:
        total += len(chunk)
        if total > size:
            raise TooLarge(f"the body is larger than the {size} bytes this upload URL was issued for")
        if check_magic and len(head) < 64:
            head += chunk[: 64 - len(head)]
            if as_zip and len(head) >= 4 and not ziparchive.is_zip(head):
                raise InvalidInput("the upload is named or declared as a ZIP but does not start with a ZIP signature")
            if not as_zip and len(head) >= 4 and head[:4] not in TIFF_MAGICS:
                kind = sniff_kind(head)
                raise InvalidInput(f"the upload is {kind}, not a TIFF" if kind else
                                   "the upload does not start with a TIFF signature (49 49 2a 00 or 4d 4d 00 2a)")
        yield chunk
    if total != size:
        raise InvalidInput(f"the body has {total} bytes; this upload URL was issued for exactly {size}")
    if check_magic and len(head) < 4:
        raise InvalidInput("the upload is too short to be a TIFF")


def _store(state: ApiState, job: Job, file_name: str, chunks: Iterator[bytes], size: int,
           content_type: str | None) -> dict[str, Any]:
    """Stream the body into storage; on any refusal nothing is left behind."""
    name = safe_filename(file_name)
    media = (content_type or "").split(";")[0].strip().lower()
    as_zip = name.lower().endswith(".zip") or media in ziparchive.ZIP_TYPES
    body = _checked(chunks, size, state.settings.storage.validate_headers, as_zip)
    try:
        if as_zip:
            return _store_zip(state, job, body, size)
        # local streams it into place; s3 goes through a private temporary copy
        return state.backend().receive_input(job.id, name, body, max_size=size, content_type=content_type)
    except TooLarge as exc:
        raise ApiError(413, f"{exc}; nothing was stored", code="too_large") from None
    except InvalidInput as exc:
        raise ApiError(422, f"{exc}; nothing was stored", code="invalid_input") from None
    except ClientDisconnect:
        raise ApiError(400, "the client went away before the whole body arrived; nothing was stored") from None
    except InvalidState as exc:  # the same URL used at once through another API process
        raise ApiError(409, str(exc), code="invalid_state") from None


def _store_zip(state: ApiState, job: Job, body: Iterator[bytes], size: int) -> dict[str, Any]:
    """A ZIP of a GeoTIFF and its sidecars: unpacked safely in a private directory (storage.ziparchive),
    then the TIFF stored as the input and the sidecars GDAL would read with it beside it."""
    from geoworker.processing.read import sidecar_files  # late: rasterio, only for ZIP uploads

    backend = state.backend()
    workdir = create_workdir(state.settings.storage.temp_dir, job.id)
    try:
        archive = workdir / "upload.zip"
        write_capped(body, archive, size)
        files = workdir / "files"
        files.mkdir(mode=0o700)
        tiff, others = ziparchive.unpack(archive, files, state.settings.storage.max_file_size)
        kept = sidecar_files(tiff)
        if dropped := sorted(p.name for p in others if p not in kept):
            logger.info(f"job {job.id}: the ZIP's {', '.join(dropped)} are no sidecars of {tiff.name}; left out")
        ref = backend.import_file(job.id, tiff)
        return backend.import_sidecars(job.id, ref, tiff.name, kept) if kept else ref
    finally:
        remove_workdir(workdir)


def _queue(state: ApiState, job: Job, ref: dict[str, Any]) -> Job:
    """Queue the job with its input; if it was cancelled meanwhile, remove what was stored."""
    data = {"name": ref.get("name"), "size": ref.get("size"), "sha256": ref.get("sha256"), "via": "signed upload"}
    try:
        with state.pool.lease("api") as queue:
            return queue.queue_pending(job.id, ref, data=data)
    except (InvalidState, JobNotFound) as exc:
        state.backend().discard_input(ref)
        raise ApiError(409, f"{exc}; the upload was discarded", code="invalid_state") from None


@router.get(FILES_PREFIX + "/{job_id}/{file_name}", summary="Download an output (a signed URL)",
            response_class=FileResponse,
            responses={**SIGNED, 404: {"description": "no such output"},
                       200: {"content": {"application/octet-stream": {}}}})
def get_file(job_id: str, file_name: str, request: Request,
             expires: Optional[str] = Query(None, description="unix time the URL expires"),
             signature: Optional[str] = Query(None, description="HMAC-SHA256, hex")):
    _verify(request, "GET")
    path = api_state(request).backend().output_file(job_id, file_name)
    if path is None:
        raise ApiError(404, "no such output")
    return FileResponse(path, media_type=content_type_for(path), filename=path.name)
