"""Output grids, world files, PAM sidecars and the warp to another CRS.

Everything but `warp_image` is arithmetic on Affine transforms and CRSs.
"""

from __future__ import annotations

import math

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError

try:  # GDAL's own errors (CPLE_NotSupportedError, ...) as rasterio raises them
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - a rasterio that moved it
    CPLE_BaseError = RasterioError

# what PROJ/GDAL raise for a CRS or coordinates they cannot handle
PROJ_ERRORS = (ValueError, CRSError, RasterioError, CPLE_BaseError)
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform as transform_points, transform_bounds

WGS84 = CRS.from_epsg(4326)


def scaled_transform(transform: Affine, src_size: tuple[int, int], out_size: tuple[int, int]) -> Affine:
    """The transform of the same footprint sampled on a coarser (or finer) pixel grid.

    Args:
        transform: the source grid's affine transform (rotation terms kept).
        src_size: (width, height) of the source grid.
        out_size: (width, height) of the output grid.
    Returns:
        the output grid's transform.
    """
    return transform @ Affine.scale(src_size[0] / out_size[0], src_size[1] / out_size[1])


def world_file_lines(transform: Affine) -> list[str]:
    """The six lines of an ESRI world file: A, D, B, E, C, F.

    C and F are the centre of the upper-left pixel (not its corner, as in a GDAL
    geotransform); values keep full float precision (repr round-trips exactly).

    Args:
        transform: the output grid's affine transform.
    Returns:
        six strings.
    """
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f
    centre_x = c + a / 2 + b / 2
    centre_y = f + d / 2 + e / 2
    return [repr(float(v)) for v in (a, d, b, e, centre_x, centre_y)]


def transform_from_world_file(lines: list[str]) -> Affine:
    """Args: lines: a world file's six values. Returns: the corner-based Affine transform."""
    a, d, b, e, cx, cy = (float(v) for v in lines[:6])
    return Affine(a, b, cx - a / 2 - b / 2, d, e, cy - d / 2 - e / 2)


def pam_xml(crs: CRS | None, transform: Affine) -> str:
    """A GDAL PAM (.aux.xml) document giving a PNG its CRS and geotransform.

    Without a dataAxisToSRSAxisMapping attribute GDAL applies the traditional GIS
    axis order (x = easting/longitude), which is what the world file uses.

    Args:
        crs: the output CRS, or None.
        transform: the output grid's transform.
    Returns:
        the XML text.
    """
    gt = ", ".join(repr(float(v)) for v in transform.to_gdal())
    srs = f"  <SRS>{_xml_escape(crs.to_wkt())}</SRS>\n" if crs else ""
    return f"<PAMDataset>\n{srs}  <GeoTransform>{gt}</GeoTransform>\n</PAMDataset>\n"


def grid_corners(transform: Affine, width: int, height: int) -> dict[str, tuple[float, float]]:
    """The outer corners of a pixel grid in its own CRS.

    Args:
        transform: the grid's transform.
        width: columns.
        height: rows.
    Returns:
        upper_left, upper_right, lower_right, lower_left as (x, y).
    """
    points = {"upper_left": (0, 0), "upper_right": (width, 0), "lower_right": (width, height), "lower_left": (0, height)}
    return {name: tuple(float(v) for v in transform @ p) for name, p in points.items()}


def grid_bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """Args: transform, width, height: a grid. Returns: (left, bottom, right, top) of its corners."""
    xs, ys = zip(*grid_corners(transform, width, height).values())
    return min(xs), min(ys), max(xs), max(ys)


def corners_to_wgs84(crs: CRS, corners: dict[str, tuple[float, float]]) -> dict[str, list[float]] | None:
    """Args: crs: the corners' CRS; corners: as grid_corners returns.
    Returns: the same corners as [lon, lat], or None where PROJ cannot transform them."""
    try:
        xs, ys = transform_points(crs, WGS84, [p[0] for p in corners.values()], [p[1] for p in corners.values()])
    except PROJ_ERRORS:
        return None
    return {name: [float(x), float(y)] for name, x, y in zip(corners, xs, ys)}


def bounds_to_wgs84(crs: CRS, bounds: tuple[float, float, float, float]) -> list[float] | None:
    """Args: crs: the bounds' CRS; bounds: (left, bottom, right, top).
    Returns: [west, south, east, north], or None where PROJ cannot transform them."""
    try:
        return [float(v) for v in transform_bounds(crs, WGS84, *bounds, densify_pts=21)]
    except PROJ_ERRORS:
        return None


def mappable(crs: CRS) -> bool:
    """Whether a CRS can be placed on a world map: geographic or projected, not a local engineering grid."""
    return bool(crs.is_geographic or crs.is_projected)


# no real raster has coordinates past these (degrees; metres or feet: 1e8 is 2.5 times round the earth)
MAX_DEGREES_LON, MAX_DEGREES_LAT, MAX_PROJECTED = 540.0, 91.0, 1e8


