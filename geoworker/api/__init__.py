"""The HTTP API (README.md, "HTTP API"): `geoworker api`.

    app.py      the ASGI application (create_app), body limit, access log, /health
    user.py     the platform's routes: /api/geo-jobs ... (Bearer JWT)
    files.py    the signed URLs: PUT /api/uploads/..., GET /api/files/...
    worker.py   /api/internal/... for remote workers (Worker token + X-Geoworker-Worker)
    meta.py     /api/me, /api/tasks (the task registry's parameters, for the upload form)
    ops.py      /api/overview, /api/workers (operators)
    stream.py   /api/stream: Server-Sent Events of job and worker changes (LISTEN/NOTIFY)
    ui.py       the dashboard at /ui (pages, static files, Leaflet, security headers)
    auth.py     who is calling; errors.py the one error shape; schemas.py request/response bodies
    views.py    a job as a user sees it; wire.py the camelCase wire format (shared with geoworker.remote)
    state.py    connection pool, NOTIFY listener, stale-job rescuer
    server.py   serve(): uvicorn

This package imports nothing heavy at import time: geoworker.remote uses wire.py without
the web framework.
"""


def create_app(settings, dsn: str | None = None):
    from geoworker.api.app import create_app as make

    return make(settings, dsn)


def serve(settings, host: str | None = None, port: int | None = None) -> int:
    from geoworker.api.server import serve as run

    return run(settings, host, port)
