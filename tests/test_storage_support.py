"""Helpers for the storage tests (this module holds no tests).

`PlatformServer` stands in for the platform: a real HTTP server on a free loopback port,
in a thread, that serves and accepts files only through expiring HMAC-signed URLs
(geoworker.storage.signing), and misbehaves on request: no Content-Length, a lying
Content-Length, a hang, 5xx before success, fixed statuses, redirects, wrong types.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import numpy as np
import rasterio
from affine import Affine

from geoworker import tasks
from geoworker.config import load_settings
from geoworker.errors import describe
from geoworker.jobs import Status
from geoworker.storage import TransferPolicy
from geoworker.storage.signing import SignatureInvalid, sign_path, verify
from geoworker.storage.workdir import create_workdir, remove_workdir
from geoworker.tasks import TaskContext

SECRET = "platform-test-secret"
# a real scanner process: exit 1 ("found") when the file holds the EICAR marker
SCANNER = (f"{sys.executable} -c \"import sys; sys.exit(1 if b'EICAR' in open(sys.argv[1], 'rb').read() else 0)\" "
           "{path}")
FAST = TransferPolicy(connect_timeout=5, read_timeout=10, attempts=3, backoff_base=0.01, backoff_max=0.05)


def make_settings(tmp_path: Path, s3: dict | None = None, **storage):
    """Settings with storage under tmp_path (no config file, no environment), storage keys overridden
    (and those of the [storage.s3] table, if given)."""
    base = load_settings(environ={}, base_dir=tmp_path)
    values = {"root": str(tmp_path / "storage"), "temp_dir": str(tmp_path / "tmp"), **storage}
    settings = base.replace("storage", **values)
    return settings.replace("storage.s3", **s3) if s3 else settings


def write_geotiff(path: Path, size: int = 64, bands: int = 3) -> Path:
    """A small georeferenced uint8 GeoTIFF (UTM 38N), different pixels each band."""
    rows, cols = np.mgrid[0:size, 0:size]
    data = np.stack([((rows * (b + 1) + cols * 3) % 251).astype("uint8") for b in range(bands)])
    profile = dict(driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs="EPSG:32638",
                   transform=Affine(0.5, 0, 500000, 0, -0.5, 4500000), compress="deflate")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


class Job:
    """The two fields backends read from a job."""

    def __init__(self, id: str, input=None):
        self.id, self.input = id, input


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # keep pytest output quiet
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _route(self):
        u = urlsplit(self.path)
        query = dict(parse_qsl(u.query))
        platform: PlatformServer = self.server.platform
        platform.hits[u.path] += 1
        platform.requests.append((self.command, self.path))
        return u.path, query, platform

    def do_GET(self):
        path, query, p = self._route()
        if path.startswith("/files/"):
            return self._signed_file("GET", path, query, p)
        if path.startswith("/flaky/"):
            if p.hits[path] <= int(query.get("fail", "2")):
                return self._reply(503, b"try later")
            return self._reply(200, p.files[path.replace("/flaky/", "/files/")], {"Content-Type": "image/tiff"})
        if path == "/nolength":  # HTTP/1.0, body delimited by closing the connection
            self.send_response(200)
            self.send_header("Content-Type", "image/tiff")
            self.end_headers()
            chunk = b"II*\x00" + b"\x00" * 65532
            try:
                for _ in range(int(query["chunks"])):
                    self.wfile.write(chunk)
                    p.sent[path] += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if path == "/lyinglength":  # declares a small body, then keeps sending
            self.send_response(200)
            self.send_header("Content-Length", query["declare"])
            self.end_headers()
            try:
                for _ in range(int(query["chunks"])):
                    self.wfile.write(b"II*\x00" + b"\x00" * 65532)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if path == "/biglength":
            self.send_response(200)
            self.send_header("Content-Length", query["declare"])
            self.end_headers()
            return None  # and never sends the body: the client must refuse from the header alone
        if path == "/hang":
            p.release.wait(30)
            return None
        if path == "/trickle":  # headers and a little body, then silence
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"II*\x00")
            self.wfile.flush()
            p.release.wait(30)
            return None
        if path.startswith("/status/"):
            return self._reply(int(path.rsplit("/", 1)[1]), b"no")
        if path == "/redirect":
            return self._reply(int(query.get("code", "302")), b"", {"Location": query["to"]})
        if path == "/loop":
            return self._reply(302, b"", {"Location": "/loop"})
        if path == "/typed":
            return self._reply(200, b"<html><body>login</body></html>", {"Content-Type": query["type"]})
        if path == "/gzip":
            return self._reply(200, b"\x1f\x8b\x08\x00", {"Content-Type": "image/tiff", "Content-Encoding": "gzip"})
        return self._reply(404, b"not found")

    def do_PUT(self):
        path, query, p = self._route()
        if path.startswith("/flaky/"):
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if p.hits[path] <= int(query.get("fail", "2")):
                return self._reply(502, b"bad gateway")
            p.files[path.replace("/flaky/", "/files/")] = b"stored"
            return self._reply(201)
        if path.startswith("/files/"):
            return self._signed_file("PUT", path, query, p)
        return self._reply(404, b"not found")

    def _signed_file(self, method: str, path: str, query: dict, p: "PlatformServer"):
        try:
            grant = verify(SECRET, method, path, query)
        except SignatureInvalid as exc:
            if method == "PUT":  # drain, so that the client sees the answer and not a reset
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
            return self._reply(403, str(exc).encode())
        if method == "GET":
            if path not in p.files:
                return self._reply(404, b"no such file")
            return self._reply(200, p.files[path], {"Content-Type": p.types.get(path, "image/tiff")})
        length = int(self.headers.get("Content-Length", "-1"))
        if length < 0 or (grant.size is not None and length > grant.size):
            return self._reply(413, b"too large")
        p.files[path] = self.rfile.read(length)
        p.types[path] = self.headers.get("Content-Type", "")
        return self._reply(201)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    platform: "PlatformServer"


class PlatformServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.types: dict[str, str] = {}
        self.hits: Counter = Counter()
        self.sent: Counter = Counter()
        self.requests: list[tuple[str, str]] = []
        self.release = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.platform = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> "PlatformServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def url(self, path: str) -> str:
        return self.base + path

    def signed(self, method: str, name: str, expires_in: float = 300, size: int | None = None) -> str:
        return self.base + sign_path(SECRET, method, f"/files/{quote(name)}", expires_in, size)

    def put_file(self, name: str, data: bytes, content_type: str = "image/tiff") -> None:
        self.files[f"/files/{quote(name)}"] = data
        self.types[f"/files/{quote(name)}"] = content_type


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's standalone S3-compatible server as a subprocess on a free loopback port."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.proc = None
        self.port = 0

    def __enter__(self) -> "S3Server":
        import shutil
        import subprocess
        import sys

        import requests

        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        if not Path(exe).exists():
            raise RuntimeError("moto_server is not installed: pip install -e '.[test]' (moto[server])")
        for _ in range(3):  # a free port can be taken between the probe and the bind: try another
            self.port = free_port()
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            log.close()

            def up():
                if self.proc.poll() is not None:
                    return "exited"
                try:
                    return requests.get(self.endpoint + "/moto-api/", timeout=1).status_code < 500 and "up"
                except requests.RequestException:
                    return None

            if wait_for(up, 30, "moto_server to answer") == "up":
                return self
        raise RuntimeError(f"moto_server did not start; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")

    def settings(self, tmp_path: Path, bucket: str, prefix: str = "", **storage):
        return make_settings(tmp_path, backend="s3", s3={"endpoint_url": self.endpoint, "bucket": bucket,
                             "prefix": prefix, "region": "us-east-1", "access_key_id": "test",
                             "secret_access_key": "test"}, **storage)


def run_claimed_job(queue, settings, backend):
    """Claim the next job and run its handler as a child would; returns (job, outcome, progress, workdir)."""
    job = queue.claim()
    assert job is not None
    workdir = create_workdir(settings.storage.temp_dir, job.id)
    progress: list[tuple[int, str]] = []
    ctx = TaskContext(job=job, settings=settings, workdir=workdir, storage=backend,
                      report=lambda percent, message: progress.append((percent, message)))
    try:
        result = tasks.get(job.task_type, settings).handler(ctx)
    except Exception as exc:
        code, message, permanent = describe(exc)
        return queue.fail(job, code, message, permanent=permanent), exc, progress, workdir
    finally:
        remove_workdir(workdir)
    return queue.complete(job.id, outputs=result.outputs, result=result.result), result, progress, workdir


def submit_local(queue, backend, tif: Path, task: str = "geotiff_to_png", params=None):
    job = queue.enqueue(task, params or {}, status=Status.PENDING)
    ref = backend.import_file(job.id, tif)
    return queue.queue_pending(job.id, ref)
