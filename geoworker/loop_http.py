"""A tiny HTTP/1.0 server that never blocks the loop it runs in: the supervisor's /metrics and /healthz.

Why not prometheus_client's start_http_server: it serves from a thread, and the
supervisor forks its children; forking a process that runs other threads is unsafe (a
lock another thread holds is copied locked into the child). So there is no server
thread: the listening socket and each client's socket are non-blocking and join the
supervisor's select() (`fds()`), and `on_readable()` accepts, reads and answers without
ever waiting on a client. A client that has not sent its whole request within
REQUEST_TIMEOUT is dropped by `expire()`, which the loop calls every turn, so slow or idle
clients cannot pile up.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable

from loguru import logger

REQUEST_TIMEOUT = 2.0  # seconds a client has to send its request (and to take the answer)
MAX_CONNECTIONS = 16
MAX_REQUEST_BYTES = 8192


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    data: bytes = b""


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class HttpEndpoint:
    """A listening socket and its open connections; GET and HEAD of a few fixed paths.

    Args:
        host, port: where to listen (open() binds; an OSError there is the caller's to report).
        routes: {path: handler}; a handler returns (status, content type, body) and is called
            on the loop, so it must be quick (the metrics page reads the database at most every
            few seconds).
    """

    def __init__(self, host: str, port: int, routes: dict[str, Callable[[], tuple[int, str, bytes]]]):
        self.host, self.port, self.routes = host, port, routes
        self.sock: socket.socket | None = None
        self.connections: dict[int, _Connection] = {}

    def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=MAX_CONNECTIONS)
        sock.setblocking(False)
        self.sock = sock

    def close(self) -> None:
        for fd in list(self.connections):
            self._drop(fd)
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def fds(self) -> list[int]:
        return ([self.sock.fileno()] if self.sock is not None else []) + list(self.connections)

    def on_readable(self, fd: int) -> None:
        if self.sock is not None and fd == self.sock.fileno():
            self._accept()
        elif fd in self.connections:
            self._read(fd)

    def expire(self) -> None:
        """Drop clients that did not send a whole request in time (they must not pile up)."""
        now = time.monotonic()
        for fd, conn in list(self.connections.items()):
            if now > conn.deadline:
                self._drop(fd)

    def _accept(self) -> None:
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: try again on the next event
                logger.warning(f"metrics: accept failed: {exc}")
                return
            if len(self.connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            self.connections[sock.fileno()] = _Connection(sock, time.monotonic() + REQUEST_TIMEOUT)

    def _read(self, fd: int) -> None:
        conn = self.connections[fd]
        try:
            chunk = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not chunk:
            self._drop(fd)
            return
        conn.data += chunk
        if b"\r\n\r\n" in conn.data or b"\n\n" in conn.data:
            self._answer(fd, *self._handle(conn.data))
        elif len(conn.data) > MAX_REQUEST_BYTES:
            self._answer(fd, 431, "text/plain", b"request too large\n")

    def _handle(self, request: bytes) -> tuple[int, str, bytes, bool]:
        line = request.split(b"\n", 1)[0].decode("latin-1").strip().split()
        if len(line) != 3 or not line[2].startswith("HTTP/"):
            return 400, "text/plain", b"bad request\n", False
        method, target = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET or HEAD only\n", False
        route = self.routes.get(target)
        if route is None:
            return 404, "text/plain", b"not found: try /metrics or /healthz\n", method == "HEAD"
        try:
            status, ctype, body = route()
        except Exception:
            logger.exception(f"metrics: {target} failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        return status, ctype, body, method == "HEAD"

    def _answer(self, fd: int, status: int, ctype: str, body: bytes, head_only: bool = False) -> None:
        conn = self.connections[fd]
        head = (f"HTTP/1.0 {status} {REASONS.get(status, 'Unknown')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
        try:
            # a few tens of kB into a fresh socket buffer: in practice this never waits
            conn.sock.settimeout(REQUEST_TIMEOUT)
            conn.sock.sendall(head.encode("latin-1") + (b"" if head_only else body))
        except OSError:
            pass
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        conn = self.connections.pop(fd, None)
        if conn is None:
            return
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # the FIN goes out even if a child still held a copy
        except OSError:
            pass
        conn.sock.close()


def host_for_url(host: str) -> str:
    """The host as it goes in a URL (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
