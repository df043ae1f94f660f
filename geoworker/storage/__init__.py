"""Storage: where a job's input comes from and where its outputs go (DESIGN.md section 5).

    backend = open_backend(settings)               # storage.backend: local | s3 | http
    fetched = backend.fetch(job, workdir / "in")   # FetchedFile(path, size, sha256, content_type, source)
    refs = backend.store_outputs(job, {"png": path, ...})   # {kind: reference}

Input references (the job's `input` jsonb):

    local   {"backend": "local", "path": "<root>/jobs/<id>/input/<name>", "name": ..., "size": ...,
             "sha256": ...[, "content_type": ...]}            `geoworker submit FILE`, API uploads;
            the path must lie under storage.root (relative paths are relative to it)
    URL     {"url": "https://host/path"[, "name": ...]}       any backend; storage.allowed_hosts,
            https only unless storage.allow_http, public addresses only (see storage.urls)
    s3      {"url": "s3://<bucket>/<key>"[, "name": ...]}     s3 backend; configured bucket only
    http    {"url": "<signed GET>", "outputs": {kind: "<signed PUT>", ...}[, "name", "content_type"]}

Output references (the job's `outputs`, {kind: reference}):

    local   "<root>/jobs/<id>/output/<name>"   (absolute path; written to a temporary name, then renamed)
    s3      "s3://<bucket>/<prefix>/jobs/<id>/output/<name>"   (backend.presign(ref) -> GET URL
            valid storage.presign_expiry seconds)
    http    the PUT URL without its query string (no signature)

Work directories (geoworker.storage.workdir): create_workdir, remove_workdir,
remove_child_workdirs, sweep_workdirs.
"""

from __future__ import annotations

from typing import Iterable

from geoworker.storage.base import Backend, FetchedFile, UnsupportedOperation, input_reference
from geoworker.storage.checks import check_input
from geoworker.storage.names import safe_filename
from geoworker.storage.urls import TransferPolicy, UrlPolicy, UrlRefused
from geoworker.storage.workdir import create_workdir, remove_child_workdirs, remove_workdir, sweep_workdirs

__all__ = [
    "Backend", "FetchedFile", "TransferPolicy", "UnsupportedOperation", "UrlPolicy", "UrlRefused",
    "check_input", "create_workdir", "input_reference", "open_backend", "remove_child_workdirs",
    "remove_workdir", "safe_filename", "sweep_workdirs",
]


def open_backend(settings, *, transfer: TransferPolicy | None = None,
                 unsafe_allow_endpoints: Iterable[tuple[str, int]] = ()) -> Backend:
    """The backend storage.backend names, ready to use (close it, or use it as a context manager).

    Args:
        settings: the Settings.
        transfer: timeouts and retries (default TransferPolicy()).
        unsafe_allow_endpoints: (ip, port) pairs exempt from the public-address rule. For tests
            whose servers listen on loopback; never set it from configuration.
    """
    kind = settings.storage.backend
    kwargs = {"transfer": transfer, "unsafe_allow_endpoints": unsafe_allow_endpoints}
    if kind == "local":
        from geoworker.storage.local import LocalBackend

        return LocalBackend(settings, **kwargs)
    if kind == "s3":
        from geoworker.storage.s3 import S3Backend

        return S3Backend(settings, **kwargs)
    if kind == "http":
        from geoworker.storage.http_backend import HttpBackend

        return HttpBackend(settings, **kwargs)
    raise ValueError(f"unknown storage backend {kind!r}")
