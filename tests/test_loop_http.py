"""The supervisor's small HTTP server, in-process: a real socket, driven the way the loop drives it."""

from __future__ import annotations

import select
import socket

import pytest

from geoworker.loop_http import HttpEndpoint, host_for_url


def _fail():
    raise RuntimeError("a route's own bug")


@pytest.fixture
def endpoint():
    server = HttpEndpoint("127.0.0.1", 0, {"/ok": lambda: (200, "text/plain", b"fine\n"), "/bug": _fail})
    server.open()
    yield server
    server.close()


def exchange(server: HttpEndpoint, request: bytes) -> bytes:
    """Send a request and turn the server's crank, as the supervisor's select() loop does, until it answers."""
    client = socket.create_connection(server.sock.getsockname()[:2], timeout=5)
    client.sendall(request)
    answer = b""
    for _ in range(200):
        readable, _, _ = select.select(server.fds() + [client], [], [], 0.05)
        for fd in readable:
            if fd is client:
                chunk = client.recv(65536)
                if not chunk:
                    client.close()
                    return answer
                answer += chunk
            else:
                server.on_readable(fd)
    raise AssertionError(f"no complete answer; got {answer!r}")


def test_get_and_head_of_a_route(endpoint):
    got = exchange(endpoint, b"GET /ok?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    head, body = got.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and b"Content-Length: 5" in head and body == b"fine\n"
    head_only = exchange(endpoint, b"HEAD /ok HTTP/1.0\r\n\r\n")
    assert b"Content-Length: 5" in head_only and head_only.endswith(b"\r\n\r\n")
    assert endpoint.connections == {}  # every answer closes its connection


@pytest.mark.parametrize("request_line, status", [
    (b"GET /nothing HTTP/1.0", b"404"), (b"POST /ok HTTP/1.0", b"405"), (b"hello", b"400"),
    (b"GET /bug HTTP/1.0", b"500")])
def test_what_it_refuses(endpoint, request_line, status):
    assert exchange(endpoint, request_line + b"\r\n\r\n").startswith(b"HTTP/1.0 " + status)
    assert exchange(endpoint, b"GET /ok HTTP/1.0\r\n\r\n").endswith(b"fine\n")  # and it serves on


def test_a_request_that_never_ends_is_cut_off(endpoint):
    assert exchange(endpoint, b"GET /ok HTTP/1.0\r\n" + b"X: " + b"a" * 9000).startswith(b"HTTP/1.0 431")


def test_a_silent_client_is_dropped_once_its_time_is_up(endpoint):
    client = socket.create_connection(endpoint.sock.getsockname()[:2], timeout=5)
    readable, _, _ = select.select(endpoint.fds(), [], [], 5)
    endpoint.on_readable(readable[0])
    assert len(endpoint.connections) == 1
    endpoint.expire()
    assert len(endpoint.connections) == 1  # still within REQUEST_TIMEOUT
    for conn in endpoint.connections.values():
        conn.deadline -= 3600  # as if the time had passed: no sleeping in tests
    endpoint.expire()
    assert endpoint.connections == {} and client.recv(10) == b""
    client.close()


def test_ipv6_hosts_are_bracketed_in_urls():
    assert (host_for_url("::1"), host_for_url("127.0.0.1")) == ("[::1]", "127.0.0.1")
