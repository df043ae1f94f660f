"""Running `geoworker run` as a real process in tests, and reading the database it works on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import psycopg2
import psycopg2.extras

from pgtest import ROOT  # noqa: F401  (tests import it from here)



def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Database:
    """Plain reads of the test database (assertions only)."""

    def __init__(self, dsn: str):
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def rows(self, query: str, params=None) -> list[dict]:
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(query, params)
            return [dict(r) for r in cur.fetchall()] if cur.description else []

    def value(self, query: str, params=None):
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchone()[0]

    def statuses(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in self.rows("SELECT status, count(*) AS n FROM geo_jobs GROUP BY 1")}

    def job(self, job_id: str) -> dict:
        return self.rows("SELECT * FROM geo_jobs WHERE id = %s", (job_id,))[0]

    def events(self, job_id: str) -> list[dict]:
        return self.rows("SELECT * FROM geo_job_events WHERE job_id = %s ORDER BY id", (job_id,))

    def running_jobs(self) -> list[dict]:
        return self.rows("SELECT id, locked_by, attempts FROM geo_jobs WHERE status = 'running'")

    def all_finished(self, n: int) -> bool:
        return self.value("SELECT count(*) FROM geo_jobs WHERE status IN ('succeeded', 'failed', 'cancelled')") >= n

    def close(self) -> None:
        self.conn.close()


def child_pid(worker_id: str) -> int:
    """A child's worker id ends with its pid (host:tag:pid)."""
    return int(worker_id.rsplit(":", 1)[1])


class Service:
    """`geoworker run` in its own session, with its stderr in a file.

    Args:
        wrapper: a command that execs the rest in place (`ip netns exec NS`), so that the pid is still ours.
    """

    def __init__(self, env: dict[str, str], cwd: Path, args: tuple[str, ...] = (), name: str = "service",
                 wrapper: tuple[str, ...] = ()):
        self.env = env
        self.cwd = Path(cwd)
        self.args = args
        self.wrapper = wrapper
        self.stderr_path = self.cwd / f"{name}.stderr"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Service":
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([*self.wrapper, sys.executable, "-m", "geoworker", "run", *self.args],
                                     env=self.env,
                                     cwd=self.cwd, stdout=self._stderr, stderr=self._stderr,
                                     start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def wait_children(self, n: int, timeout: float = 30) -> list[psutil.Process]:
        return wait_for(lambda: (lambda c: c if len(c) == n else None)(self.children()), timeout,
                        what=f"{n} children")

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """Tear down whatever is left: the process group, then any orphan."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._stderr.close()


def submit(env, cwd, *args: str) -> str:
    result = run_cli(["submit", *args], env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class FreezingProxy:
    """A TCP proxy in front of PostgreSQL that can stop passing bytes while keeping every
    connection open: a hung server, as a client sees one (its bytes are accepted, no answer comes).

    Args:
        bind: the address it listens on (a port is picked); loopback unless a test gave itself another.
    """

    def __init__(self, dsn: str, bind: str = "127.0.0.1"):
        import socket
        import threading

        from psycopg2.extensions import parse_dsn

        parts = parse_dsn(dsn)
        host, port = parts.get("host", "127.0.0.1"), int(parts.get("port", 5432))
        if host.startswith("/"):
            self.upstream = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}")
        else:
            self.upstream = (socket.AF_INET, (host, port))
        self.listener = socket.socket()
        self.listener.bind((bind, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self.stopped = threading.Event()
        self.dsn = psycopg2.extensions.make_dsn(dsn, host=bind, port=str(self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        self.listener.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                continue
            server = socket.socket(self.upstream[0])
            try:
                server.connect(self.upstream[1])
            except OSError:
                client.close()
                server.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst) -> None:
        import select as sel

        while not self.stopped.is_set():
            if self.frozen.is_set():
                time.sleep(0.05)
                continue
            try:
                ready, _, _ = sel.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            except (OSError, ValueError):  # the other direction closed both sockets
                break
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def run_cli(args, env, cwd=None, timeout=120, input=None):
    """`python -m geoworker ARGS` as a user would run it; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "geoworker", *args], env=env, cwd=cwd, input=input,
                          capture_output=True, text=True, timeout=timeout)
