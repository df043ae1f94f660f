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

from geoworker.processing.average import axis_footprints


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
    """The footprint of each output pixel along one axis as K (index, weight) taps, for numpy gathers."""

    def __init__(self, src: int, dst: int):
        self.exact_half = src == 2 * dst
        ax = axis_footprints(src, dst)
        self.n0, self.n1, self.total = ax.n0, ax.n1, ax.total
        k = int((ax.n1 - ax.n0).max())
        self.index = np.empty((k, dst), np.int64)
        self.weight = np.zeros((k, dst), np.float32)
        for t in range(k):
            i = ax.n0 + t
            inside = i < ax.n1
            self.index[t] = np.where(inside, i, ax.n0)
            self.weight[t] = np.where(inside, np.where(t == 0, ax.first, np.where(i == ax.n1 - 1, ax.last, 1.0)), 0.0)


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
        lo, hi = int(self.rows.n0[start]) - self.base, int(self.rows.n1[stop - 1]) - self.base
        data = self.data[lo:hi]
        valid = self.valid[lo:hi] if self.masked else None
        if valid is not None and valid.all():
            valid = None
        if self.rows.exact_half and self.cols.exact_half:
            out, ok = _half_2x2(data, valid, self.dst[0])
        else:
            rows = (self.rows.index[:, start:stop] - int(self.rows.n0[start]), self.rows.weight[:, start:stop],
                    self.rows.total[start:stop])
            out, ok = _weighted(data, valid, rows, self.cols)
        if self.masked and ok is None:
            ok = np.ones(out.shape[:2], bool)
        return out, ok


def _half_2x2(data: np.ndarray, valid: np.ndarray | None, out_w: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean of each 2 x 2 block (rows and columns both halve exactly), valid pixels only."""
    w2 = 2 * out_w
    if valid is None:
        s = data[0::2, :w2].astype(np.uint16)
        s += data[1::2, :w2]
        s = s[:, 0::2] + s[:, 1::2]
        s += 2
        s >>= 2
        return s.astype(np.uint8), None
    v = valid[:, :w2].view(np.uint8)
    count = v[0::2] + v[1::2]
    count = count[:, 0::2] + count[:, 1::2]
    masked = data[:, :w2] * v[:, :, None]  # invalid pixels count as 0 in the sum
    s = masked[0::2].astype(np.uint16)
    s += masked[1::2]
    s = s[:, 0::2] + s[:, 1::2]
    inverse = np.array([0, 1, 1 / 2, 1 / 3, 1 / 4], np.float32)[count]
    out = s * inverse[:, :, None]  # sum / count, exact to float32 for these small integers
    out += 0.5
    return out.astype(np.uint8), count > 0


def _weighted(data: np.ndarray, valid: np.ndarray | None, rows: tuple, cols: _Taps
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """GDAL's fractional area weights along both axes (a level whose size is odd)."""
    r_index, r_weight, r_total = rows
    values = data.astype(np.float32)
    if valid is None:
        s = _taps(_taps(values, r_index, r_weight, axis=0), cols.index, cols.weight, axis=1)
        s /= (r_total[:, None] * cols.total[None, :]).astype(np.float32)[:, :, None]
        s += 0.5
        return s.astype(np.uint8), None
    weight = valid.astype(np.float32)[:, :, None]
    values *= weight
    s = _taps(_taps(values, r_index, r_weight, axis=0), cols.index, cols.weight, axis=1)
    w = _taps(_taps(weight, r_index, r_weight, axis=0), cols.index, cols.weight, axis=1)
    ok = w > 0
    s /= np.where(ok, w, 1.0)
    s += 0.5
    s *= ok
    return s.astype(np.uint8), ok[:, :, 0]


def _taps(x: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    """Sum over taps t of weight[t] * x gathered at index[t] along `axis` (0: rows, 1: columns)."""
    shape = [1, 1, 1]
    shape[axis] = -1
    out = np.take(x, index[0], axis=axis) * weight[0].reshape(shape)
    for t in range(1, index.shape[0]):
        out += np.take(x, index[t], axis=axis) * weight[t].reshape(shape)
    return out