def check_plausible(crs: CRS, bounds: tuple[float, float, float, float]) -> None:
    """Refuse coordinates no real raster has before PROJ sees them (it can spin for minutes on 1e30).

    Args:
        crs: a mappable CRS.
        bounds: (left, bottom, right, top) in it.
    Raises:
        InvalidInput: not finite, or far outside any place on earth.
    """
    from geoworker.errors import InvalidInput

    left, bottom, right, top = bounds
    if not all(math.isfinite(v) for v in bounds):
        raise InvalidInput("the file's georeferencing is broken: its bounds are not finite numbers")
    if crs.is_geographic:
        ok = max(abs(left), abs(right)) <= MAX_DEGREES_LON and max(abs(bottom), abs(top)) <= MAX_DEGREES_LAT
        where = f"longitude {left:g}..{right:g}, latitude {bottom:g}..{top:g}"
    else:
        ok = max(abs(left), abs(right), abs(bottom), abs(top)) <= MAX_PROJECTED
        where = f"x {left:g}..{right:g}, y {bottom:g}..{top:g}"
    if not ok:
        raise InvalidInput(f"the file's georeferencing is implausible: {where} is nowhere on earth in "
                           f"{crs.to_string() or 'its CRS'}; check the geotransform")


def _edge_points(transform: Affine, width: int, height: int, n: int = 21) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 1, n)
    cols = np.concatenate([t * width, np.full(n, width), t[::-1] * width, np.zeros(n)])
    rows = np.concatenate([np.zeros(n), t * height, np.full(n, height), t[::-1] * height])
    xs = transform.a * cols + transform.b * rows + transform.c
    ys = transform.d * cols + transform.e * rows + transform.f
    return xs, ys


def warp_grid(src_transform: Affine, src_size: tuple[int, int], src_crs: CRS, dst_crs: CRS,
              max_size: int) -> tuple[Affine, int, int]:
    """A north-up grid in dst_crs covering the source, with about as many pixels, long side <= max_size.

    Works for rotated and sheared source transforms: the source grid's densified
    edges are projected, not its axis-aligned bounds.

    Args:
        src_transform: the (decimated) source grid's transform.
        src_size: its (width, height).
        src_crs: its CRS.
        dst_crs: the output CRS.
        max_size: the longest side allowed.
    Returns:
        (dst_transform, width, height).
    """
    w, h = src_size
    xs, ys = _edge_points(src_transform, w, h)
    dx, dy = transform_points(src_crs, dst_crs, xs.tolist(), ys.tolist())
    dx, dy = np.asarray(dx), np.asarray(dy)
    ok = np.isfinite(dx) & np.isfinite(dy)
    if not ok.any():
        raise ValueError("the source footprint cannot be projected to the output CRS")
    left, right, bottom, top = dx[ok].min(), dx[ok].max(), dy[ok].min(), dy[ok].max()
    span_x, span_y = max(right - left, 1e-12), max(top - bottom, 1e-12)
    res = math.sqrt(span_x * span_y / max(1, w * h))
    res = max(res, max(span_x, span_y) / max_size)
    width = max(1, min(max_size, math.ceil(span_x / res - 1e-9)))
    height = max(1, min(max_size, math.ceil(span_y / res - 1e-9)))
    return Affine(span_x / width, 0, left, 0, -span_y / height, top), width, height


# The rendered image is already at the output resolution (the decimated read averaged
# it), so the warp only shifts and rotates it by fractions of a pixel: nearest keeps
# every value as read and never mixes invalid pixels into valid ones, like gdalwarp's
# default. (Bilinear measured 3-4x slower on 4096^2 with no visible gain at 1:1 scale.)
WARP_RESAMPLING = "nearest"


def warp_image(image: np.ndarray, valid: np.ndarray | None, src_transform: Affine, src_crs: CRS,
               dst_transform: Affine, dst_crs: CRS, dst_shape: tuple[int, int], resampling: str = WARP_RESAMPLING,
               num_threads: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Reproject rendered uint8 bands onto the output grid; outside the source is invalid.

    The validity travels as one more plain band (0/255) through the same nearest-neighbour
    warp, which takes GDAL's fast no-mask path; nearest never blends an invalid pixel
    into a valid one, so edges get no dark fringe.

    Args:
        image: (c, h, w) uint8 rendered bands (without alpha).
        valid: source validity, or None for all valid.
        src_transform, src_crs: the source grid.
        dst_transform, dst_crs, dst_shape: the output grid (height, width).
        resampling: a Resampling name; anything but nearest also warps the 0/255 validity band
            with it, and pixels under half valid become invalid.
        num_threads: warper threads.
    Returns:
        (warped bands (c, H, W), valid (H, W) boolean).
    """
    count = image.shape[0]
    alpha = np.full(image.shape[1:], 255, np.uint8) if valid is None else np.multiply(valid, 255, dtype=np.uint8)
    destination = np.zeros((count + 1, *dst_shape), np.uint8)
    # Each call sets up its own transformer and chunking: grey + validity go in one 2-band
    # call (two 1-band calls took 0.39-0.60 s on 4096^2, one 2-band call 0.28-0.38 s).
    # Colour goes one band per call: rasterio copies a call's source and destination into
    # GDAL in-memory datasets, and pairs of RGB bands raised the peak RSS by 60-75 MB.
    bands = [*image, alpha]
    step = 2 if count == 1 else 1
    for i in range(0, len(bands), step):
        group = bands[i] if step == 1 else np.stack(bands[i:i + step])
        reproject(group, destination[i] if step == 1 else destination[i:i + step], src_transform=src_transform,
                  src_crs=src_crs, dst_transform=dst_transform, dst_crs=dst_crs,
                  resampling=Resampling[resampling], num_threads=num_threads, init_dest_nodata=True,
                  warp_mem_limit=32)
        del group
    del alpha, bands
    return destination[:count], destination[count] >= 128


def _xml_escape(text: str) -> str:
    """&, < and > as XML entities (xml.sax.saxutils.escape, without importing urllib: 45 ms at start-up)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
