"""GDAL's `average` overviews of 8-bit images, one level from the previous, streamed in rows.

GDAL's COG driver halves each level (sizes rounded down: 1301 -> 650 -> 325 -> 162) and
computes each overview from the previous one with its area-average footprints
(average.axis_footprints): output pixel j covers source [j * r, (j + 1) * r) with
r = source size / output size, the first and last source pixels weighing the part they
overlap. When the size halves exactly (r = 2), that is the mean of each 2 x 2 block.
Invalid source pixels (mask 0) are left out of the sum and of the weight; an output
pixel with no valid source pixel is invalid (0). Results are rounded half up, as GDAL
rounds. Measured against GDAL's own DEFLATE COG of the same masked image: the masks are
equal, the pixels equal where r = 2 and within 1 grey level where it is not
(tests/test_cog_jpeg.py).

`Halver` takes the rows of one level as they come (any number at a time) and returns the
rows of the next level as soon as their footprint is complete, keeping only the few
source rows that the next output row still needs.
"""

from __future__ import annotations

import numpy as np

from geoworker.processing.average import axis_footprints, column_blocks, column_sums, one_blas_thread

CHUNK = 32  # output rows computed at a time (strips of source rows a few MB big)


def level_sizes(width: int, height: int, count: int) -> list[tuple[int, int]]:
    """(width, height) of the full resolution and each overview, halved and rounded down as GDAL's COG does.

    Args:
        width, height: the full-resolution size.
        count: how many overviews.
    Returns:
        count + 1 sizes, full resolution first.
    """
    sizes = [(width, height)]
    for _ in range(count):
        w, h = sizes[-1]
        sizes.append((max(1, w // 2), max(1, h // 2)))
    return sizes


class _Taps:
    """GDAL's footprint of each output pixel along one axis, as taps t = 0..K-1 on source n0[j] + t.

    n0[j] is 2j + d with d constant over runs of j (d = 0 throughout when the size halves
    exactly; it steps up once every 1 / (ratio - 2) pixels otherwise), so each tap of a run
    is a strided slice of the source: no gathers.
    """

    def __init__(self, src: int, dst: int):
        self.src = src
        self.exact_half = src == 2 * dst
        ax = axis_footprints(src, dst)
        self.n0, self.n1, self.total = ax.n0, ax.n1, ax.total.astype(np.float32)
        k = int((ax.n1 - ax.n0).max())
        self.weight = np.zeros((k, dst), np.float32)  # of source n0[j] + t; 0 past the footprint
        for t in range(k):
            i = ax.n0 + t
            self.weight[t] = np.where(i < ax.n1, np.where(t == 0, ax.first, np.where(i == ax.n1 - 1, ax.last, 1.0)), 0)
        d = ax.n0 - 2 * np.arange(dst)
        cuts = np.flatnonzero(np.diff(d)) + 1
        self.runs = [(int(a), int(b), int(d[a])) for a, b in zip(np.r_[0, cuts], np.r_[cuts, dst])]
        self._blocks = None

    def weighted_sum(self, x: np.ndarray, j0: int, j1: int, origin: int, axis: int) -> np.ndarray:
        """Sum over taps of weight * source along `axis` for output pixels j0 .. j1 - 1.

        Args:
            x: the source, whose index 0 along `axis` is source pixel `origin`.
        Returns:
            float32; uint16 when the axis halves exactly and x is uint8 or uint16 (sums of pairs).
        """
        if self.exact_half:
            first = 2 * j0 - origin
            pairs = _slice(x, first, j1 - j0, axis).astype(np.uint16 if x.dtype.itemsize < 4 else np.float32)
            pairs += _slice(x, first + 1, j1 - j0, axis)
            return pairs
        shape = list(x.shape)
        shape[axis] = j1 - j0
        out = np.zeros(shape, np.float32)
        w_shape = [1] * x.ndim
        w_shape[axis] = -1
        for r0, r1, d in self.runs:
            r0, r1 = max(r0, j0), min(r1, j1)
            for t in range(self.weight.shape[0]):
                end = min(r1, (self.src - 1 - d - t) // 2 + 1)  # taps past the last source pixel weigh 0
                if end <= r0:
                    continue
                first = 2 * r0 + d + t - origin
                src = _slice(x, first, end - r0, axis)
                dst = _slice(out, r0 - j0, end - r0, axis, step=1)
                dst += src * self.weight[t, r0:end].reshape(w_shape)
        return out


    def column_means(self, x: np.ndarray) -> np.ndarray:
        """The weighted mean of each output column's footprint, over all of x's columns.

        Args:
            x: (rows, src, bands).
        Returns:
            (rows, dst, bands) float32.
        """
        if self.exact_half:
            m = x[:, 0:2 * len(self.n0):2].astype(np.float32)
            m += x[:, 1:2 * len(self.n0):2]
            m *= 0.5
            return m
        # average.py's banded matrix products over planar rows: the strided taps of
        # pixel-interleaved data run numpy's inner loop over 3 values at a time (3x slower)
        if self._blocks is None:
            self._blocks = column_blocks(axis_footprints(self.src, len(self.n0)), 0, self.src)
        planar = np.ascontiguousarray(np.moveaxis(x, 2, 0), dtype=np.float32)
        out = np.empty((x.shape[2], x.shape[0], len(self.n0)), np.float32)
        with one_blas_thread():
            column_sums(planar, self._blocks, out)
        return np.moveaxis(out, 0, 2)


def _slice(x: np.ndarray, start: int, n: int, axis: int, step: int = 2) -> np.ndarray:
    """n elements of x along axis from start, every `step`."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, start + step * (n - 1) + 1, step)
    return x[tuple(index)]


class Halver:
    """Streams one level's rows into the next level's rows (pixel-interleaved: rows, columns, bands)."""

    def __init__(self, src: tuple[int, int], dst: tuple[int, int], bands: int, masked: bool):
        """Args: src, dst: (width, height) of this level and the next; bands: image bands;
        masked: whether rows come with a validity mask."""
        self.cols, self.rows = _Taps(src[0], dst[0]), _Taps(src[1], dst[1])
        self.dst = dst
        self.bands = bands
        self.masked = masked
        self.data = np.empty((0, src[0], bands), np.uint8)
        self.valid = np.empty((0, src[0]), bool) if masked else None
        self.base = 0  # source row index of self.data[0]
        self.done = 0  # output rows produced so far

    def push(self, data: np.ndarray, valid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Add the next source rows; return the output rows whose footprint is now complete.

        Args:
            data: (n, width, bands) uint8, the rows following those pushed before.
            valid: (n, width) bool, or None when not masked.
        Returns:
            (m, out width, bands) uint8 and (m, out width) bool (None when not masked); m may be 0.
        """
        self.data = np.concatenate([self.data, data]) if len(self.data) else data
        if self.masked:
            self.valid = np.concatenate([self.valid, valid]) if len(self.valid) else valid
        have = self.base + len(self.data)
        stop = int(np.searchsorted(self.rows.n1, have, side="right"))  # rows whose footprint ends by `have`
        start, self.done = self.done, max(self.done, stop)
        if stop <= start:
            return (np.empty((0, self.dst[0], self.bands), np.uint8),
                    np.empty((0, self.dst[0]), bool) if self.masked else None)
        out = self._reduce(start, stop)
        keep = int(self.rows.n0[stop]) if stop < self.dst[1] else have
        self.data = self.data[keep - self.base:]
        if self.masked:
            self.valid = self.valid[keep - self.base:]
        self.base = keep
        return out

    def _reduce(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Output rows start .. stop - 1, in strips of CHUNK rows (temporaries of a few MB whatever the width)."""
        out = np.empty((stop - start, self.dst[0], self.bands), np.uint8)
        ok = np.ones((stop - start, self.dst[0]), bool) if self.masked else None
        exact = self.rows.exact_half and self.cols.exact_half
        for i in range(start, stop, CHUNK):
            j = min(stop, i + CHUNK)
            lo, hi = int(self.rows.n0[i]) - self.base, int(self.rows.n1[j - 1]) - self.base
            data = self.data[lo:hi]
            valid = self.valid[lo:hi] if self.masked else None
            if valid is not None and valid.all():
                valid = None
            if exact:
                strip_ok = _half_2x2(data, valid, out[i - start:j - start])
            else:
                strip_ok = _weighted(data, valid, self.rows, (i, j, int(self.rows.n0[i])), self.cols,
                                     out[i - start:j - start])
            if strip_ok is not None:
                ok[i - start:j - start] = strip_ok
        return out, ok


def _half_2x2(data: np.ndarray, valid: np.ndarray | None, out: np.ndarray) -> np.ndarray | None:
    """Mean of each 2 x 2 block (rows and columns both halve exactly) into out, valid pixels only.

    Returns: which output pixels are valid (None: all).
    """
    w2 = 2 * out.shape[1]
    if valid is None:
        _mean_2x2(data[:, :w2], out)
        return None
    return _masked_mean_2x2(data[:, :w2], valid[:, :w2], out)


def _mean_2x2(rows: np.ndarray, out: np.ndarray) -> None:
    s = rows[0::2].astype(np.uint16)
    s += rows[1::2]
    s = s[:, 0::2] + s[:, 1::2]
    s += 2  # rounded half up, as GDAL rounds
    s >>= 2
    out[...] = s


def _masked_mean_2x2(rows: np.ndarray, valid: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The 2 x 2 mean of the valid pixels: the plain mean, redone where a block is only partly valid.

    Partly valid blocks lie along the edges of invalid areas (a nodata collar, holes), a
    small share of the blocks: recomputing only them costs far less than masking every sum.
    """
    _mean_2x2(rows, out)
    v = valid.view(np.uint8)
    count = v[0::2] + v[1::2]
    count = count[:, 0::2] + count[:, 1::2]
    out[count == 0] = 0
    i, j = np.nonzero((count > 0) & (count < 4))
    if len(i):
        r, c = 2 * i, 2 * j
        total = np.zeros((len(i), rows.shape[2]), np.uint16)
        for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1)):
            total += rows[r + dr, c + dc] * v[r + dr, c + dc][:, None]
        mean = total / count[i, j][:, None].astype(np.float32) + np.float32(0.5)
        out[i, j] = mean
    return count > 0


def _weighted(data: np.ndarray, valid: np.ndarray | None, rows: _Taps, span: tuple[int, int, int], cols: _Taps,
              out: np.ndarray) -> np.ndarray | None:
    """GDAL's fractional area weights (a level with an odd size) for output rows span = (j0, j1, first source row).

    With a mask: the plain weighted mean everywhere, redone with the valid pixels only
    where a footprint is partly valid (along the edges of invalid areas: few pixels).

    Returns: which output pixels are valid (None: all).
    """
    j0, j1, origin = span
    mean = cols.column_means(rows.weighted_sum(data, j0, j1, origin, 0))
    mean /= rows.total[j0:j1, None, None]
    mean += 0.5
    out[...] = mean
    if valid is None:
        return None
    v = valid.view(np.uint8)[:, :, None]
    share = cols.column_means(rows.weighted_sum(v, j0, j1, origin, 0))[:, :, 0]  # of the weight on valid pixels
    share /= rows.total[j0:j1, None]
    ok = share > 0
    out[~ok] = 0
    i, j = np.nonzero(ok & (share < 1 - 1e-6))
    if len(i):
        _masked_footprints(data, valid.view(np.uint8), rows, cols, i, j, j0, origin, out)
    return ok


def _masked_footprints(data: np.ndarray, v: np.ndarray, rows: _Taps, cols: _Taps, i: np.ndarray, j: np.ndarray,
                       j0: int, origin: int, out: np.ndarray) -> None:
    """out[i, j] = the weighted mean of the valid pixels of each footprint (i: output rows from j0)."""
    value = np.zeros((len(i), data.shape[2]), np.float32)
    weight = np.zeros(len(i), np.float32)
    for tr in range(rows.weight.shape[0]):
        wr = rows.weight[tr, i + j0]
        r = np.minimum(rows.n0[i + j0] + tr - origin, len(data) - 1)
        for tc in range(cols.weight.shape[0]):
            wc = cols.weight[tc, j]
            c = np.minimum(cols.n0[j] + tc, data.shape[1] - 1)
            w = wr * wc * v[r, c]
            value += data[r, c] * w[:, None]
            weight += w
    out[i, j] = value / weight[:, None] + np.float32(0.5)
