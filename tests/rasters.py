"""Writers of test rasters: every kind of GeoTIFF the pipeline must handle, and broken ones.

Each function writes one file under a directory the test owns (tmp_path) and returns
its path. Content is small and deterministic so that tests can assert pixel values.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
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


# --- georeferencing of every kind, each as GDAL would meet it in the wild ------------------

GEOS_FULL_DISK_HALF = 5_434_894.885  # metres: half the side of a GOES-East full-disk image
MARS_EQUIRECTANGULAR = (
    'PROJCS["Mars2000_Equirectangular",GEOGCS["GCS_Mars_2000",DATUM["D_Mars_2000",'
    'SPHEROID["Mars_2000_IAU_IAG",3396190.0,169.894447223612]],PRIMEM["Reference_Meridian",0.0],'
    'UNIT["Degree",0.0174532925199433]],PROJECTION["Equirectangular"],PARAMETER["False_Easting",0.0],'
    'PARAMETER["False_Northing",0.0],PARAMETER["Central_Meridian",0.0],PARAMETER["Standard_Parallel_1",0.0],'
    'UNIT["Meter",1.0]]')
MARS_GEOGRAPHIC = ('GEOGCS["GCS_Mars_2000",DATUM["D_Mars_2000",SPHEROID["Mars_2000_IAU_IAG",3396190.0,'
                   '169.894447223612]],PRIMEM["Reference_Meridian",0.0],UNIT["Degree",0.0174532925199433]]')


def texture(height: int, width: int) -> np.ndarray:
    """(h, w) uint8, 1..250: every pixel valid, neighbours different (a warp that drops a row shows)."""
    return (np.arange(height * width).reshape(height, width) % 250 + 1).astype(np.uint8)


def polar(path: Path, epsg: int = 3413, size: int = 200, pixel: float = 20_000.0) -> Path:
    """A polar stereographic grid (EPSG:3413 north, 3031 south) centred on the pole."""
    half = size * pixel / 2
    return write(path, texture(size, size), crs=CRS.from_epsg(epsg), transform=from_origin(-half, half, pixel, pixel))


def geostationary_full_disk(path: Path, size: int = 200) -> Path:
    """A GOES-East-like full disk: the Earth's disk inscribed in the square, the corners in space."""
    crs = CRS.from_proj4("+proj=geos +h=35786023 +lon_0=-75 +sweep=x +a=6378137 +b=6356752.31414 +units=m +no_defs")
    pixel = 2 * GEOS_FULL_DISK_HALF / size
    return write(path, texture(size, size), crs=crs,
                 transform=from_origin(-GEOS_FULL_DISK_HALF, GEOS_FULL_DISK_HALF, pixel, pixel))


def across_antimeridian(path: Path) -> Path:
    """A UTM zone 60N scene (central meridian 177 E) reaching past 180 degrees, near 60 N."""
    return write(path, texture(200, 300), crs=CRS.from_epsg(32660),
                 transform=from_origin(600_000, 6_700_000, 1000, 1000))


