"""Task geotiff_to_tiles: a Web-Mercator XYZ tile pyramid in one PMTiles v3 archive, and its TileJSON.

Tiles are 256 px on the GoogleMapsCompatible matrix (OGC WebMercatorQuad, morecantile),
rows counted from the top as OSM, Leaflet and MapLibre count them. The zooms are the
ones gdal2tiles chooses unless `zoom=MIN-MAX` says otherwise.

How the pixels are made, in bounded memory, whatever the zoom:

1. The deepest zoom is cut into blocks of up to 8 x 8 tiles (2048 px). Each block reads
   only the source window under it, area-averaged by GDAL to about the block's
   resolution (nearest for palettes and categorical rasters), renders it with the PNG
   task's own rules (pipeline.choose_style once per file, style.apply_style per block: bands,
   file-wide stretch, colormap,
   palette, nodata) and places the rendered pixels on the Web-Mercator grid with a
   nearest-neighbour warp: the averaged pixels are already at the tile resolution, so
   the warp only shifts and turns them by a fraction of a pixel (a full GDAL `average`
   warp measured 3-4 s on the 100 MB orthophoto, against 1 s for this).
2. Within a block, each zoom above is the one below halved (2 x 2 alpha-weighted
   average, or nearest for palettes), as gdal2tiles builds its overview tiles, down to
   the block's own tile; zooms above the blocks are assembled from those tiles in
   quadtree order, holding at most four tiles per level.
3. Blocks run in a small thread pool (GDAL, numpy and the deflate release the GIL), each
   thread with its own dataset handle; encoded tiles go to a spool file and are written
   into the archive sorted by tile id at the end (a clustered archive).

Memory: per thread one block (its source window, 2048^2 RGBA and the halvings), the
spool's index (20 bytes a tile), never a whole zoom level.
"""

from __future__ import annotations

import io
import json
from array import array
import math
import os
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform as transform_points, transform_bounds
from rasterio.windows import Window

from geoworker.errors import TooLarge, Unsupported
from geoworker.processing import encode, georef, read, render, style
from geoworker.processing.map_options import MAX_ZOOM, TileOptions
from geoworker.processing.pipeline import (READ_THREADS, Progress, Run, Source, choose_style, detects_classes,
                                           gdal_errors_are_input_errors, open_source, sanitise_stem, statistics)

TILE = 256
BLOCK_TILES = 8  # a block is up to 8 x 8 tiles of the deepest zoom (2048 px square)
THREADS = min(2, os.cpu_count() or 1)
MAX_TILES = 1_000_000  # per job: the archive index and the spool stay small; a bigger pyramid is a mistake
EARTH = 2 * math.pi * 6378137.0  # the Web-Mercator square's side, metres
HALF = EARTH / 2
MAX_LAT = 85.0511287798066  # the Web-Mercator square's edge, degrees
WEB_MERCATOR = CRS.from_epsg(3857)
TILE_TYPES = {"png": 2, "jpeg": 3, "webp": 4}  # PMTiles v3 tile type codes


# --- the tile matrix: pure arithmetic -------------------------------------------


def resolution(zoom: int) -> float:
    """Args: zoom: a level. Returns: metres per pixel of the GoogleMapsCompatible matrix at that level."""
    return EARTH / TILE / 2 ** zoom


def zoom_for_pixel_size(size: float) -> int:
    """gdal2tiles' rule: the deepest zoom whose pixels are not finer than `size` metres (no upsampling).

    Args:
        size: a pixel size in Web-Mercator metres.
    Returns:
        the zoom, 0 .. MAX_ZOOM.
    """
    for z in range(MAX_ZOOM + 1):
        if size > resolution(z):
            return max(0, z - 1)
    return MAX_ZOOM


def default_zooms(pixel_size: float, width: int, height: int) -> tuple[int, int]:
    """The zooms gdal2tiles picks for a raster warped to Web Mercator.

    Args:
        pixel_size: the warped raster's pixel size (GDAL's suggested warp output), metres.
        width, height: its size in pixels.
    Returns:
        (min zoom: the whole raster fits in one tile, max zoom: not finer than the source).
    """
    lo = zoom_for_pixel_size(pixel_size * max(width, height) / TILE)
    hi = max(lo, zoom_for_pixel_size(pixel_size))
    return min(lo, hi), hi


