"""`geoworker api`: one uvicorn process serving the application on api.host:api.port.

One process is enough for the platform's traffic: requests are short (uploads stream in
chunks on the event loop's thread pool, downloads are sent by the server), and every bit
of state is in PostgreSQL. For more, run several `geoworker api` behind a load balancer
with the same secrets; each runs its own stale-job rescuer, which is safe (SKIP LOCKED).
"""

from __future__ import annotations

import logging

from loguru import logger

from geoworker.errors import ConfigError

MIN_SECRET = 32  # bytes: HS256 wants a key at least as long as its hash (RFC 7518 3.2)


class _ToLoguru(logging.Handler):
    """uvicorn logs through the standard library; send it to the same sink as everything else."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(exception=record.exc_info).log(level, record.getMessage())


def check_settings(settings) -> None:
    """Refuse to serve without the secrets the routes need; warn about weak ones."""
    api = settings.api
    if not api.jwt_secret:
        raise ConfigError("api.jwt_secret: required by `geoworker api` (GEOWORKER_API_JWT_SECRET)")
    if not api.signing_secret:
        raise ConfigError("api.signing_secret: required by `geoworker api` (GEOWORKER_API_SIGNING_SECRET)")
    for key, value in (("jwt_secret", api.jwt_secret), ("signing_secret", api.signing_secret)):
        if len(value.encode()) < MIN_SECRET:
            logger.warning(f"api.{key} is shorter than {MIN_SECRET} bytes; use a long random secret")
    if not api.worker_token:
        logger.info("api.worker_token is empty: the worker routes are off")


def _server(config, on_exit):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn waits for open responses before it stops, and the dashboard's live streams never
        end by themselves: end them at the first TERM/INT, so a restart takes no longer for them."""

        def handle_exit(self, sig, frame) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    return Server(config)


def serve(settings, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    from geoworker import logs
    from geoworker.api.app import create_app

    # stderr only: logging.file belongs to the host's supervisor (one writer per file)
    logs.setup_service_logging(settings.replace("logging", file=""), role="api")
    check_settings(settings)
    app = create_app(settings)
    handler = _ToLoguru()
    for name in ("uvicorn", "uvicorn.error"):
        log = logging.getLogger(name)
        log.handlers = [handler]
        log.propagate = False
        log.setLevel(logging.INFO)
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    logger.info(f"geoworker API on http://{host}:{port} (OpenAPI at /openapi.json)")
    config = uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None, server_header=False,
                            timeout_graceful_shutdown=10, lifespan="on")
    server = _server(config, app.state.stream.close_threadsafe)
    server.run()
    return 0 if server.started else 3  # uvicorn's own exit code for a server that could not start
