"""Creating a job: the one way in, for the CLI, the demo and the API alike.

    queue = open_queue(settings)                                    # schema checked
    job = submit(queue, settings, prepare(settings, "geotiff_to_png", "ortho.tif", {"max_size": 2048}))

`prepare()` checks everything that can be checked before anything is written: the task
exists here, its parameters pass the task's own schema (camelCase or snake_case; the error
names the key), priority and attempts are in range, and the input is usable (a readable file
within storage.max_file_size, or a URL the storage rules allow). `submit()` then writes the
job: a local file is stored as the job's input first (the job exists first, so the file has
a home; if storing fails, the job is cancelled with the reason), a URL is queued at once, and
a task that needs an input which is not given yet waits `pending` for its upload (the API).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from geoworker import tasks
from geoworker.errors import BadParams, GeoworkerError, InvalidInput
from geoworker.jobs import Job, JobQueue, Status
from geoworker.storage.registry import backend_class, is_backend_url

PRIORITY_RANGE = (-1_000_000, 1_000_000)
MAX_ATTEMPTS_RANGE = (1, 1000)
MAX_JSON_DEPTH = 64


class SubmissionRefused(GeoworkerError):
    """The job cannot be submitted as asked (a missing file, a URL the storage rules refuse, ...)."""


@dataclass(frozen=True)
class Submission:
    """A job checked and ready to be written."""

    task: tasks.Task
    params: dict[str, Any]
    input: dict[str, Any] | Path | None
    priority: int
    max_attempts: int
    owner: str | None = None


def open_queue(settings, worker_id: str = "cli") -> JobQueue:
    """A JobQueue on the configured database, its schema checked (the embedded one is migrated)."""
    queue = JobQueue.from_settings(settings, worker_id=worker_id, application_name=f"geoworker-{worker_id}")
    queue.check()
    return queue


def prepare(settings, task_name: str, source: str | os.PathLike | None = None,
            params: Mapping[str, Any] | None = None, *, priority: int = 0, max_attempts: int | None = None,
            owner: str | None = None, input_later: bool = False) -> Submission:
    """Check a job before it is written.

    Args:
        source: a local file or a URL (None: the task needs no input, or it comes later).
        input_later: the input will be uploaded (the API): a task that needs one may go without.
    Raises:
        UnknownTask: no such task here. BadParams: a parameter (exc.key names it).
        SubmissionRefused: anything else about the request.
    """
    task = tasks.get(task_name, settings)
    try:
        check_json_safe(params)
    except BadParams as exc:
        raise BadParams(f"{exc.key}: {exc}" if exc.key else str(exc), key=exc.key) from None
    checked = tasks.validate_params(task, params, settings)
    priority = _whole("priority", priority, *PRIORITY_RANGE)
    max_attempts = _whole("max_attempts", settings.retry.max_attempts if max_attempts is None else max_attempts,
                          *MAX_ATTEMPTS_RANGE)
    if task.needs_input and source is None and not input_later:
        raise SubmissionRefused(f"task {task.name} needs an input: geoworker submit FILE|URL --task {task.name}")
    if source is not None and not task.needs_input:
        raise SubmissionRefused(f"task {task.name} takes no input file")
    ref = input_reference(str(source), settings) if source is not None else None
    return Submission(task, checked, ref, priority, max_attempts, owner)


def submit(queue: JobQueue, settings, sub: Submission) -> Job:
    """Write the job: pending while a local file is stored (or an upload is awaited), else queued."""
    common = {"priority": sub.priority, "max_attempts": sub.max_attempts, "owner": sub.owner}
    if isinstance(sub.input, Path):
        job = queue.enqueue(sub.task.name, sub.params, status=Status.PENDING, **common)
        return _store_input(job, sub.input, settings, queue)
    if sub.input is None and sub.task.needs_input:
        return queue.enqueue(sub.task.name, sub.params, status=Status.PENDING, **common)
    return queue.enqueue(sub.task.name, sub.params, input=sub.input, **common)


def input_reference(source: str, settings) -> dict[str, Any] | Path:
    """A URL becomes its reference, a file its checked path.

    URLs are checked against the storage rules now (scheme, allowed hosts, bucket), so that a
    typo is a one-line error here rather than a failed job; addresses are checked by the worker.
    """
    if "://" in source:
        return _url_reference(source, settings)
    path = Path(source)
    if not path.exists():
        raise SubmissionRefused(f"{source}: no such file")
    if not path.is_file():
        raise SubmissionRefused(f"{source}: not a regular file")
    if not os.access(path, os.R_OK):
        raise SubmissionRefused(f"{source}: not readable")
    size, limit = path.stat().st_size, settings.storage.max_file_size
    if size > limit:
        raise SubmissionRefused(f"{source}: {size} bytes is more than storage.max_file_size ({limit} bytes)")
    refusal = backend_class(settings.storage.backend).refuses_local_inputs
    if refusal:
        raise SubmissionRefused(f"storage.backend = \"{settings.storage.backend}\": {refusal}, not from local files")
    return path.resolve()


def _url_reference(source: str, settings) -> dict[str, Any]:
    from geoworker.storage import UrlPolicy  # late: requests, only for URL inputs

    try:
        if not is_backend_url(settings, source):  # s3:// is the s3 backend's to check, https:// the policy's
            UrlPolicy.from_settings(settings).check_url(source)
    except InvalidInput as exc:  # UrlRefused is one
        raise SubmissionRefused(str(exc)) from None
    return {"url": source}


def _store_input(job: Job, path: Path, settings, queue: JobQueue) -> Job:
    """Store the file as the pending job's input, then queue the job; cancel the job if storing fails."""
    from geoworker.storage import open_backend  # late: boto3, only for the s3 backend

    try:
        with open_backend(settings) as backend:
            ref = backend.import_file(job.id, path)
            sidecars = _sidecars(path)
            if sidecars:  # the world file, .aux.xml, .msk, .ovr that GDAL reads beside it travel with it
                ref = backend.import_sidecars(job.id, ref, path.name, sidecars)
    except BaseException as exc:
        reason = str(exc) if isinstance(exc, GeoworkerError) else f"{type(exc).__name__}: {exc}"
        queue.cancel(job.id, reason=f"the input could not be stored: {reason}")
        if isinstance(exc, OSError):
            raise GeoworkerError(f"{path.name}: cannot store the input: {exc.strerror or exc}") from None
        raise
    data = {"name": ref.get("name"), "size": ref.get("size")}
    if ref.get("sidecars"):
        data["sidecars"] = [s["name"] for s in ref["sidecars"]]
    return queue.queue_pending(job.id, ref, data=data)


