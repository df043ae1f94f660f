"""Thin readers over an open rasterio dataset: which bands, decimated pixels, validity.

Reads go straight to the output size, never materialising the full raster; memory is
bounded by the output. The default `average` decimation of full-resolution pixels runs
in numpy over block-aligned row windows (average.py: GDAL's weights, several times
faster than GDAL's decimating RasterIO); files with a fitting overview, and other
resamplings, are read by GDAL with `out_shape` (it picks the overview). Both are
mask-aware (nodata, NaN, internal masks and alpha are left out of each average), so
valid edges keep their colour instead of fading into black.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoworker.errors import BadParams, InvalidInput
from geoworker.processing import average
from geoworker.processing.render import invalid_mask


# GDAL's block cache defaults to 5% of RAM; a decimated read needs only a few rows of
# blocks, and a large cache is what would make RSS grow with the input size.
GDAL_OPTIONS = {
    "GDAL_CACHEMAX": 64,  # MB
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing; .ovr/.msk sidecars are still probed
}
MIN_ROWS_PER_THREAD = 128


def gdal_env() -> rasterio.Env:
    """The GDAL settings every read runs under."""
    return rasterio.Env(**GDAL_OPTIONS)


@dataclass(frozen=True)
class BandPlan:
    """Which bands to read and how to render them."""

    kind: str  # "rgb" | "grey" | "palette"
    indexes: tuple[int, ...]  # 1-based data bands to render
    alpha: int | None = None  # 1-based alpha band, read alongside
    mask: str = "none"  # none | nodata | per_dataset | alpha
    warnings: tuple[str, ...] = field(default=())


def output_shape(width: int, height: int, max_size: int) -> tuple[int, int]:
    """Scale (width, height) so that the long side is at most max_size; never upscale.

    Args:
        width: source width in pixels.
        height: source height in pixels.
        max_size: the longest side allowed.
    Returns:
        (out_height, out_width), each >= 1.
    """
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def plan_bands(ds: rasterio.DatasetReader, bands: tuple[int, ...] | None) -> BandPlan:
    """Choose the bands to render from the file's colour interpretation.

    Args:
        ds: an open dataset.
        bands: 1-based indexes the caller asked for, or None.
    Returns:
        a BandPlan: 3+ bands -> RGB of the first three (or `bands`), an alpha band
        becomes transparency, one palette band -> its colours, else grey of band 1.
    """
    interp = list(ds.colorinterp)
    alphas = [i + 1 for i, c in enumerate(interp) if c == ColorInterp.alpha]
    alpha = alphas[0] if alphas else None
    data = [b for b in range(1, ds.count + 1) if b not in alphas] or [1]
    warnings: list[str] = []
    if bands:
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise BadParams(f"bands must be between 1 and {ds.count} for this file, got {list(bands)}")
        indexes = tuple(bands)
        if alpha in indexes:
            alpha = None
    elif len(data) >= 3:
        indexes = tuple(data[:3])
        if len(data) > 3:
            warnings.append(f"the file has {len(data)} data bands; bands {list(indexes)} are rendered as RGB "
                            "(set the bands parameter to choose others)")
    else:
        indexes = (data[0],)
    palette = (len(indexes) == 1 and interp[indexes[0] - 1] == ColorInterp.palette and _has_colormap(ds, indexes[0]))
    kind = "palette" if palette else ("rgb" if len(indexes) == 3 else "grey")
    return BandPlan(kind, indexes, alpha, _mask_kind(ds, indexes, alpha), tuple(warnings))


def _has_colormap(ds: rasterio.DatasetReader, index: int) -> bool:
    try:
        return bool(ds.colormap(index))
    except (ValueError, RasterioError):
        return False


def _mask_kind(ds: rasterio.DatasetReader, indexes: tuple[int, ...], alpha: int | None) -> str:
    if alpha is not None:
        return "alpha"
    flags = ds.mask_flag_enums[indexes[0] - 1]
    if MaskFlags.per_dataset in flags and MaskFlags.nodata not in flags:
        return "per_dataset"
    if any(MaskFlags.nodata in ds.mask_flag_enums[i - 1] for i in indexes):
        return "nodata"
    if any(np.dtype(ds.dtypes[i - 1]).kind == "f" for i in indexes):
        return "nodata"  # NaN is invalid even when no nodata value is declared
    return "none"


def read_dtype(dtype: str) -> str:
    """The dtype to read a band as: float64 is read as float32 (half the memory, ample for display).

    Args:
        dtype: the band's dtype name.
    Returns:
        the dtype name for the read buffer.
    """
    return "float32" if dtype == "float64" else dtype


def read_decimated(ds: rasterio.DatasetReader, plan: BandPlan, shape: tuple[int, int],
                   resampling: str, threads: int = 1) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the planned bands at `shape` and the validity of each output pixel.

    Args:
        ds: an open dataset.
        plan: what plan_bands chose.
        shape: (height, width) of the result.
        resampling: a rasterio Resampling name; palettes always use nearest.
        threads: read this many horizontal bands of the output at once, each through its
            own handle (the decimating RasterIO of one handle runs on one core).
    Returns:
        (data of shape (n, h, w), valid boolean mask or None when all pixels are valid).
        A pixel is valid when any source pixel under it is valid.
    """
    method = Resampling.nearest if plan.kind == "palette" else Resampling[resampling]
    indexes = list(plan.indexes) + ([plan.alpha] if plan.alpha else [])
    dtypes = {read_dtype(ds.dtypes[i - 1]) for i in indexes}
    out_dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes.pop()
    try:
        if _numpy_average(ds, indexes, shape, method):
            data, valid = average.decimate(
                functools.partial(_handle, ds.name), indexes, (ds.height, ds.width), ds.block_shapes[0], shape,
                out_dtype, plan.mask, [ds.nodatavals[i - 1] for i in indexes],
                len(indexes) - 1 if plan.alpha else None, threads)
            return (data[:-1] if plan.alpha else data), valid
        if method == Resampling.nearest:
            data = _read_nearest(ds, shape, lambda window: ds.read(indexes, window=window, out_dtype=out_dtype))
        else:
            data = _read_rows(ds, shape, threads, lambda d, window, rows: d.read(
                indexes, window=window, out_shape=(len(indexes), rows, shape[1]), resampling=method,
                out_dtype=out_dtype))
        valid = _validity(ds, plan, data, shape, method, threads)
    except RasterioError as exc:
        raise InvalidInput(f"the TIFF's pixel data cannot be decoded (corrupt or truncated): {_gdal_message(exc)}") from None
    if plan.alpha:
        data = data[:-1]
    return data, valid


