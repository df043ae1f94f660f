"""The plumbing every file task shares: input in, producer, outputs out, checksums.

A file task is a Producer (geoworker.tasks.base): input path + output directory -> files.
`file_task()` wraps one into a job handler: fetch the job's input into its private work
directory, check it before anything decodes it (size, declared type, TIFF signature,
malware scan), run the producer into workdir/out, hand the outputs to the storage backend
(only while the job is still this worker's: `store_files` checks its lease), and record the
sha256 of the input and of every output. The work directory itself is the
child's to create and remove (geoworker.storage.workdir).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from geoworker.storage.stream import sha256_file
from geoworker.tasks.base import Producer, Task, TaskContext, TaskResult
from geoworker.tasks.params import COMMON, Param, Schema, boolean

PRESIGN_URLS = Param("presign_urls", "boolean", "add download URLs valid storage.presign_expiry seconds to the "
                     "result (s3)", boolean("presign_urls"), default=False)
# what every file task takes besides its own parameters
FILE_COMMON = COMMON + Schema((PRESIGN_URLS,))


def file_task(name: str, produce: Producer, params: Schema, outputs: tuple[str, ...], description: str,
              fetch_at: int = 5, store_at: int = 90) -> Task:
    """A Task that runs `produce` on the job's input and stores what it wrote.

    Args:
        fetch_at, store_at: the job's progress (percent) when the producer starts and ends.
    """

    def handler(ctx: TaskContext) -> TaskResult:
        with job_backend(ctx) as backend:
            fetched = fetch_checked(ctx, backend)
            out_dir = Path(ctx.workdir) / "out"
            produced = produce(fetched.path, out_dir, ctx.params, ctx.settings,
                               progress=scaled_progress(ctx, fetch_at, store_at))
            return store(ctx, backend, fetched, out_dir, produced)

    return Task(name, handler, FILE_COMMON + params, description, needs_input=True, outputs=outputs,
                produce=produce)


@contextmanager
def job_backend(ctx: TaskContext) -> Iterator[Any]:
    """The context's storage backend, or one opened (and closed) for this job."""
    if ctx.storage is not None:
        yield ctx.storage
        return
    from geoworker.storage import (
        open_backend,  # late: boto3 and requests only for jobs that need them
    )

    with open_backend(ctx.settings) as backend:
        yield backend


def fetch_checked(ctx: TaskContext, backend):
    """Bring the input into the job's work directory and check it before anything decodes it."""
    from geoworker.storage import check_input  # late, as above

    ctx.progress(1, "fetching the input")
    fetched = backend.fetch(ctx.job, Path(ctx.workdir) / "input")
    ctx.progress(4, "checking the input")
    check_input(fetched.path, ctx.settings.storage, fetched.content_type)
    if fetched.sidecars and ctx.settings.storage.scan_command:
        from geoworker.storage.checks import scan_file  # late, as above

        for sidecar in fetched.sidecars:  # GDAL parses these too
            scan_file(sidecar, ctx.settings.storage.scan_command)
    return fetched


def store(ctx: TaskContext, backend, fetched, out_dir: Path, produced: Mapping[str, Any]) -> TaskResult:
    """Store the produced files; the result is the producer's summary plus input and checksums."""
    files = {kind: out_dir / name for kind, name in (produced.get("outputs") or {}).items() if name}
    summary = {k: v for k, v in produced.items() if k != "outputs"}
    summary["input"] = input_doc(fetched)
    if not files:
        summary["sha256"] = {"input": fetched.sha256, "outputs": {}}
        return TaskResult(result=summary)
    ctx.progress(92, "storing the outputs")
    outputs, checksums = store_files(ctx, backend, files)
    summary["sha256"] = {"input": fetched.sha256, "outputs": checksums}
    if missing := sorted(set(files) - set(outputs)):
        summary["not_uploaded"] = missing
    if wants_download_urls(ctx.params):
        urls = {kind: backend.presign(ref) for kind, ref in outputs.items()}
        if any(urls.values()):
            summary["download_urls"] = urls
            summary["download_urls_expire_in"] = ctx.settings.storage.presign_expiry
    ctx.progress(99, "outputs stored")
    return TaskResult(outputs=outputs, result=summary)


def store_files(ctx: TaskContext, backend, files: Mapping[str, Path]) -> tuple[dict[str, str], dict[str, str]]:
    """Hand the files to the storage backend, if the job is still this worker's; (references, sha256s).

    The lease is checked last, right before anything is written: a worker whose heartbeats
    have failed for about stale_after may already have lost the job to another host, which
    writes the same outputs; a late copy must never replace them (ctx.check_lease raises).
    """
    checksums = {kind: sha256_file(path) for kind, path in files.items() if not path.is_dir()}
    ctx.check_lease()
    return backend.store_outputs(ctx.job, files), checksums


def wants_download_urls(params: Mapping[str, Any]) -> bool:
    # jobs queued before parameters were stored snake_case may say presignUrls, or "true"
    value = params.get("presign_urls", params.get("presignUrls", False))
    return value in (True, 1, "true", "1", "yes")


def input_doc(fetched) -> dict[str, Any]:
    doc = {"name": fetched.path.name, "size": fetched.size, "sha256": fetched.sha256, "source": fetched.source}
    if fetched.sidecars:
        doc["sidecars"] = [p.name for p in fetched.sidecars]
    return doc


def scaled_progress(ctx: TaskContext, low: int, high: int):
    """Map a producer's 0-100 onto [low, high] of the job's progress."""

    def report(percent: int, message: str) -> None:
        ctx.progress(low + (high - low) * max(0, min(100, percent)) // 100, message)

    return report
