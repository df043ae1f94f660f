"""Storage: where a job's input comes from and where its outputs go.

    backend = open_backend(settings)               # storage.backend: a name in storage.registry
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
remove_child_workdirs, sweep_workdirs. Backends by name, and how to add one:
geoworker.storage.registry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The names below are imported on first use (PEP 562): config imports storage.registry to
# check storage.backend, and importing this package must not pull requests and urllib3
# (storage.urls, a tenth of a second) into every command that reads its configuration.
_EXPORTS = {
    "Backend": "base", "FetchedFile": "base", "UnsupportedOperation": "base", "input_reference": "base",
    "check_input": "checks", "safe_filename": "names", "open_backend": "registry",
    "TransferPolicy": "urls", "UrlPolicy": "urls", "UrlRefused": "urls",
    "create_workdir": "workdir", "remove_child_workdirs": "workdir", "remove_workdir": "workdir",
    "sweep_workdirs": "workdir",
}
__all__ = [
    "Backend", "FetchedFile", "TransferPolicy", "UnsupportedOperation", "UrlPolicy", "UrlRefused",
    "check_input", "create_workdir", "input_reference", "open_backend", "remove_child_workdirs",
    "remove_workdir", "safe_filename", "sweep_workdirs",
]

if TYPE_CHECKING:
    from geoworker.storage.base import Backend, FetchedFile, UnsupportedOperation, input_reference
    from geoworker.storage.checks import check_input
    from geoworker.storage.names import safe_filename
    from geoworker.storage.registry import open_backend
    from geoworker.storage.urls import TransferPolicy, UrlPolicy, UrlRefused
    from geoworker.storage.workdir import create_workdir, remove_child_workdirs, remove_workdir, sweep_workdirs


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
