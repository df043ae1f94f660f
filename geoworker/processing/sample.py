"""A deterministic, orthophoto-like sample GeoTIFF (for `geoworker demo`, tests and the benchmark).

`scene_block` draws any window of an endless synthetic landscape from absolute pixel
coordinates only, so a large raster can be written window by window and every window
is the same whoever draws it: fields of varied crops, roads, buildings, texture.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin

# UTM zone 38N, around Sana'a (15.35 N, 44.21 E).
SAMPLE_CRS = "EPSG:32638"
SAMPLE_ORIGIN = (414_000.0, 1_698_000.0)


def noise_hash(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A cheap integer hash of two coordinate arrays -> uint32 (deterministic, chunk-independent)."""
    h = a.astype(np.uint32) * np.uint32(73856093) ^ b.astype(np.uint32) * np.uint32(19349663) ^ np.uint32(seed)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0x5BD1E995)
    h ^= h >> np.uint32(15)
    return h


def scene_block(row0: int, col0: int, rows: int, cols: int, seed: int = 7, cell: int = 96) -> np.ndarray:
    """Draw a window of the synthetic landscape.

    Args:
        row0, col0: absolute pixel coordinates of the window's upper-left pixel.
        rows, cols: window size.
        seed: landscape variant.
        cell: field size in pixels.
    Returns:
        (3, rows, cols) uint8 RGB, never 0 (0 is the sample's nodata).
    """
    r = np.arange(row0, row0 + rows, dtype=np.int64)[:, None]
    c = np.arange(col0, col0 + cols, dtype=np.int64)[None, :]
    # fields: each cell of a slightly sheared grid gets a crop colour
    fr, fc = (r + (c // 7) % cell) // cell, (c + (r // 5) % cell) // cell
    field_id = noise_hash(fr, fc, seed)
    palette = np.array([[112, 128, 72], [150, 140, 96], [92, 110, 60], [170, 160, 120], [128, 118, 88],
                        [84, 98, 58], [190, 176, 140], [140, 150, 90]], dtype=np.int16)
    rgb = palette[(field_id % np.uint32(len(palette))).astype(np.intp)].transpose(2, 0, 1).copy()
    # furrows inside fields, direction per field
    furrow = np.where(field_id & np.uint32(1), r, c) % 6 < 2
    rgb -= (furrow * 10).astype(np.int16)
    # fine texture
    noise = (noise_hash(r, c, seed + 1) % np.uint32(17)).astype(np.int16) - 8
    rgb += noise[None]
    # roads: a loose grid of 10-px asphalt bands
    road = ((r + 3 * (c // 200)) % 420 < 10) | ((c + 2 * (r // 250)) % 510 < 8)
    rgb[:, road] = np.array([96, 96, 100], dtype=np.int16)[:, None] + noise[road][None] // 2
    # buildings: bright roofs in some cells near roads
    br, bc = r // 40, c // 40
    roof = (noise_hash(br, bc, seed + 2) % np.uint32(9) == 0) & ((r % 40) > 8) & ((c % 40) > 6) & ((r % 40) < 32)
    rgb[:, roof & ~road] = np.array([205, 196, 186], dtype=np.int16)[:, None]
    return np.clip(rgb, 1, 255).astype(np.uint8)


def footprint_mask(rows: int, cols: int, angle_deg: float = 12.0, margin: float = 0.1) -> np.ndarray:
    """A rotated-rectangle footprint (True inside), as an ortho mosaic's valid area looks.

    Args:
        rows, cols: raster size.
        angle_deg: rotation of the footprint.
        margin: collar width as a fraction of the size.
    Returns:
        boolean (rows, cols).
    """
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2, cols / 2
    a = math.radians(angle_deg)
    u = (x - cx) * math.cos(a) + (y - cy) * math.sin(a)
    v = -(x - cx) * math.sin(a) + (y - cy) * math.cos(a)
    return (np.abs(u) < cols * (0.5 - margin)) & (np.abs(v) < rows * (0.5 - margin))


def write_sample_orthophoto(path: str | Path, size: int = 1024) -> Path:
    """Write a small orthophoto-like RGB GeoTIFF in UTM 38N with a nodata collar.

    Args:
        path: where to write it.
        size: width and height in pixels (0.5 m pixels).
    Returns:
        the path written: tiled 256 x 256, DEFLATE, nodata 0, overviews 2/4/8.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = scene_block(0, 0, size, size)
    image[:, ~footprint_mask(size, size)] = 0
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=SAMPLE_CRS,
                   transform=from_origin(*SAMPLE_ORIGIN, 0.5, 0.5), nodata=0, tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", predictor=2, photometric="RGB", interleave="pixel")
    with rasterio.Env(GDAL_CACHEMAX=64):
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(image)
            factors = [f for f in (2, 4, 8) if size // f >= 16]
            if factors:
                dst.build_overviews(factors, Resampling.average)
            dst.update_tags(TIFFTAG_IMAGEDESCRIPTION="geoworker sample orthophoto (synthetic)")
    return path