def rpc_only(path: Path, width: int = 600, height: int = 500) -> Path:
    """A satellite-like scene georeferenced by RPCs only (no geotransform, no GCPs, no CRS).

    The model is nearly linear (sample follows longitude, line latitude) with a height
    term, so that the RPC height moves the footprint.
    """
    from rasterio.rpc import RPC

    num_line, num_samp, den = [0.0] * 20, [0.0] * 20, [1.0] + [0.0] * 19
    num_line[2], num_line[3] = -1.0, 0.02
    num_samp[1], num_samp[3] = 1.0, 0.05
    rpcs = RPC(height_off=1000, height_scale=500, lat_off=15.35, lat_scale=0.05, line_den_coeff=den,
               line_num_coeff=num_line, line_off=height / 2, line_scale=height / 2, long_off=44.2, long_scale=0.05,
               samp_den_coeff=den, samp_num_coeff=num_samp, samp_off=width / 2, samp_scale=width / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8") as dst:
            dst.write(texture(height, width)[None])
            dst.rpcs = rpcs
    return Path(path)


def on_mars(path: Path) -> Path:
    """A Mars 2000 equirectangular grid (PROJ refuses to take it to Earth's EPSG:4326)."""
    return write(path, texture(80, 100), crs=CRS.from_wkt(MARS_EQUIRECTANGULAR),
                 transform=from_origin(1_000_000, 500_000, 200, 200))


def geotransform_without_crs(path: Path) -> Path:
    """A geotransform (UTM 38N numbers) and no CRS: where the pixels are, in unknown units."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return write(path, gradient_rgb(40, 50), crs=None, transform=from_origin(*ORIGIN, 2.0, 2.0),
                     photometric="RGB")


# --- colours -----------------------------------------------------------------------------------


def classes(path: Path, values=(0, 1, 2, 3, 5, 10), size: int = 120, **profile) -> Path:
    """A uint8 land-cover-like class raster: vertical stripes of each value in `values`."""
    stripe = np.repeat(np.asarray(values, np.uint8), -(-size // len(values)))[:size]
    return write(path, np.tile(stripe[None, :], (size, 1)), **profile)


def bgr(path: Path, alpha: bool = False) -> Path:
    """Blue, green, red (and alpha) bands, marked so: (10, 20, 30) as R, G, B everywhere alpha is on."""
    h, w = 30, 40
    data = [np.full((h, w), 30, np.uint8), np.full((h, w), 20, np.uint8), np.full((h, w), 10, np.uint8)]
    interp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red]
    if alpha:
        a = np.zeros((h, w), np.uint8)
        a[:, 10:] = 255
        data.append(a)
        interp.append(ColorInterp.alpha)
    return write(path, np.stack(data), colorinterp=interp)


# --- files in formats GDAL reads but will not write, built byte by byte ------------------------


def tiff_bytes(entries: list[tuple[int, int, list[int]]], payload: bytes, offset_tags=(273,)) -> bytes:
    """A classic little-endian one-image TIFF: `entries` are (tag, type 3 = SHORT | 4 = LONG, values);
    the values of `offset_tags` are offsets into `payload`, which follows the directory."""
    entries = sorted(entries)
    directory_size = 2 + 12 * len(entries) + 4
    packed = [b"".join(struct.pack("<H" if typ == 3 else "<I", v) for v in values) for _, typ, values in entries]
    cursor = 8 + directory_size
    out_of_line = {}
    for i, raw in enumerate(packed):
        if len(raw) > 4:
            out_of_line[i] = cursor
            cursor += len(raw) + (len(raw) & 1)
    payload_at = cursor
    body, extra = struct.pack("<H", len(entries)), b""
    for i, (tag, typ, values) in enumerate(entries):
        raw = packed[i]
        if tag in offset_tags:
            raw = b"".join(struct.pack("<H" if typ == 3 else "<I", payload_at + v) for v in values)
        if i in out_of_line:
            body += struct.pack("<HHII", tag, typ, len(values), out_of_line[i])
            extra += raw + b"\0" * (len(raw) & 1)
        else:
            body += struct.pack("<HHI", tag, typ, len(values)) + raw.ljust(4, b"\0")
    return b"II*\x00" + struct.pack("<I", 8) + body + struct.pack("<I", 0) + extra + payload


def old_style_jpeg(path: Path, rgb: np.ndarray) -> Path:
    """An old-style JPEG TIFF (compression 6, OJPEG): one strip that is a whole JFIF stream, which
    the JPEGInterchangeFormat tag points at, as scanners wrote them in the 1990s."""
    import io

    from PIL import Image

    h, w = rgb.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, "JPEG", quality=95, subsampling=0)
    jpeg = buffer.getvalue()
    entries = [(256, 4, [w]), (257, 4, [h]), (258, 3, [8, 8, 8]), (259, 3, [6]), (262, 3, [6]), (273, 4, [0]),
               (277, 3, [3]), (278, 4, [h]), (279, 4, [len(jpeg)]), (284, 3, [1]), (513, 4, [0]),
               (514, 4, [len(jpeg)]), (530, 3, [1, 1])]
    Path(path).write_bytes(tiff_bytes(entries, jpeg, offset_tags=(273, 513)))
    return Path(path)


def logluv(path: Path, luminance: np.ndarray) -> Path:
    """A LogLuv TIFF (SGI LogLuv32, compression 34676, photometric 32845): HDR luminance of
    equal-energy white, which GDAL reads as three float32 bands (CIE X, Y, Z).

    Args:
        path: where to write it.
        luminance: (h, w) CIE Y values > 0.
    """
    h, w = luminance.shape
    log_y = np.floor(256.0 * (np.log2(luminance) + 64.0)).astype(np.uint32)  # 15-bit log luminance
    u, v = int(410 * 4 / 19), int(410 * 9 / 19)  # u', v' of X = Y = Z, scaled by 410
    pixels = (log_y << 16) | (u << 8) | v
    data = bytearray()
    for row in pixels:  # each byte plane of a row, most significant first, as literal runs
        for shift in (24, 16, 8, 0):
            plane = ((row >> shift) & 0xFF).astype(np.uint8).tobytes()
            for i in range(0, len(plane), 127):
                data += bytes([len(plane[i:i + 127])]) + plane[i:i + 127]
    entries = [(256, 4, [w]), (257, 4, [h]), (258, 3, [32, 32, 32]), (259, 3, [34676]), (262, 3, [32845]),
               (273, 4, [0]), (277, 3, [3]), (278, 4, [h]), (279, 4, [len(data)]), (284, 3, [1]),
               (339, 3, [3, 3, 3])]
    Path(path).write_bytes(tiff_bytes(entries, bytes(data)))
    return Path(path)


def deflate_bomb(path: Path, width: int = 100_000, height: int = 100_000, sparse: bool = False) -> Path:
    """3-band uint8 zeros in 256 x 256 DEFLATE tiles: 30 GB declared.

    Nothing is written: GDAL fills the missing tiles on close by compressing one empty
    tile and writing its bytes for each (34 MB, about a second), or with sparse=True
    leaves them out altogether (a few hundred KB of directory, no pixel data at all).
    """
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs=UTM38N, transform=from_origin(*ORIGIN, 0.1, 0.1), tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate", sparse_ok=sparse):
        pass
    return Path(path)
