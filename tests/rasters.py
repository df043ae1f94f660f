"""Writers of test rasters: every kind of GeoTIFF the pipeline must handle, and broken ones.

Each function writes one file under a directory the test owns (tmp_path) and returns
its path. Content is small and deterministic so that tests can assert pixel values.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import from_origin

UTM38N = CRS.from_epsg(32638)
ORIGIN = (414_000.0, 1_698_000.0)  # Sana'a, UTM 38N


def gradient_rgb(height: int, width: int) -> np.ndarray:
    """(3, h, w) uint8 with every value 1..255 present and no zeros (0 is the usual nodata)."""
    r = np.arange(height)[:, None]
    c = np.arange(width)[None, :]
    red = 1 + (c * 254 // max(1, width - 1)) + 0 * r
    green = 1 + (r * 254 // max(1, height - 1)) + 0 * c
    blue = 1 + ((r + c) * 7) % 255
    return np.stack([red, green, blue]).astype(np.uint8)


def write(path: Path, data: np.ndarray, *, crs=UTM38N, transform: Affine | None = None, **profile) -> Path:
    """Write (bands, h, w) `data` as a GeoTIFF; `profile` adds creation options (tiled, compress, ...)."""
    path = Path(path)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    if transform is None and crs is not None:
        transform = from_origin(*ORIGIN, 2.0, 2.0)
    base = dict(driver="GTiff", width=width, height=height, count=count, dtype=str(data.dtype))
    if crs is not None:
        base["crs"] = crs
    if transform is not None:
        base["transform"] = transform
    colorinterp = profile.pop("colorinterp", None)
    overviews = profile.pop("overviews", None)
    mask = profile.pop("mask", None)
    colormap = profile.pop("colormap", None)
    gcps = profile.pop("gcps", None)
    env = {"GDAL_TIFF_INTERNAL_MASK": True} if mask is not None else {}
    with rasterio.Env(**env), rasterio.open(path, "w", **base, **profile) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = colorinterp
        if colormap:
            dst.write_colormap(1, colormap)
        if mask is not None:
            dst.write_mask(mask)
        if gcps:
            dst.gcps = gcps
        if overviews:
            dst.build_overviews(overviews, Resampling.average)
    return path


def rgb_with_collar(path: Path, size: int = 200, collar: int = 20, value=(200, 150, 100), **profile) -> Path:
    """3-band uint8, constant `value` inside, nodata 0 in a `collar`-pixel frame."""
    data = np.zeros((3, size, size), np.uint8)
    for band, v in enumerate(value):
        data[band, collar:size - collar, collar:size - collar] = v
    return write(path, data, nodata=0, **profile)


def uint16_ramp(path: Path, height: int = 120, width: int = 160, lo: int = 1000, hi: int = 4000, **profile) -> Path:
    """1-band uint16 ramp from lo to hi: all values far above 255, the classic 'black PNG' trap."""
    ramp = np.linspace(lo, hi, width)[None, :].repeat(height, 0).astype(np.uint16)
    return write(path, ramp, **profile)


def palette(path: Path, size: int = 64) -> Path:
    """1-band uint8 palette image: four quadrants of indexes 1..4, each with its own colour."""
    data = np.ones((size, size), np.uint8)
    half = size // 2
    data[:half, half:] = 2
    data[half:, :half] = 3
    data[half:, half:] = 4
    cmap = {0: (0, 0, 0, 0), 1: (255, 0, 0, 255), 2: (0, 255, 0, 255), 3: (0, 0, 255, 255), 4: (255, 255, 0, 255)}
    return write(path, data, photometric="palette", colormap=cmap)


def gcp_only(path: Path, size: int = 100) -> Path:
    """RGB uint8 georeferenced by four GCPs only (no geotransform)."""
    gcps = [GroundControlPoint(row=0, col=0, x=ORIGIN[0], y=ORIGIN[1]),
            GroundControlPoint(row=0, col=size, x=ORIGIN[0] + 2 * size, y=ORIGIN[1]),
            GroundControlPoint(row=size, col=size, x=ORIGIN[0] + 2 * size, y=ORIGIN[1] - 2 * size),
            GroundControlPoint(row=size, col=0, x=ORIGIN[0], y=ORIGIN[1] - 2 * size)]
    return write(path, gradient_rgb(size, size), crs=None, gcps=(gcps, UTM38N))


# --- broken files, crafted byte by byte where GDAL would refuse to write them -----------


def minimal_tiff(width: int, height: int, *, compression: int = 1, strip_bytes: int = 16,
                 sample_format: int = 1, bits: int = 8) -> bytes:
    """A classic little-endian one-strip greyscale TIFF declaring any size, with `strip_bytes` of data."""
    entries = [
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, compression),
        (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, max(1, height)),
        (279, 4, 1, strip_bytes), (339, 3, 1, sample_format),
    ]
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(entries) + 4
    body = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = data_offset
        fmt = "<HHIHH" if typ == 3 else "<HHII"
        body += struct.pack(fmt, tag, typ, count, value, 0) if typ == 3 else struct.pack(fmt, tag, typ, count, value)
    body += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + body + bytes(strip_bytes)


def multipage(path: Path) -> Path:
    """A two-page TIFF (two full images, not overviews), as scanners and Pillow write them."""
    from PIL import Image

    first = Image.fromarray(np.moveaxis(gradient_rgb(40, 60), 0, -1), "RGB")
    second = Image.fromarray(np.full((30, 30, 3), 77, np.uint8), "RGB")
    first.save(path, format="TIFF", save_all=True, append_images=[second])
    return Path(path)


def strip_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, byte count) of each strip/tile of band 1 of a GeoTIFF, as GDAL reports them."""
    with rasterio.open(path) as ds:
        bh, bw = ds.block_shapes[0]
        out = []
        for row in range(-(-ds.height // bh)):
            for col in range(-(-ds.width // bw)):
                off = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1)
                size = ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1)
                out.append((int(off), int(size)))
        return out


ALPHA_RGBA = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