def lonlat_to_metres(lon: float, lat: float) -> tuple[float, float]:
    """Args: lon, lat: degrees (lat within +-MAX_LAT). Returns: Web-Mercator (x, y) in metres."""
    x = lon * HALF / 180.0
    y = math.log(math.tan((90.0 + lat) * math.pi / 360.0)) * 6378137.0
    return x, y


def tile_range(bounds: tuple[float, float, float, float], zoom: int) -> tuple[int, int, int, int]:
    """The tiles that meet a Web-Mercator box at one zoom.

    Args:
        bounds: (left, bottom, right, top) in metres.
        zoom: the level.
    Returns:
        (x0, y0, x1, y1), inclusive, rows counted from the top.
    """
    left, bottom, right, top = bounds
    size = TILE * resolution(zoom)
    last = 2 ** zoom - 1
    eps = size * 1e-9  # a box that ends exactly on a tile edge does not reach into the next tile

    def clamp(v: float) -> int:
        return min(last, max(0, int(math.floor(v))))

    return (clamp((left + HALF) / size), clamp((HALF - top) / size),
            clamp((right - eps + HALF) / size), clamp((HALF - bottom - eps) / size))


def tile_transform(zoom: int, x: int, y: int) -> Affine:
    """Args: zoom, x, y: a tile. Returns: the affine transform of its 256 px grid in EPSG:3857."""
    res = resolution(zoom)
    return Affine(res, 0.0, -HALF + x * TILE * res, 0.0, -res, HALF - y * TILE * res)


def pmtiles_tile_id(zoom: int, x: int, y: int) -> int:
    """Args: a tile. Returns: its PMTiles v3 tile id (the Hilbert order the archive is sorted by)."""
    from pmtiles.tile import zxy_to_tileid

    return zxy_to_tileid(zoom, x, y)


def quadtree_order(blocks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Blocks of one zoom in Morton (quadtree depth-first) order, the order parents are assembled in."""
    def key(b: tuple[int, int]) -> int:
        x, y, k = b[0], b[1], 0
        for bit in range(32):
            k |= ((y >> bit) & 1) << (2 * bit + 1) | ((x >> bit) & 1) << (2 * bit)
        return k

    return sorted(blocks, key=key)


# --- pure pixel functions -----------------------------------------------------------


def halve(image: np.ndarray, nearest: bool) -> np.ndarray:
    """One zoom up: each 2 x 2 pixels become one.

    Colours are averaged weighted by alpha (a transparent pixel adds no colour) and alpha
    is averaged: Pillow's reduce() over premultiplied alpha, in C (the same in numpy took
    3-4x longer); nearest takes the lower-right pixel as GDAL does.

    Args:
        image: (h, w, c) uint8 with alpha last (c = 2 or 4); h and w even.
        nearest: pick instead of averaging (palettes, categorical rasters).
    Returns:
        a new (h/2, w/2, c) uint8 array.
    """
    if nearest:
        return np.ascontiguousarray(image[1::2, 1::2])
    if not image[..., -1].any():
        return np.zeros((image.shape[0] // 2, image.shape[1] // 2, image.shape[2]), np.uint8)
    img = Image.fromarray(image, "RGBA" if image.shape[2] == 4 else "LA")
    return np.asarray(img.reduce(2))


def encode_tile(tile: np.ndarray, fmt: str, quality: int) -> bytes:
    """One tile as png (lossless; alpha only where something is transparent), webp or jpeg.

    Args:
        tile: (256, 256, c) uint8 with alpha last (c = 2 grey, 4 colour).
        fmt: png | webp | jpeg.
        quality: 1-100 for webp and jpeg.
    Returns:
        the encoded bytes.
    """
    opaque = tile[..., -1].min() == 255
    pixels = tile[..., :-1] if opaque else tile
    if fmt == "png":
        return encode.png_bytes(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    img = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    out = io.BytesIO()
    if fmt == "jpeg":
        encode.flatten_alpha(img).save(out, format="JPEG", quality=quality)
    else:
        img.convert("RGBA" if img.mode in ("LA", "RGBA") else "RGB").save(out, format="WEBP", quality=quality,
                                                                         method=2)
    return out.getvalue()


# --- the pyramid's plan ----------------------------------------------------------------


@dataclass(frozen=True)
class Footprint:
    """Where a source lies on the Web-Mercator square, clipped to it."""

    # (left, bottom, right, top) metres, clipped to the square: one box, or two for a raster
    # across the antimeridian (its part east of -180 and its part west of 180 degrees)
    boxes: tuple[tuple[float, float, float, float], ...]
    lonlat: tuple[float, float, float, float]  # (west, south, east, north) degrees; west > east across 180
    center: tuple[float, float]  # (lon, lat) degrees of the source's middle

    @property
    def across_antimeridian(self) -> bool:
        return len(self.boxes) == 2

    @property
    def continuous(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) with continuous longitudes (east above 180 across the antimeridian),
        as the PNG task's bounds_wgs84: what a map fits its view to."""
        west, south, east, north = self.lonlat
        return (west, south, east + 360.0, north) if west > east else self.lonlat

    @property
    def published(self) -> tuple[float, float, float, float]:
        """The bounds for TileJSON and the PMTiles header: across 180 degrees the whole width, since
        map libraries (Leaflet, MapLibre) request no tile at all for a box whose west exceeds its east."""
        west, south, east, north = self.lonlat
        return (-180.0, south, 180.0, north) if west > east else self.lonlat


