"""Thin readers over an open rasterio dataset: which bands, decimated pixels, validity, sidecars.

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
import math
import re
from xml.etree import ElementTree
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoworker.errors import BadParams, InvalidInput
from geoworker.processing import average, georef
from geoworker.processing.metadata import colour_interpretation
from geoworker.processing.render import invalid_mask
from geoworker.processing.style import MAX_CLASSES, looks_categorical


# GDAL's block cache defaults to 5% of RAM; a decimated read needs only a few rows of
# blocks, and a large cache is what would make RSS grow with the input size.
# The directory listing on open stays on (GDAL's default): it is how GDAL finds the
# sidecars a GIS user keeps beside a GeoTIFF (.tfw/.tifw/.wld world files, .aux.xml with
# nodata, CRS and colour interpretation, .msk masks, .ovr overviews); see sidecar_files.
GDAL_OPTIONS = {
    "GDAL_CACHEMAX": 64,  # MB
}
MIN_ROWS_PER_THREAD = 128
PROBE_WINDOWS = 64  # full-resolution windows a class raster is recognised from
PROBE_WINDOW = 256  # their side, in pixels (at most one block each)
# words in a band's description that say it holds classes, not measurements
CATEGORICAL_WORDS = re.compile(r"(?i)\b(class(es|ification)?|categor(y|ies|ical)|land ?cover|land ?use|lulc|labels?|"
                               r"mask|zones?)\b")


def gdal_env() -> rasterio.Env:
    """The GDAL settings every read runs under."""
    return rasterio.Env(**GDAL_OPTIONS)


def sidecar_files(path: str | Path) -> list[Path]:
    """The files beside a TIFF that GDAL reads with it, as GDAL itself lists them.

    World files (.tfw, .tifw, .wld), PAM metadata (.aux.xml: nodata, CRS, colour
    interpretation, statistics), external masks (.msk) and overviews (.ovr): whatever
    GDAL would use for this file when opened here, and nothing else.

    Args:
        path: a TIFF on the local file system.
    Returns:
        the sidecars' paths (existing files, the TIFF itself excluded); [] when GDAL cannot
        open the file at all (the job will say why).
    """
    path = Path(path)
    try:
        with gdal_env(), rasterio.open(path, driver="GTiff") as ds:
            names = list(ds.files)
    except (RasterioError, georef.CPLE_BaseError):
        return []
    own = path.resolve()
    return [Path(name) for name in names if Path(name).resolve() != own and Path(name).is_file()]


@dataclass(frozen=True)
class BandPlan:
    """Which bands to read and how to render them."""

    kind: str  # "rgb" | "grey" | "palette" | "categorical"
    indexes: tuple[int, ...]  # 1-based data bands to render
    alpha: int | None = None  # 1-based alpha band, read alongside
    mask: str = "none"  # none | nodata | per_dataset | alpha
    warnings: tuple[str, ...] = field(default=())
    classes: tuple[int, ...] = ()  # "categorical": the class values the file was recognised by
    class_names: tuple[tuple[int, str], ...] = ()  # (value, name) from the band's attribute table
    class_colours: tuple[tuple[int, tuple[int, int, int]], ...] = ()  # (value, (r, g, b)) from the same table


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


def plan_bands(ds: rasterio.DatasetReader, bands: tuple[int, ...] | None, detect_classes: bool = False) -> BandPlan:
    """Choose the bands to render from the file's colour interpretation.

    Args:
        ds: an open dataset.
        bands: 1-based indexes the caller asked for, or None.
        detect_classes: recognise a class raster (few distinct values, or a band described
            as classes) and plan it as "categorical"; off when a stretch or colormap was asked for.
    Returns:
        a BandPlan: bands marked red, green and blue -> RGB in that order (a BGR file too),
        else 3+ bands -> RGB of the first three (or `bands`); an alpha band becomes
        transparency; one palette band -> its colours; one class band -> categorical;
        else grey of band 1.
    """
    interp = colour_interpretation(ds)
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
        indexes = _rgb_bands(interp, data)
        if len(data) > 3:
            warnings.append(f"the file has {len(data)} data bands; bands {list(indexes)} are rendered as RGB "
                            "(set the bands parameter to choose others)")
    else:
        indexes = (data[0],)
    palette = (len(indexes) == 1 and interp[indexes[0] - 1] == ColorInterp.palette and _has_colormap(ds, indexes[0]))
    kind = "palette" if palette else ("rgb" if len(indexes) == 3 else "grey")
    classes: tuple[int, ...] = ()
    table = ClassTable({}, {})
    if kind == "grey" and detect_classes:
        table = class_table(ds, indexes[0])
        classes = band_classes(ds, indexes[0], table)
        if classes:
            kind = "categorical"
    return BandPlan(kind, indexes, alpha, _mask_kind(ds, indexes, alpha), tuple(warnings), classes,
                    tuple(sorted(table.names.items())) if classes else (),
                    tuple(sorted(table.colours.items())) if classes else ())


def _rgb_bands(interp: list[ColorInterp], data: list[int]) -> tuple[int, ...]:
    """The bands marked red, green and blue, in that order (BGR and BGRA files); else the first three."""
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    found = [next((b for b in data if interp[b - 1] == c), None) for c in wanted]
    if all(found):
        return tuple(found)
    return tuple(data[:3])


def band_classes(ds: rasterio.DatasetReader, index: int, table: "ClassTable | None" = None) -> tuple[int, ...]:
    """The class values of a band that holds classes (land cover, labels, masks), else ().

    A band is a class raster when it has a table of classes (a raster attribute table with
    names or colours, or category names: see class_table), when its description says so, or when a sample of
    its full-resolution pixels (PROBE_WINDOWS windows spread over the image, at most one
    block each: cheap on any size) holds a few distinct values (see style.looks_categorical).

    Args:
        ds: an open dataset.
        index: the 1-based band.
        table: its class table, when already read.
    Returns:
        the sorted class values (listed in the table or found), or () for a continuous band.
    """
    dtype = np.dtype(ds.dtypes[index - 1])
    if dtype not in (np.uint8, np.uint16):
        return ()
    listed = (class_table(ds, index) if table is None else table).values
    if listed:
        return tuple(v for v in listed if 0 <= v <= np.iinfo(dtype).max)
    described = bool(CATEGORICAL_WORDS.search(ds.descriptions[index - 1] or ""))
    limit = 256 if described else MAX_CLASSES
    values = probe_values(ds, index, limit)
    if values is None:
        return ()
    if described and 1 <= len(values) <= limit:
        return tuple(int(v) for v in values)
    return tuple(int(v) for v in values) if looks_categorical(values) else ()


@dataclass(frozen=True)
class ClassTable:
    """A band's class names and colours, as its attribute table or category names give them."""

    names: dict[int, str]  # value -> name
    colours: dict[int, tuple[int, int, int]]  # value -> (r, g, b), from a RAT's Red/Green/Blue columns

    @property
    def values(self) -> tuple[int, ...]:
        """The class values the table lists (named, coloured or both), sorted."""
        return tuple(sorted(set(self.names) | set(self.colours)))


