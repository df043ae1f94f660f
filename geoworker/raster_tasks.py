"""The raster tasks: geotiff_to_png and geotiff_info, wired to the pipeline and storage.

Each job fetches its input into its private work directory (ctx.workdir/input), checks it
before anything decodes it (size, declared type, TIFF signature, malware scan), runs the
pipeline into ctx.workdir/out and hands the outputs to the storage backend. The result
carries the sha256 of the input and of every output. The work directory itself is the
caller's to create and remove (geoworker.storage.workdir).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from geoworker.tasks import TaskContext, TaskResult, task


def processing_defaults(settings) -> dict[str, Any]:
    """The [processing] section plus the storage limits the pipeline enforces, as Options defaults."""
    p = settings.processing
    return {
        "max_image_size": p.max_image_size,
        "thumbnail_size": p.thumbnail_size,
        "generate_thumbnails": p.generate_thumbnails,
        "compression_quality": p.compression_quality,
        "coordinate_system": p.coordinate_system,
        "stretch": p.stretch,
        "percentiles": list(p.percentiles),
        "resampling": p.resampling,
        "max_file_size": settings.storage.max_file_size,
        "validate_headers": settings.storage.validate_headers,
    }


def options_for(settings, params: Mapping[str, Any]):
    from geoworker.processing import Options

    return Options.from_mapping(processing_defaults(settings), params)


@contextmanager
def _backend(ctx: TaskContext) -> Iterator[Any]:
    """The context's storage backend, or one opened (and closed) for this job."""
    if ctx.storage is not None:
        yield ctx.storage
        return
    from geoworker.storage import open_backend

    with open_backend(ctx.settings) as backend:
        yield backend


def _fetch_checked(ctx: TaskContext, backend):
    """Bring the input into the job's work directory and check it before anything decodes it."""
    from geoworker.storage import check_input

    ctx.progress(1, "fetching the input")
    fetched = backend.fetch(ctx.job, Path(ctx.workdir) / "input")
    ctx.progress(4, "checking the input")
    check_input(fetched.path, ctx.settings.storage, fetched.content_type)
    return fetched


def _input_doc(fetched) -> dict[str, Any]:
    return {"name": fetched.path.name, "size": fetched.size, "sha256": fetched.sha256, "source": fetched.source}


def _wants_download_urls(params: Mapping[str, Any]) -> bool:
    value = params.get("presign_urls", params.get("presignUrls", False))
    return value in (True, 1, "true", "1", "yes")


def _progress_scale(ctx: TaskContext, low: int, high: int):
    """Map the pipeline's 0-100 onto [low, high] of the job's progress."""

    def report(percent: int, message: str) -> None:
        ctx.progress(low + (high - low) * max(0, min(100, percent)) // 100, message)

    return report


@task("geotiff_to_png", needs_input=True)
def geotiff_to_png(ctx: TaskContext) -> TaskResult:
    """Turn a GeoTIFF into a georeferenced PNG, thumbnail, world file, .prj and metadata JSON."""
    from geoworker.processing import process_file
    from geoworker.storage.stream import sha256_file

    options = options_for(ctx.settings, ctx.params)
    with _backend(ctx) as backend:
        fetched = _fetch_checked(ctx, backend)
        out_dir = Path(ctx.workdir) / "out"
        result = process_file(fetched.path, out_dir, options, progress=_progress_scale(ctx, 5, 90))
        files = {kind: out_dir / name for kind, name in result["outputs"].items() if name}
        ctx.progress(92, "storing the outputs")
        checksums = {kind: sha256_file(path) for kind, path in files.items()}
        outputs = backend.store_outputs(ctx.job, files)
        summary = {k: v for k, v in result.items() if k != "outputs"}
        summary["input"] = _input_doc(fetched)
        summary["sha256"] = {"input": fetched.sha256, "outputs": checksums}
        if missing := sorted(set(files) - set(outputs)):
            summary["not_uploaded"] = missing
        if _wants_download_urls(ctx.params):
            urls = {kind: backend.presign(ref) for kind, ref in outputs.items()}
            if any(urls.values()):
                summary["download_urls"] = urls
                summary["download_urls_expire_in"] = ctx.settings.storage.presign_expiry
        ctx.progress(99, "outputs stored")
    return TaskResult(outputs=outputs, result=summary)


@task("geotiff_info", needs_input=True)
def geotiff_info(ctx: TaskContext) -> TaskResult:
    """Read a GeoTIFF's metadata (no image output)."""
    from geoworker.processing import describe_file

    options = options_for(ctx.settings, ctx.params)
    with _backend(ctx) as backend:
        fetched = _fetch_checked(ctx, backend)
    ctx.progress(10, "reading metadata")
    metadata = describe_file(fetched.path, options)
    return TaskResult(result={"metadata": metadata, "input": _input_doc(fetched),
                              "sha256": {"input": fetched.sha256, "outputs": {}}})