def read_window(ds: rasterio.DatasetReader, plan: BandPlan, window: Window, shape: tuple[int, int],
                resampling: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Read the planned bands of one window at `shape` through GDAL (mask-aware), and their validity.

    The map tiles read the source window by window (tiles.py), never the whole raster.

    Args:
        ds: an open dataset (one per thread).
        plan: what plan_bands chose.
        window: the source pixels to read.
        shape: (height, width) of the result (the window's size, or smaller to decimate).
        resampling: a rasterio Resampling name.
    Returns:
        (data of shape (n, h, w), valid boolean mask or None when all pixels are valid).
    """
    method = Resampling[resampling]
    indexes = list(plan.indexes) + ([plan.alpha] if plan.alpha else [])
    dtypes = {read_dtype(ds.dtypes[i - 1]) for i in indexes}
    out_dtype = np.result_type(*dtypes) if len(dtypes) > 1 else dtypes.pop()
    try:
        data = ds.read(indexes, window=window, out_shape=(len(indexes), *shape), resampling=method,
                       out_dtype=out_dtype)
        if plan.mask == "per_dataset":
            valid = ds.read_masks(plan.indexes[0], window=window, out_shape=shape, resampling=method) > 0
        else:
            valid = _validity(ds, plan, data, shape, method, 1)
    except RasterioError as exc:
        raise InvalidInput(f"the TIFF's pixel data cannot be decoded (corrupt or truncated): {_gdal_message(exc)}") from None
    if plan.alpha:
        data = data[:-1]
    return data, valid


def _numpy_average(ds: rasterio.DatasetReader, indexes: list[int], shape: tuple[int, int],
                   method: Resampling) -> bool:
    """Whether to average in numpy (average.py) rather than through GDAL's decimating RasterIO.

    Yes for a true decimation of the full-resolution pixels; no when an overview at
    least as fine as the output exists (GDAL then reads that small level: already cheap).
    """
    out_h, out_w = shape
    if method != Resampling.average or out_h > ds.height or out_w > ds.width or shape == (ds.height, ds.width):
        return False
    if any(ds.dtypes[i - 1] not in average.SUPPORTED for i in indexes):
        return False
    block_h, block_w = ds.block_shapes[0]
    pixel_bytes = sum(np.dtype(ds.dtypes[i - 1]).itemsize for i in indexes)
    if block_w >= ds.width and block_h * ds.width * pixel_bytes > average.MAX_WINDOW_BYTES:
        return False  # a huge strip (one strip for the whole image): no window of it can be decoded alone
    factors = ds.overviews(indexes[0])
    return not any(-(-ds.width // f) >= out_w and -(-ds.height // f) >= out_h for f in factors)


@contextmanager
def _handle(name: str) -> Iterator[rasterio.DatasetReader]:
    """A dataset handle of its own for one thread, under the read settings."""
    with rasterio.Env(**GDAL_OPTIONS), rasterio.open(name, driver="GTiff") as handle:
        yield handle


def _read_rows(ds: rasterio.DatasetReader, shape: tuple[int, int], threads: int, read) -> np.ndarray:
    """Call read(dataset, window, rows) for horizontal bands of the output, in threads, and stack them."""
    height = shape[0]
    parts = max(1, min(threads, height // MIN_ROWS_PER_THREAD))
    if parts == 1:
        return read(ds, None, height)
    bounds = [round(height * i / parts) for i in range(parts + 1)]
    scale = ds.height / height

    def band(i: int) -> np.ndarray:
        r0, r1 = bounds[i], bounds[i + 1]
        window = Window(0, r0 * scale, ds.width, (r1 - r0) * scale)
        with rasterio.Env(**GDAL_OPTIONS), rasterio.open(ds.name, driver="GTiff") as handle:
            return read(handle, window, r1 - r0)

    with ThreadPoolExecutor(parts) as pool:
        pieces = list(pool.map(band, range(parts)))
    out = np.empty(pieces[0].shape[:-2] + shape, pieces[0].dtype)
    for i, piece in enumerate(pieces):
        out[..., bounds[i]:bounds[i + 1], :] = piece
    return out


def _read_nearest(ds: rasterio.DatasetReader, shape: tuple[int, int], read) -> np.ndarray:
    """Nearest-neighbour decimation by reading full-resolution row windows and picking pixels.

    GDAL's own nearest-neighbour RasterIO was measured at 30-120 s on a 100 MB tiled
    DEFLATE file (it revisits blocks per output pixel); decoding each block once and
    indexing in numpy takes under a second. Memory: one window of about 32 MB.
    """
    out_h, out_w = shape
    rows = np.minimum(((np.arange(out_h) + 0.5) * ds.height / out_h).astype(np.int64), ds.height - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * ds.width / out_w).astype(np.int64), ds.width - 1)
    bytes_per_row = ds.width * ds.count * 8
    step = max(ds.block_shapes[0][0], (32 << 20) // max(1, bytes_per_row))
    pieces = []
    for start in range(0, ds.height, step):
        wanted = rows[(rows >= start) & (rows < start + step)]
        if len(wanted) == 0:
            continue
        first, last = int(wanted[0]), int(wanted[-1])
        block = read(Window(0, first, ds.width, last - first + 1))
        pieces.append(block[..., wanted - first, :][..., cols])
    return np.concatenate(pieces, axis=-2)


def _validity(ds, plan: BandPlan, data: np.ndarray, shape: tuple[int, int], method: Resampling,
              threads: int) -> np.ndarray | None:
    if plan.mask == "alpha":
        return data[-1] > 0
    if plan.mask == "per_dataset":
        index = plan.indexes[0]
        if method == Resampling.nearest:
            return _read_nearest(ds, shape, lambda window: ds.read_masks(index, window=window)) > 0
        return _read_rows(ds, shape, threads, lambda d, window, rows: d.read_masks(
            index, window=window, out_shape=(rows, shape[1]), resampling=method)) > 0
    if plan.mask == "nodata":
        # GDAL's mask-aware average yields nodata only where no source pixel was valid,
        # so the read values carry the mask: no second pass over the file.
        valid = None
        for k, index in enumerate(plan.indexes):
            invalid = invalid_mask(data[k], ds.nodatavals[index - 1])
            if invalid is None:
                return None
            valid = ~invalid if valid is None else valid | ~invalid
        return None if valid is None or valid.all() else valid
    return None


def _gdal_message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
