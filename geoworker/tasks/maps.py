"""The map products: geotiff_to_cog (a full-resolution Cloud-Optimized GeoTIFF) and geotiff_to_tiles
(a Web-Mercator tile pyramid in PMTiles, with its TileJSON). The work is in
geoworker.processing.cog and .tiles; the API serves the tiles (api/tiles.py).

They render (thumbnail, tiles) with the PNG task's band, stretch, palette and nodata rules,
so their parameters for that are the PNG task's own; each adds a few of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from geoworker.tasks.base import Progress
from geoworker.tasks.files import file_task
from geoworker.tasks.params import Param, Schema, boolean
from geoworker.tasks.raster import options_named, processing_defaults

RENDERING = ("stretch", "percentiles", "bands", "colormap", "compression_quality")


def _check(key: str):
    """A Param check running the map products' own parsing of one key (BadParams names it)."""

    def check(value: Any, settings: Any) -> Any:
        from geoworker.processing import map_options  # late: rasterio, only for the raster tasks

        return {"compression": map_options.check_compression, "tiling_scheme": map_options.check_tiling_scheme,
                "zoom": map_options.check_zoom, "tile_format": map_options.check_tile_format}[key](value)

    return check


def cog_options(settings, params: Mapping[str, Any]):
    from geoworker.processing.map_options import CogOptions  # late, as above

    return CogOptions.from_mapping(processing_defaults(settings), params)


def tile_options(settings, params: Mapping[str, Any]):
    from geoworker.processing.map_options import TileOptions  # late, as above

    return TileOptions.from_mapping(processing_defaults(settings), params)


COG_PARAMS = Schema((
    Param("compression", "choice", "jpeg for 8-bit RGB(A), deflate otherwise (lossless) unless given",
          _check("compression"), choices=("auto", "jpeg", "webp", "deflate", "lzw", "zstd"), default="auto", main=True),
    Param("tiling_scheme", "choice", "native grid, or GoogleMapsCompatible for a web-optimized COG",
          _check("tiling_scheme"), choices=("native", "GoogleMapsCompatible"), default="native", main=True),
    *options_named("thumbnail_size", "generate_thumbnails", *RENDERING),
), check_all=lambda params, settings: cog_options(settings, params))

TILE_PARAMS = Schema((
    Param("zoom", "string", "zoom levels MIN-MAX (default: as gdal2tiles chooses)", _check("zoom"), main=True),
    Param("tile_format", "choice", "tile image format (png keeps transparency)", _check("tile_format"),
          choices=("png", "webp", "jpeg"), default="png", main=True),
    Param("tile_dir", "boolean", "also write tiles/{z}/{x}/{y} for static hosting", boolean("tile_dir"),
          default=False),
    *options_named(*RENDERING),
), check_all=lambda params, settings: tile_options(settings, params))


def produce_cog(src: Path, out_dir: Path, params: Mapping[str, Any], settings: Any,
                progress: Progress | None = None) -> dict[str, Any]:
    from geoworker.processing.cog import make_cog  # late, as above

    return make_cog(src, out_dir, cog_options(settings, params), progress=progress)


def produce_tiles(src: Path, out_dir: Path, params: Mapping[str, Any], settings: Any,
                  progress: Progress | None = None) -> dict[str, Any]:
    from geoworker.processing.tiles import make_tiles  # late, as above

    return make_tiles(src, out_dir, tile_options(settings, params), progress=progress)


TASKS = (
    file_task("geotiff_to_cog", produce_cog, COG_PARAMS, ("cog", "thumbnail", "metadata"),
              "Turn a GeoTIFF into a full-resolution Cloud-Optimized GeoTIFF, with thumbnail and metadata JSON."),
    file_task("geotiff_to_tiles", produce_tiles, TILE_PARAMS, ("pmtiles", "tilejson", "tile_dir"),
              "Cut a GeoTIFF into a Web-Mercator tile pyramid: PMTiles archive and TileJSON."),
)
