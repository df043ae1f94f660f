"""Area-average decimation in numpy, computing what GDAL's `average` resampling computes.

GDAL's decimating RasterIO with `average` visits every source pixel through a generic
weighted loop in double precision, on one core per handle: on a 13000^2 tiled DEFLATE
DEM it took 1.5-2.8 s where decoding the tiles alone takes 0.7-1.1 s. Here the blocks are
decoded once, in full-resolution row windows aligned to them, each window in a thread
through its own dataset handle, and the average is two separable weighted sums that
release the GIL: over rows with in-place numpy adds (one pass over the window, mostly
plain adds), over columns with small banded matrix products (BLAS).

The weights are GDAL's (GDALResampleChunk_AverageOrRMS, GDAL >= 3.1): output pixel j
covers source [j * r, (j + 1) * r) with r = source size / output size; the first and
last source pixels it touches weigh the fraction they overlap, the ones between 1,
and the weights of the two axes multiply. Masked pixels (nodata, NaN, internal mask,
alpha = 0) are left out of both the weighted sum and the total weight; an output pixel
without any valid source pixel is invalid. Integer results are rounded half up, as
GDAL does. Results equal GDAL's except where the exact average is within float noise
of a .5 tie, where they may differ by 1 (tests/test_processing_average.py).

One deliberate difference: NaN in a float band without a declared nodata value is
left out of the average too (GDAL, whose mask says "all valid" there, lets one NaN
turn its whole output pixel into NaN).

Memory: per thread, a window of about WINDOW_BYTES of source pixels and its masks,
plus row sums of SUB_BYTES; never the full raster.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

WINDOW_BYTES = 16 << 20  # source bytes decoded per window (all bands), at least one row of blocks
MAX_WINDOW_BYTES = 64 << 20  # a row of blocks larger than this is read in column chunks
SUB_BYTES = 8 << 20  # float32 row sums formed before each column pass
COLUMN_GROUP = 24  # output columns per banded matrix product (8..48 measured: 16-32 best)
EPS = 1e-8  # GDAL's epsilon against floating-point noise in the footprint bounds
SUPPORTED = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


@dataclass(frozen=True)
class Axis:
    """GDAL's average footprint of each output pixel along one axis.

    Output pixel j takes source pixels n0[j] .. n1[j] - 1: the first weighs first[j],
    the last last[j] (when there are two or more), the ones between 1; total[j] is
    the sum of the weights.
    """

    n0: np.ndarray
    n1: np.ndarray
    first: np.ndarray
    last: np.ndarray
    total: np.ndarray

    def weight(self, j: int, i: int) -> float:
        """The weight of source pixel i (within j's footprint) for output pixel j."""
        n0, n1 = int(self.n0[j]), int(self.n1[j])
        if i == n0:
            return float(self.first[j])
        if i == n1 - 1:
            return float(self.last[j])
        return 1.0

    def span(self, j: int, start: int, stop: int) -> tuple[int, int, float, float]:
        """The part of j's footprint within source start .. stop - 1: (a, b, weight of a, weight of b - 1)."""
        a, b = max(int(self.n0[j]), start), min(int(self.n1[j]), stop)
        return a, b, self.weight(j, a), self.weight(j, b - 1)


def axis_footprints(src: int, dst: int) -> Axis:
    """GDAL's footprints for decimating `src` pixels to `dst` (dst <= src) over the whole extent.

    Args:
        src: source size along the axis.
        dst: output size along the axis.
    Returns:
        an Axis, from GDAL's own float64 formulas (ratio, epsilon, clamping).
    """
    ratio = src / dst
    j = np.arange(dst, dtype=np.float64)
    f0 = j * ratio
    f1 = (j + 1) * ratio
    n0 = (f0 + EPS).astype(np.int64)
    n1 = np.ceil(f1 - EPS).astype(np.int64)
    n1 = np.where(n1 == n0, n0 + 1, n1)
    n1 = np.minimum(n1, src)
    single = n1 == n0 + 1
    first = np.where(single, 1.0, 1.0 - (f0 - n0))
    last = 1.0 - (n1 - f1)
    total = np.where(single, first, first + (n1 - n0 - 2) + last)
    return Axis(n0, n1, first, last, total)


def _meeting(axis: Axis, start: int, stop: int) -> range:
    """Output pixels whose footprint meets source pixels start .. stop - 1."""
    return range(int(np.searchsorted(axis.n1, start, side="right")), int(np.searchsorted(axis.n0, stop, side="left")))


def column_blocks(axis: Axis, c0: int, c1: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """Banded weight matrices for source columns c0 .. c1 - 1.

    Returns (j0, j1, a, b, W): output columns j0 .. j1 - 1 are columns a .. b - 1 of the
    window (relative to c0) times W, a (b - a, j1 - j0) float32 matrix that also divides
    by each output column's total weight.
    """
    js = _meeting(axis, c0, c1)
    blocks = []
    for g0 in range(js.start, js.stop, COLUMN_GROUP):
        j = np.arange(g0, min(g0 + COLUMN_GROUP, js.stop))
        n0, n1 = axis.n0[j], axis.n1[j]
        lo, hi = np.maximum(n0, c0), np.minimum(n1, c1)
        a, b = int(lo[0]), int(hi[-1])
        w = np.zeros((b - a, len(j)), np.float64)
        col = np.arange(len(j))
        for t in range(int((hi - lo).max())):
            inside = lo + t < hi
            w[(lo + t - a)[inside], col[inside]] = 1.0
        w[n0[n0 >= c0] - a, col[n0 >= c0]] = axis.first[j][n0 >= c0]
        tail = (n1 - n0 >= 2) & (n1 <= c1)
        w[n1[tail] - 1 - a, col[tail]] = axis.last[j][tail]
        blocks.append((int(j[0]), int(j[-1]) + 1, a - c0, b - c0, (w / axis.total[j]).astype(np.float32)))
    return blocks


def _row_sums(data: np.ndarray, axis: Axis, js: range, s0: int, s1: int, out: np.ndarray) -> None:
    """out[:, i] = GDAL-weighted sum of the window's rows in output row js[i]'s footprint.

    data: (bands, rows, cols) holding source rows s0 .. s1 - 1; out: float32
    (bands, len(js), cols). In-place adds of whole rows: one pass over the window.
    """
    tmp = None
    for i, j in enumerate(js):
        a, b, wa, wb = axis.span(j, s0, s1)
        acc = out[:, i]
        if wa == 1.0:
            np.copyto(acc, data[:, a - s0], casting="unsafe")
        else:
            np.multiply(data[:, a - s0], np.float32(wa), out=acc, casting="unsafe")
        for r in range(a + 1, b - 1):
            np.add(acc, data[:, r - s0], out=acc, casting="unsafe")
        if b - a >= 2:
            if wb == 1.0:
                np.add(acc, data[:, b - 1 - s0], out=acc, casting="unsafe")
            else:
                if tmp is None:
                    tmp = np.empty(acc.shape, np.float32)
                np.multiply(data[:, b - 1 - s0], np.float32(wb), out=tmp, casting="unsafe")
                acc += tmp


def column_sums(rows: np.ndarray, blocks, out: np.ndarray) -> None:
    """out (bands, n, out_w) float32 = column-weighted sums of rows (bands, n, cols): banded matmuls."""
    bands, n, width = rows.shape
    flat = rows.reshape(bands * n, width)
    dst = out.reshape(bands * n, out.shape[-1])
    for j0, j1, a, b, w in blocks:
        np.matmul(flat[:, a:b], w, out=dst[:, j0:j1])


@dataclass
class _Plan:
    rows: Axis
    cols: Axis
    windows: list[tuple[int, int]]  # source row ranges, aligned to blocks
    chunks: list[tuple[int, int, list, np.ndarray]]  # source columns, their column blocks, coverage
    shares: np.ndarray  # per output row: how many (window, chunk) pairs its sums come from


def _plan(size: tuple[int, int], shape: tuple[int, int], block: tuple[int, int], bytes_per_pixel: int) -> _Plan:
    (height, width), (out_h, out_w) = size, shape
    rows, cols = axis_footprints(height, out_h), axis_footprints(width, out_w)
    bh, bw = max(1, block[0]), max(1, block[1])
    # Columns are split only when one row of tiles exceeds the limit (a strip is decoded
    # whole whatever the window, so striped files are never split).
    chunk_w = width
    if bw < width and bh * width * bytes_per_pixel > MAX_WINDOW_BYTES:
        chunk_w = max(bw, MAX_WINDOW_BYTES // (bh * bytes_per_pixel) // bw * bw)
    window_h = max(bh, WINDOW_BYTES // max(1, chunk_w * bytes_per_pixel) // bh * bh)
    windows = [(r, min(height, r + window_h)) for r in range(0, height, window_h)]
    chunks = []
    for c0 in range(0, width, chunk_w):
        blocks = column_blocks(cols, c0, min(width, c0 + chunk_w))
        coverage = np.zeros(out_w, np.float32)  # share of each output column's weight in this chunk
        for j0, j1, _, _, w in blocks:
            coverage[j0:j1] += w.sum(axis=0)
        chunks.append((c0, min(width, c0 + chunk_w), blocks, coverage))
    shares = np.zeros(out_h, np.int32)
    for s0, s1 in windows:
        r = _meeting(rows, s0, s1)
        shares[r.start:r.stop] += 1
    return _Plan(rows, cols, windows, chunks, shares)


class _Output:
    """The result being filled: complete rows are finished in place, shared rows summed first."""

    def __init__(self, plan: _Plan, bands: int, shape: tuple[int, int], dtype: np.dtype, mask_kind: str,
                 nodatas: list, alpha_pos: int | None):
        self.plan, self.bands, self.dtype = plan, bands, dtype
        self.mask_kind, self.nodatas, self.alpha_pos = mask_kind, nodatas, alpha_pos
        self.data = np.empty((bands,) + tuple(shape), dtype)
        self.valid = np.ones(shape, bool) if mask_kind != "none" else None
        self.pending: dict[int, list] = {}

    def finish(self, j0: int, num: np.ndarray, den: np.ndarray | None, mask_of: list[int]) -> None:
        """Write output rows j0 .. j0 + n - 1 from complete sums (float32, divided by column totals).

        num: (bands, n, out_w), overwritten; den: (masks, n, out_w) valid weights or None.
        """
        n = num.shape[1]
        scale = (1.0 / self.plan.rows.total[j0:j0 + n]).astype(np.float32)[None, :, None]
        num *= scale
        frac = None
        if den is not None:
            frac = den * scale  # share of the footprint's weight that is valid
            for k in range(self.bands):
                if mask_of[k] >= 0:
                    f = frac[mask_of[k]]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        np.divide(num[k], f, out=num[k])
                    num[k][f <= 0] = _fill(self.dtype, self.nodatas[k])
        _store(num, self.data[:, j0:j0 + n])
        if self.mask_kind == "alpha" and self.alpha_pos is not None:
            self.valid[j0:j0 + n] = self.data[self.alpha_pos, j0:j0 + n] > 0  # GDAL's averaged alpha > 0
        elif frac is None or (self.mask_kind == "nodata" and min(mask_of) < 0):
            return
        elif self.mask_kind == "per_dataset":
            self.valid[j0:j0 + n] = frac[0] * 255.0 + 0.5 >= 1.0  # GDAL's averaged 0/255 mask, rounded, > 0
        else:
            np.any(frac > 0, axis=0, out=self.valid[j0:j0 + n])  # some band has a valid source pixel

    def add(self, j0: int, num: np.ndarray, den: np.ndarray | None, mask_of: list[int]) -> list:
        """Finish the rows whose sums are complete; return the others as (row, num, den) to merge."""
        n = num.shape[1]
        whole = self.plan.shares[j0:j0 + n] == 1
        inner = np.flatnonzero(whole)
        if len(inner):  # contiguous: only a window's first and last rows can be shared
            a, b = int(inner[0]), int(inner[-1]) + 1
            self.finish(j0 + a, num[:, a:b], None if den is None else den[:, a:b], mask_of)
        return [(j0 + int(i), num[:, i].copy(), None if den is None else den[:, i].copy())
                for i in np.flatnonzero(~whole)]

    def merge(self, shared: list, mask_of: list[int]) -> None:
        """Sum the shares of rows met by several windows; finish each when all have come."""
        for j, num, den in shared:
            entry = self.pending.get(j)
            if entry is None:
                entry = self.pending[j] = [num, den, 0]
            else:
                entry[0] += num
                if den is not None:
                    entry[1] += den
            entry[2] += 1
            if entry[2] == self.plan.shares[j]:
                del self.pending[j]
                self.finish(j, entry[0][:, None], None if entry[1] is None else entry[1][:, None], mask_of)


def decimate(handle_ctx, indexes: list[int], size: tuple[int, int], block: tuple[int, int],
             shape: tuple[int, int], dtype, mask_kind: str, nodatas: list, alpha_pos: int | None,
             threads: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Average-decimate bands of a raster to `shape`, as GDAL's average RasterIO does.

    Args:
        handle_ctx: () -> a context manager giving a new dataset handle; each window is
            read through its own (GDAL handles are not shared between threads).
        indexes: 1-based bands to read (the alpha band among them when alpha_pos is set).
        size: (height, width) of the source.
        block: (height, width) of its blocks; windows are aligned to them.
        shape: (out_h, out_w), neither larger than the source's.
        dtype: dtype to read and return (float64 is best read as float32).
        mask_kind: none | nodata | per_dataset | alpha (read.BandPlan.mask).
        nodatas: each band's nodata value or None.
        alpha_pos: position of the alpha band in indexes, for mask_kind alpha.
        threads: windows decoded at once.
    Returns:
        (data (bands, out_h, out_w) of dtype, validity (out_h, out_w) bool or None when
        every output pixel is valid).
    """
    dtype = np.dtype(dtype)
    bands = len(indexes)
    plan = _plan(size, shape, block, bands * dtype.itemsize)
    output = _Output(plan, bands, shape, dtype, mask_kind, nodatas, alpha_pos)

    def window(s0: int, s1: int):
        with handle_ctx() as handle, one_blas_thread():
            return _window(plan, output, handle, indexes, dtype, mask_kind, nodatas, alpha_pos, s0, s1)

    if threads <= 1 or len(plan.windows) == 1:
        for s0, s1 in plan.windows:
            output.merge(*window(s0, s1))
    else:
        with ThreadPoolExecutor(min(threads, len(plan.windows))) as pool:
            futures = [pool.submit(window, s0, s1) for s0, s1 in plan.windows]
            try:
                for future in as_completed(futures):
                    output.merge(*future.result())
            finally:
                for f in futures:
                    f.cancel()
    assert not output.pending, "every output row gets all its shares"
    release_free_memory()
    valid = output.valid
    return output.data, (None if valid is None or valid.all() else valid)


def release_free_memory() -> None:
    """Give the heap pages freed by the windows back to the OS (glibc keeps them otherwise).

    The threads' window buffers (tens of MB each) land in per-thread malloc arenas that
    glibc does not shrink by itself; measured on the 1 GB file: 262 MB resident after the
    read, 182 MB after this. Later stages would otherwise peak on top of them.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@functools.lru_cache(maxsize=1)
def _blas_thread_setter():
    """OpenBLAS's per-thread thread count setter in numpy's own OpenBLAS (>= 0.3.27), or None."""
    pattern = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs", "*openblas*.so*")
    for path in glob.glob(pattern):
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.restype = ctypes.c_int
        setter.argtypes = [ctypes.c_int]
        return setter
    return None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run this thread's matrix products on this thread only.

    The windows already keep every core busy; OpenBLAS would otherwise spread each
    product over its own pool, whose spinning threads were measured to double the CPU
    time. Thread-local, so nothing else in the process is affected.
    """
    setter = _blas_thread_setter()
    previous = setter(1) if setter is not None else None
    try:
        yield
    finally:
        if setter is not None and previous is not None and previous > 0:
            setter(previous)


def _window(plan: _Plan, output: _Output, handle, indexes: list[int], dtype: np.dtype, mask_kind: str,
            nodatas: list, alpha_pos: int | None, s0: int, s1: int) -> tuple[list, list[int]]:
    """Read source rows s0 .. s1 - 1 and average them into `output`.

    Rows whose footprint lies within the window are finished in place (windows write
    disjoint rows); returns the shares of rows it has in common with other windows.
    """
    from rasterio.windows import Window

    js = _meeting(plan.rows, s0, s1)
    bands, out_w = len(indexes), plan.cols.n0.shape[0]
    single = len(plan.chunks) == 1
    total = total_den = None
    shared: list = []
    mask_of = [-1] * bands
    for c0, c1, blocks, coverage in plan.chunks:
        win = Window(c0, s0, c1 - c0, s1 - s0)
        data = handle.read(indexes, window=win, out_dtype=dtype)
        mask_of, masks = _masks(handle, data, win, indexes, mask_kind, nodatas, alpha_pos)
        n_masks = 0 if masks is None else len(masks)
        if masks is not None and masks.all():
            masks = None  # nothing invalid here: the valid weight is the whole weight
        elif masks is not None:
            _zero_masked(data, mask_of, masks)
        width = c1 - c0
        step = max(1, SUB_BYTES // (max(1, bands) * width * 4))
        rows = np.empty((bands, min(step, len(js)), width), np.float32)
        mrows = np.empty((n_masks, rows.shape[1], width), np.float32) if masks is not None else None
        for i in range(0, len(js), step):
            part = js[i:i + step]
            n = len(part)
            alloc = np.empty if single else np.zeros  # chunks add up; a chunk's blocks fill only its columns
            num = alloc((bands, n, out_w), np.float32)
            den = alloc((n_masks, n, out_w), np.float32) if n_masks else None
            if not single and total is None:
                total = np.zeros((bands, len(js), out_w), np.float32)
                total_den = np.zeros((n_masks, len(js), out_w), np.float32) if n_masks else None
            _row_sums(data, plan.rows, part, s0, s1, rows[:, :n])
            column_sums(np.ascontiguousarray(rows[:, :n]), blocks, num)
            if mrows is not None:
                _row_sums(masks, plan.rows, part, s0, s1, mrows[:, :n])
                column_sums(np.ascontiguousarray(mrows[:, :n]), blocks, den)
            elif den is not None:
                den[:] = (_row_weights(plan.rows, part, s0, s1)[:, None] * coverage)[None]
            if single:
                shared += output.add(part.start, num, den, mask_of)
            else:
                total[:, i:i + n] += num
                if den is not None:
                    total_den[:, i:i + n] += den
        del data, masks
    if not single and len(js):
        shared += output.add(js.start, total, total_den, mask_of)
    return shared, mask_of


def _row_weights(axis: Axis, js: range, s0: int, s1: int) -> np.ndarray:
    """Per output row: the summed weight of its footprint's rows within s0 .. s1 - 1."""
    out = np.empty(len(js), np.float32)
    for i, j in enumerate(js):
        a, b, wa, wb = axis.span(j, s0, s1)
        out[i] = wa if b - a == 1 else wa + wb + (b - a - 2)
    return out


def _masks(handle, data: np.ndarray, win, indexes: list[int], mask_kind: str, nodatas: list,
           alpha_pos: int | None) -> tuple[list[int], np.ndarray | None]:
    """The validity masks of a window as one uint8 array (1 = valid), and which one each band
    uses (-1 = none); None when no band has a mask."""
    bands = len(indexes)
    if mask_kind in ("per_dataset", "alpha") and (mask_kind == "per_dataset" or alpha_pos is not None):
        shared = [0 if k != alpha_pos else -1 for k in range(bands)]
        source = handle.read_masks(indexes[0], window=win) if mask_kind == "per_dataset" else data[alpha_pos]
        masks = np.empty((1,) + source.shape, np.uint8)
        np.greater(source, 0, out=masks[0].view(bool))
        return shared, masks
    if mask_kind == "nodata":
        mask_of = []
        for k in range(bands):
            can_be_invalid = nodatas[k] is not None or data.dtype.kind == "f"
            mask_of.append(sum(m >= 0 for m in mask_of) if can_be_invalid else -1)
        count = sum(m >= 0 for m in mask_of)
        if not count:
            return mask_of, None
        masks = np.empty((count,) + data.shape[1:], np.uint8)
        for k in range(bands):
            if mask_of[k] >= 0:
                _valid_values(data[k], nodatas[k], masks[mask_of[k]].view(bool))
        return mask_of, masks
    return [-1] * bands, None


def _zero_masked(data: np.ndarray, mask_of: list[int], masks: np.ndarray) -> None:
    """Set the masked pixels (nodata, NaN, mask 0) of each band with a mask to 0, in place."""
    for k in range(data.shape[0]):
        if mask_of[k] >= 0:
            np.copyto(data[k], 0, where=masks[mask_of[k]] == 0)


def _valid_values(band: np.ndarray, nodata, out: np.ndarray) -> None:
    """out = True where a pixel is valid: not nodata, not NaN."""
    if band.dtype.kind == "f":
        np.isnan(band, out=out)
        np.logical_not(out, out=out)
        if nodata is not None and not np.isnan(nodata):
            out &= band != nodata
    else:
        np.not_equal(band, nodata, out=out)


def _fill(dtype: np.dtype, nodata):
    """What an output pixel without valid source pixels holds: the nodata value when it fits."""
    if nodata is None:
        return np.nan if dtype.kind == "f" else 0
    if dtype.kind != "f":
        info = np.iinfo(dtype)
        if np.isnan(nodata) or not info.min <= nodata <= info.max:
            return 0
    return nodata


def _store(values: np.ndarray, out: np.ndarray) -> None:
    """Float averages into the output: integers rounded half up and clipped, as GDAL does.

    values is overwritten.
    """
    if out.dtype.kind == "f":
        np.copyto(out, values, casting="unsafe")
        return
    info = np.iinfo(out.dtype)
    if out.dtype.itemsize >= 4:  # float32 cannot hold 2**31 - 1 or 2**32 - 1: clip in float64
        values = values.astype(np.float64)
    values += 0.5
    if info.min < 0:
        np.floor(values, out=values)  # unsigned: truncation below is the floor already
    np.clip(values, info.min, info.max, out=values)  # NaN stays NaN: only masked pixels, already filled
    np.copyto(out, values, casting="unsafe")
