"""How a job looks to a platform user: camelCase, and nothing about the server's insides.

geo_jobs column -> JSON field:
    id, task_type -> taskType, status, priority, params -> inputPayload (keys camelCase),
    progress, progress_message -> progressMessage, attempts, max_attempts -> maxAttempts,
    error_code -> errorCode, last_error -> error, input -> input {fileName, fileSize,
    contentType, sha256}, outputs -> outputs {kind: fileName}, result -> result (as stored,
    minus where the input lay on the server), created_at/updated_at/run_at/started_at/
    finished_at -> createdAt/updatedAt/runAt/startedAt/finishedAt (ISO 8601), owner (the
    caller itself, or for an operator whoever created the job; null for a CLI job).
Not shown: locked_by and heartbeat_at (worker internals), and storage paths or URLs
(downloads go through signed URLs).
"""

from __future__ import annotations

import datetime as dt
from pathlib import PurePosixPath
from typing import Any, Mapping
from urllib.parse import urlsplit

from geoworker.api.wire import camel
from geoworker.jobs import Job
from geoworker.storage.names import LEGACY_OUTPUT_KINDS


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if isinstance(value, dt.datetime) else None


def output_name(reference: Any) -> str:
    """The file name an output reference ends in (a path, s3:// or https:// URL)."""
    text = str(reference)
    path = urlsplit(text).path if "://" in text else text
    return PurePosixPath(path).name


def input_view(ref: Any) -> dict[str, Any] | None:
    if not isinstance(ref, Mapping):
        return None
    name = ref.get("name") or (output_name(ref["url"]) if ref.get("url") else None)
    return {"fileName": name, "fileSize": ref.get("size"), "contentType": ref.get("content_type"),
            "sha256": ref.get("sha256")}


def result_view(result: Any) -> Any:
    if not isinstance(result, Mapping):
        return result
    out = dict(result)
    if isinstance(out.get("input"), Mapping):
        out["input"] = {k: v for k, v in out["input"].items() if k != "source"}
    return out


def outputs_view(outputs: Any) -> dict[str, str] | None:
    """{kind: file name}; an output renamed since the last release also answers to its old kind."""
    if not isinstance(outputs, Mapping):
        return None
    view = {str(k): output_name(v) for k, v in outputs.items()}
    for kind, old in LEGACY_OUTPUT_KINDS.items():
        if kind in view and old not in view:
            view[old] = view[kind]
    return view


def user_job(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "taskType": job.task_type,
        "status": job.status,
        "priority": job.priority,
        "inputPayload": {camel(k): v for k, v in (job.params or {}).items()},
        "progress": job.progress,
        "progressMessage": job.progress_message,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "errorCode": job.error_code,
        "error": job.last_error,
        "input": input_view(job.input),
        "outputs": outputs_view(job.outputs),
        "result": result_view(job.result),
        "createdAt": _iso(job.created_at),
        "updatedAt": _iso(job.updated_at),
        "runAt": _iso(job.run_at),
        "startedAt": _iso(job.started_at),
        "finishedAt": _iso(job.finished_at),
        "owner": job.owner,
    }
