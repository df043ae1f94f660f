"""The raster tasks: geotiff_to_png and geotiff_info, wired to the pipeline and storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from geoworker.errors import InvalidInput
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


def _local_input(ctx: TaskContext) -> Path:
    ref = ctx.job.input or {}
    path = ref.get("path") if isinstance(ref, dict) else None
    if not path:
        raise InvalidInput("the job has no input file")
    if not Path(path).is_file():
        raise InvalidInput(f"the input file {Path(path).name} does not exist (any more)")
    return Path(path)


def _progress_scale(ctx: TaskContext, low: int, high: int):
    """Map the pipeline's 0-100 onto [low, high] of the job's progress."""

    def report(percent: int, message: str) -> None:
        ctx.progress(low + (high - low) * max(0, min(100, percent)) // 100, message)

    return report


@task("geotiff_to_png", needs_input=True)
def geotiff_to_png(ctx: TaskContext) -> TaskResult:
    """Turn a GeoTIFF into a georeferenced PNG, thumbnail, world file, .prj and metadata JSON."""
    from geoworker.processing import process_file

    options = options_for(ctx.settings, ctx.params)
    src = _local_input(ctx)
    out_dir = Path(ctx.settings.storage.root) / "jobs" / ctx.job.id / "output"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = process_file(src, out_dir, options, progress=_progress_scale(ctx, 5, 95))
    outputs = {kind: str(out_dir / name) for kind, name in result["outputs"].items() if name}
    return TaskResult(outputs=outputs, result={k: v for k, v in result.items() if k != "outputs"})


@task("geotiff_info", needs_input=True)
def geotiff_info(ctx: TaskContext) -> TaskResult:
    """Read a GeoTIFF's metadata (no image output)."""
    from geoworker.processing import describe_file

    options = options_for(ctx.settings, ctx.params)
    ctx.progress(10, "reading metadata")
    return TaskResult(result={"metadata": describe_file(_local_input(ctx), options)})
