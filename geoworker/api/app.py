"""The ASGI application: routes, error handling, body limit, access log, and the process's threads."""

from __future__ import annotations

import asyncio
import contextlib
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException

from geoworker import __version__
from geoworker.api import errors
from geoworker.api.schemas import Health
from geoworker.api.state import ApiState

DESCRIPTION = """\
geoworker's HTTP API: the platform's job routes (Bearer JWT), signed upload and download
URLs, and the internal routes remote workers claim and report through (Worker token).
Errors are always `{"error": code, "message": text[, "field": name]}`.
"""
UNLIMITED_PREFIXES = ("/api/uploads/",)  # capped by the signed size and storage.max_file_size instead


class BodyTooLarge(StarletteHTTPException):
    """Raised while reading: FastAPI passes HTTPExceptions through its body parsing untouched."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes (api.max_body_bytes)")


class BodyLimit:
    """Refuse request bodies over `limit` bytes: at once by Content-Length, else while they stream."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PREFIXES):
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_error(scope, receive, send, 400, "bad_request", "Content-Length is not a number")
            if int(length) > self.limit:
                return await _send_error(scope, receive, send, 413, "too_large",
                                         f"the request body is larger than {self.limit} bytes (api.max_body_bytes)")
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


async def _send_error(scope, receive, send, status: int, code: str, message: str) -> None:
    response = JSONResponse({"error": code, "message": message}, status_code=status)
    await response(scope, receive, send)


class AccessLog:
    """One line per request: method, path (never the query string: signatures live there), status, time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        status = 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = (scope.get("client") or ("-", 0))[0]
            logger.info(f"{client} {scope['method']} {scope['path']} {status} "
                        f"{(time.monotonic() - started) * 1000:.0f} ms")


def create_app(settings, dsn: str | None = None) -> FastAPI:
    """The application for `settings` (dsn: the database to use, default the configured one)."""
    from geoworker.api import files, tiles, user, worker

    state = ApiState(settings, dsn)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, state.start, loop)
        try:
            yield
        finally:
            await loop.run_in_executor(None, state.stop)

    app = FastAPI(title="geoworker API", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")
    app.state.api = state
    errors.install(app)
    app.include_router(user.router)
    app.include_router(files.router)
    app.include_router(worker.router)
    app.include_router(tiles.router)

    @app.get("/health", response_model=Health, tags=["health"], summary="Database reachable, schema current",
             responses={503: {"model": Health, "description": "unhealthy"}})
    def health(request: Request):
        checks = request.app.state.api.health()
        healthy = all(c.get("ok") for c in checks.values())
        body = {"status": "healthy" if healthy else "unhealthy", "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    app.add_middleware(BodyLimit, limit=settings.api.max_body_bytes)
    app.add_middleware(AccessLog)
    return app