def class_table(ds: rasterio.DatasetReader, index: int) -> ClassTable:
    """A band's raster attribute table (RAT) or category names, as GDAL keeps them.

    rasterio reads neither; GDAL keeps both for a GeoTIFF in the PAM sidecar (.aux.xml)
    it lists among the dataset's files, which is read here. The value of a RAT row is its
    MinMax (or "Value") column, else Row0Min + row x BinSize; its name the Name column; its
    colour the Red, Green and Blue columns (0-255, or 0-1 as ERDAS writes them).

    Args:
        ds: an open dataset.
        index: the 1-based band.
    Returns:
        the names and colours by class value; both empty when the band has neither.
    """
    none = ClassTable({}, {})
    aux = next((Path(f) for f in ds.files if str(f).lower().endswith(".aux.xml")), None)
    if aux is None:
        return none
    try:
        root = ElementTree.parse(aux).getroot()
    except (ElementTree.ParseError, OSError):
        return none
    band = next((b for b in root.iter("PAMRasterBand") if b.get("band") == str(index)), None)
    if band is None:
        return none
    table = band.find("GDALRasterAttributeTable")
    if table is not None:
        return _rat(table)
    categories = [c.text or "" for c in band.findall("CategoryNames/Category")]
    return ClassTable({value: name for value, name in enumerate(categories) if name.strip()}, {})


# GDAL's field usages (GDALRATFieldUsage)
USAGE_NAME, USAGE_MINMAX, USAGE_RED, USAGE_GREEN, USAGE_BLUE = 2, 5, 6, 7, 8


def _rat(table: ElementTree.Element) -> ClassTable:
    fields = {}
    for f in table.findall("FieldDefn"):
        try:
            fields[int(f.get("index", -1))] = ((f.findtext("Name") or "").strip().lower(), int(f.findtext("Usage") or 0))
        except ValueError:
            continue

    def column(usage: int, *names: str) -> int | None:
        found = next((i for i, (n, u) in fields.items() if u == usage), None)
        return found if found is not None else next((i for i, (n, u) in fields.items() if n in names), None)

    value_col = column(USAGE_MINMAX, "value", "class_value", "code")
    name_col = column(USAGE_NAME, "class", "class_name", "name", "label")
    rgb_cols = [column(USAGE_RED, "red"), column(USAGE_GREEN, "green"), column(USAGE_BLUE, "blue")]
    if name_col is None and None in rgb_cols:
        return ClassTable({}, {})
    try:
        row0, bin_size = float(table.get("Row0Min", 0)), float(table.get("BinSize", 1))
    except ValueError:
        row0, bin_size = 0.0, 1.0
    names, raw = {}, {}
    for row in table.findall("Row"):
        cells = [c.text or "" for c in row.findall("F")]
        try:
            value = float(cells[value_col]) if value_col is not None else row0 + int(row.get("index", 0)) * bin_size
        except (IndexError, ValueError):
            continue
        if not value.is_integer():
            continue
        if name_col is not None and name_col < len(cells) and (name := cells[name_col].strip()):
            names[int(value)] = name[:100]
        if None not in rgb_cols:
            try:
                rgb = tuple(float(cells[c]) for c in rgb_cols)
            except (IndexError, ValueError):
                continue
            if all(math.isfinite(c) for c in rgb):  # "nan" parses, and would not round
                raw[int(value)] = rgb
    # colours as fractions (ERDAS Imagine) or as 0-255
    scale = 255.0 if raw and max(max(c) for c in raw.values()) <= 1.0 else 1.0
    colours = {v: tuple(int(min(255.0, max(0.0, round(c * scale)))) for c in rgb) for v, rgb in raw.items()}
    return ClassTable(names, colours)


