"""A job's tile pyramid served to web maps: tiles out of its PMTiles archive, and its TileJSON.

    GET /api/geo-jobs/{id}/tilejson.json            TileJSON 3.0.0; `tiles` is an absolute URL
    GET /api/geo-jobs/{id}/tiles/{z}/{x}/{y}.{ext}  one tile: 200, or 204 where the archive has none

Both take the owner's Bearer JWT, or a signature: the TileJSON's `tiles` template carries one
(`?expires=..&signature=..`, storage.presign_expiry seconds) that is valid for this job's tiles
and its TileJSON only, so that a map library can fetch tiles without headers. Another user's
job is 404 as everywhere; an altered or expired signature is 403. Tiles are read from the
archive where storage keeps it, by range reads (geoworker.pmtiles_archive), never copied out.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from geoworker.api.auth import current_user
from geoworker.api.errors import ApiError
from geoworker.api.state import ApiState
from geoworker.api.user import api_state, base_url, own_job
from geoworker.errors import JobNotFound
from geoworker.jobs import Job, Status
from geoworker.pmtiles_archive import EXTENSIONS, Archive, ArchiveCache, ArchiveError
from geoworker.storage.signing import SignatureInvalid, sign_path, verify

router = APIRouter(prefix="/api/geo-jobs", tags=["map tiles"])
MAX_ZOOM = 30
CACHE_CONTROL = "private, max-age=86400"  # a job's tiles never change once it has succeeded
TILE_RESPONSES = {200: {"content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}}, "description": "the tile"},
                  204: {"description": "the archive has no such tile (wholly transparent or outside)"},
                  400: {"description": "z/x/y outside the tile matrix, or another tile format"},
                  401: {"description": "no token and no signature"}, 403: {"description": "bad or expired signature"},
                  404: {"description": "no such job, not yours, or it has no tiles"}}
_archives = ArchiveCache()


def tiles_prefix(job_id: str) -> str:
    """What a tile signature covers: every tile of this job (and its TileJSON)."""
    return f"/api/geo-jobs/{job_id}/tiles/"


def _authorised_job(request: Request, job_id: str) -> Job:
    """The job, if the caller may read its tiles: a signature for them, or the owner's token."""
    state = api_state(request)
    if "signature" in request.query_params or "expires" in request.query_params:
        try:
            verify(state.settings.api.signing_secret, "GET", tiles_prefix(job_id), dict(request.query_params))
        except SignatureInvalid as exc:
            raise ApiError(403, str(exc), code="signature_invalid") from None
        with state.pool.lease("api") as queue:
            return queue.get(job_id)
    return own_job(state, job_id, current_user(request))


def _archive(state: ApiState, job: Job) -> Archive:
    ref = (job.outputs or {}).get("pmtiles") if isinstance(job.outputs, dict) else None
    if job.status != Status.SUCCEEDED.value or not ref:
        raise ApiError(404, f"job {job.id} has no tiles" + ("" if ref else " (run it as geotiff_to_tiles)"))
    backend = state.backend()
    try:
        return _archives.get((job.id, str(ref)), lambda offset, length: backend.read_range(str(ref), offset, length))
    except ArchiveError as exc:
        raise ApiError(404, f"job {job.id}'s tile archive cannot be read: {exc}") from None


@router.get("/{job_id}/tiles/{z}/{x}/{y}.{ext}", summary="One map tile of a job", response_class=Response,
            responses=TILE_RESPONSES)
def get_tile(job_id: str, z: int, x: int, y: int, ext: str, request: Request):
    if not (0 <= z <= MAX_ZOOM and 0 <= x < 2 ** z and 0 <= y < 2 ** z):
        raise ApiError(400, f"tile {z}/{x}/{y} is outside the tile matrix (0 <= x, y < 2^z, z <= {MAX_ZOOM})",
                       field="z/x/y")
    state = api_state(request)
    try:
        job = _authorised_job(request, job_id)
    except JobNotFound:
        raise ApiError(404, "no such job") from None
    archive = _archive(state, job)
    if ext.lower() not in EXTENSIONS.get(archive.tile_type, ()):
        wanted = EXTENSIONS.get(archive.tile_type, ("?",))[0]
        raise ApiError(400, f"this archive holds .{wanted} tiles, not .{ext}", field="ext")
    data = archive.tile(z, x, y)
    if data is None:
        return Response(status_code=204, headers={"Cache-Control": CACHE_CONTROL})
    etag = '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=archive.media_type, headers=headers)


@router.get("/{job_id}/tilejson.json", summary="The job's TileJSON (3.0.0), with a signed tile URL template",
            responses={401: TILE_RESPONSES[401], 403: TILE_RESPONSES[403], 404: TILE_RESPONSES[404]})
async def get_tilejson(job_id: str, request: Request):
    state = api_state(request)
    try:
        job = await run_in_threadpool(_authorised_job, request, job_id)
    except JobNotFound:
        raise ApiError(404, "no such job") from None
    archive = await run_in_threadpool(_archive, state, job)
    doc: dict[str, Any] = await run_in_threadpool(archive.metadata)
    ext = EXTENSIONS.get(archive.tile_type, ("png",))[0]
    signed = sign_path(state.settings.api.signing_secret, "GET", tiles_prefix(job.id), state.settings.storage.presign_expiry)
    query = signed.partition("?")[2]
    template = f"{base_url(request, state)}{tiles_prefix(job.id)}{{z}}/{{x}}/{{y}}.{ext}?{query}"
    keep = ("tilejson", "name", "description", "attribution", "scheme", "minzoom", "maxzoom", "bounds", "center",
            "format")
    body = {k: doc[k] for k in keep if k in doc}
    body.update({"tilejson": "3.0.0", "tiles": [template], "scheme": "xyz"})
    body.setdefault("minzoom", archive.header["min_zoom"])
    body.setdefault("maxzoom", archive.header["max_zoom"])
    return JSONResponse(body, headers={"Cache-Control": "private, no-store"})
