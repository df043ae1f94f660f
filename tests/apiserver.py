"""`geoworker api` as a real process on a free loopback port, with known secrets, for the API tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests

from service import wait_for

JWT_SECRET = "test-jwt-secret-0123456789abcdef-0123456789"
SIGNING_SECRET = "test-signing-secret-0123456789abcdef-01234"
WORKER_TOKEN = "test-worker-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user_token(sub: str = "alice", expires_in: float = 600, secret: str = JWT_SECRET, **claims) -> str:
    payload = {"sub": sub, "exp": int(time.time() + expires_in), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(sub: str = "alice", **kwargs) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(sub, **kwargs)}"}


def worker_headers(worker: str = "test-host:abc:1", token: str = WORKER_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Worker {token}", "X-Geoworker-Worker": worker}


class ApiServer:
    """`python -m geoworker api` in its own session; its stderr goes to a file."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str = "api"):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**env, "GEOWORKER_API_HOST": "127.0.0.1", "GEOWORKER_API_PORT": str(self.port),
                    "GEOWORKER_API_BASE_URL": self.base, "GEOWORKER_API_JWT_SECRET": JWT_SECRET,
                    "GEOWORKER_API_SIGNING_SECRET": SIGNING_SECRET, "GEOWORKER_API_WORKER_TOKEN": WORKER_TOKEN}
        self.cwd = Path(cwd)
        self.log_path = self.cwd / f"{name}.stderr"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "ApiServer":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "geoworker", "api"], env=self.env, cwd=self.cwd,
                                     stdout=self._log, stderr=self._log, start_new_session=True)
        wait_for(self._ready, timeout, interval=0.2, what=f"the API on {self.base}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"geoworker api exited {self.proc.returncode}:\n{self.log()}")
        try:
            return requests.get(self.base + "/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def url(self, path: str) -> str:
        return self.base + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def service_env(dsn: str, tmp: Path) -> dict[str, str]:
    """What conftest's cli_env gives, for fixtures wider than one test."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "GEOWORKER_")) and k not in ("DATABASE_URL",)}
    env.update({"DATABASE_URL": dsn, "GEOWORKER_LOGGING_FILE": str(tmp / "worker.log"),
                "GEOWORKER_STORAGE_ROOT": str(tmp / "storage"), "GEOWORKER_STORAGE_TEMP_DIR": str(tmp / "tmp"),
                "GEOWORKER_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"})
    return env


FAST = {"GEOWORKER_WORKER_HEARTBEAT_INTERVAL": "1", "GEOWORKER_WORKER_DEBUG_TASKS": "true",
        "GEOWORKER_RETRY_BACKOFF_BASE": "0.2", "GEOWORKER_RETRY_BACKOFF_MAX": "1"}


@contextlib.contextmanager
def module_database(admin_dsn: str, template: str):
    """A migrated database for a whole module (tests that need no isolation share one server)."""
    from pgtest import admin_exec as _admin_exec, dsn_for

    name = f"gwtest_api_{uuid.uuid4().hex[:10]}"
    _admin_exec(admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield dsn_for(admin_dsn, name)
    finally:
        _admin_exec(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def check_log(server: ApiServer) -> None:
    """Every API test also proves this: nothing answered 500, nothing blew up."""
    log = server.log()
    assert not re.search(r" 500 \d+ ms", log) and "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def shared_api(admin_dsn, template_db, tmp_path_factory):
    """One API server for a module's read-mostly tests."""
    tmp = tmp_path_factory.mktemp("api")
    with module_database(admin_dsn, template_db) as dsn:
        server = ApiServer({**service_env(dsn, tmp), **FAST}, tmp).start()
        server.dsn = dsn
        yield server
        server.stop()
        check_log(server)


@pytest.fixture
def api_env(cli_env):
    """The API's environment: this test's database and storage, fast heartbeats, debug tasks on."""
    return {**cli_env, **FAST}


@pytest.fixture
def api(api_env, tmp_path):
    server = ApiServer(api_env, tmp_path).start()
    yield server
    server.stop()
    check_log(server)