def probe_values(ds: rasterio.DatasetReader, index: int, limit: int) -> np.ndarray | None:
    """The distinct valid values in windows spread over a band, at full resolution.

    Args:
        ds: an open dataset.
        index: the 1-based band.
        limit: stop as soon as more distinct values than this are seen.
    Returns:
        sorted distinct values (nodata left out), or None when more than `limit` were seen or
        the file's blocks are too large to sample cheaply.
    """
    block_h, block_w = ds.block_shapes[index - 1]
    if block_h * block_w * np.dtype(ds.dtypes[index - 1]).itemsize > average.MAX_WINDOW_BYTES:
        return None  # one huge strip: any window decodes the whole image
    win_h, win_w = min(block_h, PROBE_WINDOW, ds.height), min(block_w, PROBE_WINDOW, ds.width)
    rows_of_blocks, cols_of_blocks = -(-ds.height // block_h), -(-ds.width // block_w)
    side = max(1, int(PROBE_WINDOWS ** 0.5))
    rows = sorted({round(i * (rows_of_blocks - 1) / max(1, side - 1)) for i in range(side)})
    cols = sorted({round(i * (cols_of_blocks - 1) / max(1, side - 1)) for i in range(side)})
    nodata = ds.nodatavals[index - 1]
    seen = np.zeros(1 << (8 * np.dtype(ds.dtypes[index - 1]).itemsize), bool)
    for r in rows:
        for c in cols:
            row0, col0 = r * block_h, c * block_w
            window = Window(col0, row0, min(win_w, ds.width - col0), min(win_h, ds.height - row0))
            seen[ds.read(index, window=window).ravel()] = True
            if nodata is not None and float(nodata).is_integer() and 0 <= nodata < len(seen):
                seen[int(nodata)] = False
            if np.count_nonzero(seen) > limit:
                return None
    return np.flatnonzero(seen)


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
        resampling: a rasterio Resampling name; palettes and class rasters always use nearest.
        threads: read this many horizontal bands of the output at once, each through its
            own handle (the decimating RasterIO of one handle runs on one core).
    Returns:
        (data of shape (n, h, w), valid boolean mask or None when all pixels are valid).
        A pixel is valid when any source pixel under it is valid.
    """
    # colour indexes and class values must never be averaged into values that mean something else
    method = Resampling.nearest if plan.kind in ("palette", "categorical") else Resampling[resampling]
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
    except (RasterioError, georef.CPLE_BaseError) as exc:
        raise InvalidInput(f"the TIFF's pixel data cannot be decoded (corrupt or truncated): {gdal_message(exc)}") from None
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
        raise InvalidInput(f"the TIFF's pixel data cannot be decoded (corrupt or truncated): {gdal_message(exc)}") from None
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


def gdal_message(exc: BaseException) -> str:
    """One short line from a GDAL/PROJ error: what failed and why, without dumps or server paths.

    rasterio raises "Read failed. See previous exception for details." with GDAL's own
    errors chained behind it: the first specific message (which block) and the innermost
    one (the codec's reason) are kept. PROJJSON and WKT dumps become "<a CRS>", directories
    are left off file names.

    Args:
        exc: what rasterio raised.
    Returns:
        at most 300 characters.
    """
    parts: list[str] = []
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        text = " ".join(str(link).split())
        if text and "See previous exception" not in text and text not in parts:
            parts.append(text)
        link = link.__cause__ or link.__context__
    if not parts:
        return type(exc).__name__
    text = parts[0] if len(parts) == 1 else f"{parts[0]} ({parts[-1]})"
    text = re.sub(r"""['`"]?(\{ ?"\$schema".*?\}|[A-Z]+CRS\[.*?\]|PROJCS\[.*?\]|GEOGCS\[.*?\])['`"]?(?= to |$)""",
                  "<a CRS>", text)
    text = re.sub(r"(?<![\w.])/(?:[^\s/:'\"]+/)+([^\s/:'\"]+)", r"\1", text)
    return text[:300]
