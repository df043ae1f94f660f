"""The raster tasks: geotiff_to_png (a web image and its sidecars) and geotiff_info (metadata only).

Their parameters are the pipeline's Options (geoworker.processing.options), minus the
operator's limits (max_file_size, validate_headers), which no job may raise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from geoworker.tasks.base import Progress
from geoworker.tasks.files import file_task
from geoworker.tasks.params import Param, Schema


def processing_defaults(settings) -> dict[str, Any]:
    """The [processing] section plus the storage limits the pipeline enforces, as Options defaults."""
    from geoworker.processing.options import defaults_from_settings  # late: rasterio, as below

    return defaults_from_settings(settings)


def options_for(settings, params: Mapping[str, Any]):
    """The pipeline's Options for a job: the operator's defaults, then the job's params."""
    from geoworker.processing import Options  # late: rasterio, only for the raster tasks

    return Options.from_mapping(processing_defaults(settings), params)


def _option(name: str):
    """A Param check that runs the pipeline's own rule for one Options field."""

    def check(value: Any, settings: Any) -> Any:
        from geoworker.processing.options import check_option  # late, as above

        return check_option(name, value)

    return check


def _default(config_key: str):
    return lambda s: getattr(s.processing, config_key)


def _all_options(params: Mapping[str, Any], settings: Any) -> None:
    options_for(settings, params)  # rules that span keys, should any exist


OPTIONS = Schema((
    Param("max_size", "integer", "longest side of the image in pixels (16-16384)", _option("max_size"),
          default=_default("max_image_size"), main=True),
    Param("output_format", "choice", "image format", _option("output_format"), choices=("png", "jpeg", "webp"),
          default="png", main=True),
    Param("coordinate_system", "string", 'CRS of the image ("EPSG:4326", or "native" to keep the source grid)',
          _option("coordinate_system"), default=_default("coordinate_system"), main=True),
    Param("stretch", "choice", "how values become grey levels", _option("stretch"),
          choices=("auto", "none", "minmax", "percentile"), default=_default("stretch"), main=True),
    Param("percentiles", "string", "low and high percentile of the percentile stretch, e.g. [2, 98]",
          _option("percentiles"), default=lambda s: list(s.processing.percentiles)),
    Param("bands", "string", "1 or 3 band numbers to render, e.g. [4, 3, 2]", _option("bands")),
    Param("colormap", "string", "colour map for one band (gray, viridis, terrain, ...)", _option("colormap")),
    Param("resampling", "choice", "how pixels are averaged down", _option("resampling"),
          choices=("nearest", "bilinear", "cubic", "cubic_spline", "lanczos", "average", "mode", "gauss", "rms"),
          default=_default("resampling")),
    Param("compression_quality", "integer", "JPEG/WebP quality (1-100)", _option("compression_quality"),
          default=_default("compression_quality")),
    Param("thumbnail_size", "integer", "longest side of the thumbnail (0: none)", _option("thumbnail_size"),
          default=_default("thumbnail_size")),
    Param("generate_thumbnails", "boolean", "write a thumbnail", _option("generate_thumbnails"),
          default=_default("generate_thumbnails")),
    Param("rpc_height", "number", "height (m) at which an RPC-only image is orthorectified (default: GDAL's)",
          _option("rpc_height")),
    Param("max_pixels", "integer", "refuse inputs declaring more pixels (can only lower processing.max_pixels)",
          _option("max_pixels"), default=_default("max_pixels")),
    Param("max_decoded_bytes", "integer", "refuse inputs larger once decoded (can only lower the operator's limit)",
          _option("max_decoded_bytes"), default=_default("max_decoded_bytes")),
), check_all=_all_options)


def options_named(*names: str) -> tuple[Param, ...]:
    """Some of the PNG task's parameters, for tasks that render the same way (the map products)."""
    by_name = {p.name: p for p in OPTIONS.params}
    return tuple(by_name[n] for n in names)


def produce_png(src: Path, out_dir: Path, params: Mapping[str, Any], settings: Any,
                progress: Progress | None = None) -> dict[str, Any]:
    from geoworker.processing import process_file  # late, as above

    return process_file(src, out_dir, options_for(settings, params), progress=progress)


def produce_info(src: Path, out_dir: Path, params: Mapping[str, Any], settings: Any,
                 progress: Progress | None = None) -> dict[str, Any]:
    from geoworker.processing import describe_file  # late, as above

    if progress is not None:
        progress(10, "reading metadata")
    return {"outputs": {}, "metadata": describe_file(src, options_for(settings, params))}


PNG_OUTPUTS = ("image", "thumbnail", "world_file", "prj", "aux_xml", "metadata")

TASKS = (
    file_task("geotiff_to_png", produce_png, OPTIONS, PNG_OUTPUTS,
              "Turn a GeoTIFF into a georeferenced PNG, thumbnail, world file, .prj and metadata JSON."),
    file_task("geotiff_info", produce_info, OPTIONS, (), "Read a GeoTIFF's metadata (no image output).",
              store_at=10),
)