def _sidecars(path: Path) -> list[Path]:
    from geoworker.processing.read import sidecar_files  # late: rasterio, only when a file is submitted

    return sidecar_files(path)


def _whole(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SubmissionRefused(f"{name} must be a whole number between {lo} and {hi}, got {value!r}")
    return value


def check_json_safe(value: Any) -> None:
    """Refuse what PostgreSQL's jsonb cannot store (NUL characters, NaN, Infinity) and absurd nesting.

    Raises:
        BadParams: naming the top-level key that holds the problem (exc.key).
    """
    stack = [(value, 0, None)]
    while stack:
        item, depth, key = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise BadParams(f"nested more than {MAX_JSON_DEPTH} levels deep", key=key)
        if isinstance(item, str):
            if "\x00" in item:
                raise BadParams("strings must not contain NUL characters", key=key)
            if not _encodable(item):
                raise BadParams("strings must be valid Unicode (no lone surrogates, no undecodable bytes)", key=key)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BadParams("numbers must be finite (no NaN or Infinity)", key=key)
        elif isinstance(item, Mapping):
            for k, sub in item.items():
                top = str(k) if depth == 0 else key
                stack.append((k, depth + 1, top))
                stack.append((sub, depth + 1, top))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, depth + 1, key) for sub in item)


def _encodable(text: str) -> bool:
    # a lone surrogate (from a "\\ud800" escape, or an argv byte that is not UTF-8) has no UTF-8 form
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
