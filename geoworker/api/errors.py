"""Every error answer is one JSON shape, `{"error": code, "message": text[, "field": name]}`.

Nothing here ever puts a traceback, a path or a query string in a response: unexpected
exceptions are logged (redacted, see logs.py) and answered with a fixed message.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException

from geoworker.errors import (
    BadParams,
    DatabaseUnavailable,
    InvalidState,
    JobNotFound,
    LockLost,
)
from geoworker.submit import check_json_safe

STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
                422: "validation_error", 500: "internal_error", 503: "unavailable"}


class ApiError(Exception):
    """An answer other than success, raised anywhere in a request."""

    def __init__(self, status: int, message: str, *, code: str | None = None, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = headers


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized(message: str, scheme: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": scheme})


def check_json(value: Any, field: str) -> None:
    """Refuse what PostgreSQL's jsonb cannot store (NUL characters, NaN, Infinity) and absurd nesting.

    Raises:
        ApiError: 422 naming the field.
    """
    try:
        check_json_safe(value)
    except BadParams as exc:
        raise ApiError(422, f"{field}: {exc}", field=field) from None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one JSON shape."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = [{"field": _field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
                    for e in exc.errors()] or [{"field": None, "message": "invalid request"}]
        body: dict[str, Any] = {
            "error": "validation_error",
            "message": "; ".join(f"{p['field']}: {p['message']}" if p["field"] else p["message"]
                                 for p in problems[:5]),
        }
        if problems[0]["field"]:
            body["field"] = problems[0]["field"]
        if len(problems) > 1:
            body["errors"] = problems[:20]
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else STATUS_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, STATUS_CODES.get(exc.status_code, "error"), detail,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(JobNotFound)
    async def not_found(request: Request, exc: JobNotFound):
        return error_response(404, "not_found", "no such job")

    @app.exception_handler(LockLost)
    async def lock_lost(request: Request, exc: LockLost):
        return error_response(409, "lock_lost", str(exc))

    @app.exception_handler(InvalidState)
    async def invalid_state(request: Request, exc: InvalidState):
        return error_response(409, "invalid_state", str(exc))

    @app.exception_handler(DatabaseUnavailable)
    async def database_unavailable(request: Request, exc: DatabaseUnavailable):
        logger.warning(f"{request.method} {request.url.path}: database unavailable: {exc}")
        return error_response(503, "unavailable", "the job database is unavailable; try again shortly",
                              headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        logger.opt(exception=exc).error(f"{request.method} {request.url.path} failed: {type(exc).__name__}")
        return error_response(500, "internal_error", "internal server error")


def _field(loc) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None