@dataclass(frozen=True)
class Pyramid:
    """What to cut: zooms, where the data is, and the blocks of the deepest zoom."""

    minzoom: int
    maxzoom: int
    block_zoom: int  # the zoom of one block's top tile
    place: Footprint  # where the data is: its box(es) in metres, its bounds and middle in degrees

    def tile_ranges(self, zoom: int) -> list[tuple[int, int, int, int]]:
        """(x0, y0, x1, y1), inclusive, of each box at `zoom`."""
        return [tile_range(box, zoom) for box in self.place.boxes]

    def meets(self, zoom: int, x: int, y: int) -> bool:
        """Whether tile (zoom, x, y) meets the data's box(es)."""
        return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in self.tile_ranges(zoom))

    def tiles_at(self, zoom: int) -> list[tuple[int, int]]:
        """Every tile of `zoom` that meets the data's box(es), once each, in quadtree order."""
        found = {(x, y) for x0, y0, x1, y1 in self.tile_ranges(zoom)
                 for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)}
        return quadtree_order(sorted(found))

    def tile_count(self) -> int:
        """An upper bound of the number of tiles (every tile of the bounding boxes at every zoom)."""
        return sum((x1 - x0 + 1) * (y1 - y0 + 1)
                   for z in range(self.minzoom, self.maxzoom + 1) for x0, y0, x1, y1 in self.tile_ranges(z))

    def children(self, zoom: int, x: int, y: int) -> list[tuple[int, int]]:
        """The tiles of zoom + 1 under (zoom, x, y) that meet the data's box(es), in quadtree order."""
        return [(2 * x + dx, 2 * y + dy) for dy in (0, 1) for dx in (0, 1) if self.meets(zoom + 1, 2 * x + dx, 2 * y + dy)]

    def blocks(self) -> list[tuple[int, int]]:
        """The block tiles (at block_zoom) in the order the quadtree assembly consumes them."""
        out: list[tuple[int, int]] = []

        def visit(z: int, x: int, y: int) -> None:
            if z == self.block_zoom:
                out.append((x, y))
                return
            for cx, cy in self.children(z, x, y):
                visit(z + 1, cx, cy)

        for x, y in self.tiles_at(self.minzoom):
            visit(self.minzoom, x, y)
        return out


def footprint(source: Source) -> Footprint:
    """The source's box in Web-Mercator metres and in degrees, clipped to the Web-Mercator square.

    A source across the antimeridian (a UTM zone 60 or 1 scene, a Pacific mosaic) has two
    boxes, one each side of 180 degrees, so that its tiles are cut on both sides and nowhere
    in between.

    Raises:
        Unsupported: no map CRS, or the raster lies wholly beyond +-85.05 degrees of latitude.
    """
    geo, ds = source.geo, source.ds
    if geo.crs is None or geo.kind == "local":
        raise Unsupported("the file has no map coordinate system, so it cannot be placed on Web-Mercator tiles")
    left, bottom, right, top = georef.grid_bounds(geo.transform, ds.width, ds.height)
    try:
        west, south, east, north = transform_bounds(geo.crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
        (clon,), (clat,) = transform_points(geo.crs, "EPSG:4326", [(left + right) / 2], [(bottom + top) / 2])
    except georef.PROJ_ERRORS as exc:
        raise Unsupported(f"the file's extent cannot be projected to longitude/latitude: {str(exc)[:200]}") from None
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise Unsupported("the file's extent cannot be projected to longitude/latitude")
    south, north = max(south, -MAX_LAT), min(north, MAX_LAT)
    if south >= north:
        raise Unsupported(f"the file lies wholly beyond {MAX_LAT:.2f} degrees of latitude, outside the "
                          "Web-Mercator square: no map tile can show it")
    west, east = max(west, -180.0), min(east, 180.0)
    spans = [(west, 180.0), (-180.0, east)] if west > east else [(west, east)]
    boxes = tuple((*lonlat_to_metres(w, south), *lonlat_to_metres(e, north)) for w, e in spans)
    if not (math.isfinite(clon) and math.isfinite(clat)):  # the middle of the box, across 180 degrees too
        clon = ((west + east + (360.0 if west > east else 0.0)) / 2 + 180.0) % 360.0 - 180.0
        clat = (south + north) / 2
    return Footprint(boxes, (west, south, east, north), (clon, min(max(clat, south), north)))


def warped_pixel_size(source: Source, place: Footprint) -> tuple[float, int, int]:
    """GDAL's suggested Web-Mercator pixel size and size for the source (what gdal2tiles' VRT gets).

    Falls back to the local pixel size at the source's middle when GDAL cannot suggest one
    (a raster reaching a pole) or suggests a strip around the world (across the antimeridian).
    """
    from rasterio.warp import calculate_default_transform

    geo, ds = source.geo, source.ds
    left, bottom, right, top = georef.grid_bounds(geo.transform, ds.width, ds.height)
    try:
        if geo.rotated or place.across_antimeridian:
            raise ValueError("GDAL's suggestion does not apply")
        t, w, h = calculate_default_transform(geo.crs, WEB_MERCATOR, ds.width, ds.height, left=left, bottom=bottom,
                                              right=right, top=top)
        if math.isfinite(t.a) and t.a > 0 and HALF * 2 > t.a * max(w, h) * 0.5:
            return abs(t.a), w, h
    except (ValueError, *georef.PROJ_ERRORS):
        pass
    cx, cy = lonlat_to_metres(*place.center)
    size = 1.0 / _source_pixels_per_metre(source, cx, cy)
    width = sum(box[2] - box[0] for box in place.boxes)
    height = place.boxes[0][3] - place.boxes[0][1]
    return size, max(1, round(width / size)), max(1, round(height / size))


def _source_pixels_per_metre(source: Source, x: float, y: float) -> float:
    """How many source pixels one Web-Mercator metre spans around (x, y) (square root of the area ratio)."""
    d = 1.0
    xs, ys = transform_points(WEB_MERCATOR, source.geo.crs, [x, x + d, x], [y, y, y + d])
    inv = ~source.geo.transform
    (c0, r0), (c1, r1), (c2, r2) = (inv * (xs[i], ys[i]) for i in range(3))
    det = abs((c1 - c0) * (r2 - r0) - (c2 - c0) * (r1 - r0))
    if not math.isfinite(det) or det <= 0:
        raise Unsupported("the file's coordinates cannot be projected to Web Mercator around its centre")
    return math.sqrt(det) / d


def plan_pyramid(source: Source, zoom: tuple[int, int] | None) -> Pyramid:
    """Zooms (gdal2tiles' or the caller's), the clipped box and the block zoom.

    Raises:
        Unsupported: nothing of the file is inside the Web-Mercator square.
        TooLarge: the zooms would make more than MAX_TILES tiles.
    """
    place = footprint(source)
    if zoom is None:
        size, w, h = warped_pixel_size(source, place)
        zoom = default_zooms(size, w, h)
    lo, hi = zoom
    block_zoom = max(lo, hi - int(math.log2(BLOCK_TILES)))
    pyramid = Pyramid(lo, hi, block_zoom, place)
    count = pyramid.tile_count()
    if count > MAX_TILES:
        raise TooLarge(f"zoom {lo}-{hi} would make up to {count} tiles for this file (at most {MAX_TILES}): "
                       "choose a lower maximum zoom")
    return pyramid


# --- one block: read, render, warp, halve ----------------------------------------------


@dataclass
class _Context:
    """What every block needs; handles are per thread (GDAL datasets are not thread-safe)."""

    source: Source
    plan: read.BandPlan
    stats: list
    options: TileOptions
    pyramid: Pyramid
    run: Run
    categorical: bool
    look: style.Style
    handles: threading.local
    opened: list

    def handle(self) -> rasterio.DatasetReader:
        ds = getattr(self.handles, "ds", None)
        if ds is None:
            with read.gdal_env():
                ds = rasterio.open(self.source.path, driver="GTiff")
            self.handles.ds = ds
            self.opened.append(ds)
        return ds


def _source_window(ctx: _Context, dst: tuple[float, float, float, float]) -> Window | None:
    """The source pixels under a Web-Mercator box (2 px of margin), or None when none are."""
    geo, ds = ctx.source.geo, ctx.source.ds
    try:
        left, bottom, right, top = transform_bounds(WEB_MERCATOR, geo.crs, *dst, densify_pts=21)
        corners = [~geo.transform * (x, y) for x in (left, right) for y in (bottom, top)]
        cols, rows = [c for c, _ in corners], [r for _, r in corners]
        if not all(math.isfinite(v) for v in cols + rows):
            raise ValueError("not finite")
    except (ValueError, *georef.PROJ_ERRORS):
        return Window(0, 0, ds.width, ds.height)  # cannot tell: read it all (the warp still places it right)
    c0, c1 = max(0, math.floor(min(cols)) - 2), min(ds.width, math.ceil(max(cols)) + 2)
    r0, r1 = max(0, math.floor(min(rows)) - 2), min(ds.height, math.ceil(max(rows)) + 2)
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _render_block(ctx: _Context, zoom: int, x0: int, y0: int, size: int) -> np.ndarray | None:
    """The deepest zoom's pixels of one block: (size, size, c + 1) uint8 with alpha, or None if empty."""
    dst_transform = tile_transform(zoom, x0, y0)
    res = resolution(zoom)
    box = (dst_transform.c, dst_transform.f - size * res, dst_transform.c + size * res, dst_transform.f)
    window = _source_window(ctx, box)
    if window is None:
        return None
    geo = ctx.source.geo
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    try:
        factor = _source_pixels_per_metre(ctx.source, cx, cy) * res  # source pixels per tile pixel
    except Unsupported:
        factor = 1.0
    factor = max(1.0, factor)
    shape = (max(1, math.ceil(window.height / factor)), max(1, math.ceil(window.width / factor)))
    ds = ctx.handle()
    data, valid = read.read_window(ds, ctx.plan, window, shape, "nearest" if ctx.categorical else "average")
    if valid is not None and not valid.any():
        return None
    bands, valid = style.apply_style(ctx.look, data, valid)  # the file's style, decided once
    del data
    alpha = np.full(shape, 255, np.uint8) if valid is None else np.multiply(valid, 255, dtype=np.uint8)
    rendered = np.concatenate([bands, alpha[None]])
    del bands, alpha
    src_transform = (geo.transform @ Affine.translation(window.col_off, window.row_off)
                     @ Affine.scale(window.width / shape[1], window.height / shape[0]))
    out = np.zeros((rendered.shape[0], size, size), np.uint8)
    reproject(rendered, out, src_transform=src_transform, src_crs=geo.crs, dst_transform=dst_transform,
              dst_crs=WEB_MERCATOR, resampling=Resampling.nearest, num_threads=1, init_dest_nodata=False)
    if not out[-1].any():
        return None
    return np.ascontiguousarray(np.moveaxis(out, 0, -1))


@dataclass
class _BlockResult:
    top: np.ndarray | None  # the block's own tile at block_zoom, kept for the levels above
    tiles: list[tuple[int, int, int, bytes]]  # (z, x, y, encoded) of the block's non-empty tiles


def _cut_image(image: np.ndarray, zoom: int, x0: int, y0: int, ctx: _Context,
         out: list[tuple[int, int, int, bytes]]) -> None:
    """Encode the non-empty tiles of a square image whose upper-left tile is (zoom, x0, y0)."""
    n = image.shape[0] // TILE
    for j in range(n):
        for i in range(n):
            x, y = x0 + i, y0 + j
            if not ctx.pyramid.meets(zoom, x, y):
                continue
            tile = image[j * TILE:(j + 1) * TILE, i * TILE:(i + 1) * TILE]
            if tile[..., -1].any():
                out.append((zoom, x, y, encode_tile(tile, ctx.options.tile_format, ctx.options.base.compression_quality)))


def _block(ctx: _Context, bx: int, by: int) -> _BlockResult:
    """Render one block at the deepest zoom, then each zoom up to block_zoom; encode the tiles."""
    p = ctx.pyramid
    k = 2 ** (p.maxzoom - p.block_zoom)
    image = _render_block(ctx, p.maxzoom, bx * k, by * k, k * TILE)
    tiles: list[tuple[int, int, int, bytes]] = []
    if image is None:
        return _BlockResult(None, tiles)
    zoom = p.maxzoom
    while True:
        scale = 2 ** (zoom - p.block_zoom)
        _cut_image(image, zoom, bx * scale, by * scale, ctx, tiles)
        if zoom == p.block_zoom:
            return _BlockResult(image, tiles)
        image = halve(image, ctx.categorical)
        zoom -= 1


# --- the archive ------------------------------------------------------------------------


class _Spool:
    """Encoded tiles in arrival order on disk, with a small index; sorted into the archive at the end."""

    def __init__(self, directory: Path, tile_dir: Path | None, extension: str):
        self.file = tempfile.TemporaryFile(dir=directory)
        self.ids, self.offsets, self.lengths = array("Q"), array("Q"), array("Q")  # 24 bytes a tile
        self.offset = 0
        self.tile_dir = tile_dir
        self.extension = extension
        self.per_zoom: dict[int, int] = {}

    def add(self, z: int, x: int, y: int, data: bytes) -> None:
        self.file.write(data)
        self.ids.append(pmtiles_tile_id(z, x, y))
        self.offsets.append(self.offset)
        self.lengths.append(len(data))
        self.offset += len(data)
        self.per_zoom[z] = self.per_zoom.get(z, 0) + 1
        if self.tile_dir is not None:
            folder = self.tile_dir / str(z) / str(x)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{y}.{self.extension}").write_bytes(data)

    def write_archive(self, path: Path, header: dict, meta: dict) -> None:
        """Write the PMTiles v3 archive, tiles in tile-id order (clustered), with the pmtiles package."""
        from pmtiles.writer import Writer

        self.file.flush()
        ids = np.frombuffer(self.ids, np.uint64)
        order = np.argsort(ids, kind="stable")
        offsets, lengths = np.frombuffer(self.offsets, np.uint64), np.frombuffer(self.lengths, np.uint64)
        with open(path, "wb") as fh:
            writer = Writer(fh)
            for i in order:
                self.file.seek(int(offsets[i]))
                writer.write_tile(int(ids[i]), self.file.read(int(lengths[i])))
            writer.finalize(header, meta)

    def close(self) -> None:
        self.file.close()


def _archive_header(pyramid: Pyramid, fmt: str) -> dict:
    from pmtiles.tile import Compression, TileType

    west, south, east, north = pyramid.place.published
    lon, lat = pyramid.place.center
    return {
        "tile_compression": Compression.NONE, "tile_type": TileType(TILE_TYPES[fmt]),
        "min_lon_e7": int(west * 1e7), "min_lat_e7": int(south * 1e7),
        "max_lon_e7": int(east * 1e7), "max_lat_e7": int(north * 1e7),
        "center_zoom": pyramid.minzoom, "center_lon_e7": int(lon * 1e7), "center_lat_e7": int(lat * 1e7),
    }


def tilejson(name: str, pyramid: Pyramid, options: TileOptions, tiles_url: str | None = None) -> dict:
    """The TileJSON 3.0.0 document of the pyramid.

    Args:
        name: the layer's name (the stem).
        pyramid: what was cut.
        options: the tile format.
        tiles_url: the `tiles` template; default "tiles/{z}/{x}/{y}.<ext>", relative to the
            TileJSON (where tile_dir=true puts them; the API serves its own absolute URL).
    Returns:
        a JSON-serialisable dict.
    """
    west, south, east, north = (round(v, 7) for v in pyramid.place.published)
    return {
        "tilejson": "3.0.0", "name": name, "scheme": "xyz",
        "tiles": [tiles_url or f"tiles/{{z}}/{{x}}/{{y}}.{options.extension}"],
        "minzoom": pyramid.minzoom, "maxzoom": pyramid.maxzoom, "bounds": [west, south, east, north],
        "center": [round(pyramid.place.center[0], 7), round(pyramid.place.center[1], 7), pyramid.minzoom],
        "format": options.tile_format, "attribution": "", "description": "raster tiles made by geoworker",
    }


# --- the job ------------------------------------------------------------------------------


def _file_statistics(source: Source, plan: read.BandPlan, options: TileOptions) -> list:
    """The PNG task's statistics (same decimated read, same size), only when the stretch needs them."""
    base = options.base
    dtype = np.dtype(read.read_dtype(source.ds.dtypes[plan.indexes[0] - 1]))
    empty = [render.BandStats(None, None, None, None, 0.0)] * len(plan.indexes)
    if plan.kind in ("palette", "categorical") or render.stretch_range(render.BandStats(0, 1, 0, 0, 100.0, 0, 1), dtype,
                                                     base.stretch) is None:
        return empty
    shape = read.output_shape(source.ds.width, source.ds.height, base.max_size)
    data, valid = read.read_decimated(source.ds, plan, shape, base.resampling, READ_THREADS)
    return statistics(data, valid, plan.indexes, base.percentiles)


def _ordered(pool: ThreadPoolExecutor, func: Callable, items: list, ahead: int) -> Iterator:
    """pool.map in order, with at most `ahead` items in flight (bounded memory)."""
    pending: list[Future] = []
    it = iter(items)
    for item in it:
        pending.append(pool.submit(func, *item))
        if len(pending) >= ahead:
            break
    while pending:
        result = pending.pop(0).result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(pool.submit(func, *nxt))
        yield result


@gdal_errors_are_input_errors
def make_tiles(src: str | Path, out_dir: str | Path, options: TileOptions, progress: Progress | None = None,
               stem: str | None = None) -> dict:
    """Turn one GeoTIFF into <stem>.pmtiles and <stem>.tilejson.json (and tiles/{z}/{x}/{y} with tile_dir).

    Args:
        src: the input GeoTIFF.
        out_dir: where the outputs go (created if missing).
        options: zooms, tile format, tile_dir and the PNG task's rendering options.
        progress: called with (percent, message) per block and per zoom level.
        stem: output file stem (default: the sanitised input stem).
    Returns:
        {"outputs": {kind: file name}, "metadata": summary, "timings": {stage: s}, "warnings": [...]}.
    Raises:
        InvalidInput, TooLarge, Unsupported: the input (no CRS, wholly outside the square, too many tiles).
    """
    src, out_dir = Path(src), Path(out_dir)
    stem = sanitise_stem(stem or src.name)
    base = options.base
    run = Run(progress)
    started = time.perf_counter()
    with ExitStack() as stack, read.gdal_env():
        with run.stage("validate", 2, "validating the input"):
            source = open_source(src, base, run, stack)
            pyramid = plan_pyramid(source, options.zoom)
            plan = read.plan_bands(source.ds, base.bands, detects_classes(base))
            run.warn(*plan.warnings)
        with run.stage("statistics", 4, "statistics of the file for the stretch"):
            stats = _file_statistics(source, plan, options)
        out_dir.mkdir(parents=True, exist_ok=True)
        tile_dir = out_dir / "tiles" if options.tile_dir else None
        spool = _Spool(out_dir, tile_dir, options.extension)
        stack.callback(spool.close)
        look = choose_style(plan, stats, read.read_dtype(source.ds.dtypes[plan.indexes[0] - 1]), base, source.ds, run)
        ctx = _Context(source, plan, stats, options, pyramid, run, plan.kind in ("palette", "categorical"), look,
                       threading.local(), [])
        stack.callback(lambda: [ds.close() for ds in ctx.opened])
        with run.stage("tiles", 8, f"cutting zooms {pyramid.minzoom}-{pyramid.maxzoom}"):
            _cut(ctx, spool)
        if not spool.ids:
            raise Unsupported("no pixel of the file is valid inside the Web-Mercator square: there is no tile to make")
        outputs = {"pmtiles": f"{stem}.pmtiles", "tilejson": f"{stem}.tilejson.json"}
        with run.stage("archive", 96, "writing the PMTiles archive"):
            meta = {**tilejson(stem, pyramid, options), "type": "overlay", "tile_counts": spool.per_zoom}
            with encode.atomic_path(out_dir / outputs["pmtiles"]) as tmp:
                spool.write_archive(tmp, _archive_header(pyramid, options.tile_format), meta)
            encode.write_text(out_dir / outputs["tilejson"], json.dumps(tilejson(stem, pyramid, options), indent=2) + "\n")
        if tile_dir is not None:
            outputs["tile_dir"] = "tiles"
    run.timings["total"] = round(time.perf_counter() - started, 4)
    run.report(100, "done")
    summary = {
        "width": source.ds.width, "height": source.ds.height, "bands": source.ds.count,
        "dtype": source.ds.dtypes[0], "crs_epsg": (source.geo.crs.to_epsg() if source.geo.crs else None),
        "render_mode": plan.kind, "rendered_bands": list(plan.indexes),
        "output": {"format": "pmtiles", "tile_format": options.tile_format, "tile_size": TILE,
                   "minzoom": pyramid.minzoom, "maxzoom": pyramid.maxzoom, "bounds_wgs84": list(pyramid.place.continuous),
                   "tiles": sum(spool.per_zoom.values()), "tiles_per_zoom": dict(sorted(spool.per_zoom.items())),
                   "file_sizes": {"pmtiles": (out_dir / outputs["pmtiles"]).stat().st_size}},
    }
    return {"outputs": outputs, "metadata": summary, "timings": dict(run.timings), "warnings": list(run.warnings)}


def _cut(ctx: _Context, spool: _Spool) -> None:
    """Run the blocks in the pool and assemble the zooms above them, both in quadtree order.

    The assembly pulls block results in the order Pyramid.blocks() listed them (the same
    depth-first walk), so it holds at most four tiles per zoom level and the pool at most
    2 x THREADS blocks: memory does not grow with the number of tiles.
    """
    p = ctx.pyramid
    blocks = p.blocks()
    if not blocks:
        return
    with ThreadPoolExecutor(THREADS) as pool:
        results = _ordered(pool, lambda b: _block(ctx, *b), [(b,) for b in blocks], 2 * THREADS)
        done = 0

        def next_block(x: int, y: int) -> np.ndarray | None:
            nonlocal done
            result = next(results)
            for tile in result.tiles:
                spool.add(*tile)
            done += 1
            counts = ", ".join(f"zoom {z}: {n}" for z, n in sorted(spool.per_zoom.items()))
            ctx.run.report(8 + int(84 * done / len(blocks)),
                           f"block {done} of {len(blocks)} (zooms {p.minzoom}-{p.maxzoom}); tiles so far: {counts}")
            return result.top

        def build(z: int, x: int, y: int) -> np.ndarray | None:
            if z == p.block_zoom:
                return next_block(x, y)
            children = {(cx, cy): build(z + 1, cx, cy) for cx, cy in p.children(z, x, y)}
            tile = _parent(children, x, y, ctx.categorical)
            if tile is None:
                return None
            spool.add(z, x, y, encode_tile(tile, ctx.options.tile_format, ctx.options.base.compression_quality))
            return tile

        for x, y in p.tiles_at(p.minzoom):
            build(p.minzoom, x, y)


def _parent(children: dict[tuple[int, int], np.ndarray | None], x: int, y: int, nearest: bool) -> np.ndarray | None:
    """The tile (x, y) from its children at the next zoom (None where a child is empty); None if empty."""
    present = [c for c in children.values() if c is not None]
    if not present:
        return None
    mosaic = np.zeros((2 * TILE, 2 * TILE, present[0].shape[2]), np.uint8)
    for (cx, cy), child in children.items():
        if child is not None:
            i, j = cx - 2 * x, cy - 2 * y
            mosaic[j * TILE:(j + 1) * TILE, i * TILE:(i + 1) * TILE] = child
    tile = halve(mosaic, nearest)
    return tile if tile[..., -1].any() else None
