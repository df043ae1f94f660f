"""The JPEG COG of an 8-bit RGB(A) image, written by our own code with libjpeg-turbo.

Why not GDAL's COG driver (which writes every other COG here): rasterio's wheels bundle
IJG libjpeg 9, 2.4-2.8x slower than libjpeg-turbo at the same quality (the same
full-resolution JPEG COG took 1.18 s through rasterio and 0.49 s through a GDAL built on
libjpeg-turbo), which made geoworker's JPEG COG 1.5-1.8x slower than `gdal_translate`.
Pillow's JPEG encoder is libjpeg-turbo (Pillow's wheels bundle it, and Pillow is already
a dependency), it releases the GIL while encoding, and each tile is a small independent
image, so tiles encode in a thread pool. imagecodecs would also do, but it is a 30 MB
dependency for what Pillow already does.

What the file holds is what GDAL's COG driver writes (tests/test_cog_jpeg.py compares
the two): 512 px tiles, YCbCr JPEG with 4:2:0 subsampling at the job's quality, its
quantisation tables once in JPEGTables, overviews halved down to the planned count by
GDAL's average (overviews.py), invalid pixels (nodata, internal mask, alpha = 0) in a
1-bit DEFLATE internal mask per level, the georeferencing tags exactly as GDAL encodes
them (taken from a one-pixel GeoTIFF that GDAL writes with the same CRS, transform and
metadata), and GDAL's COG layout (tiff_layout.py).

The source streams through in rows of 512 px: each row of tiles is read (rasterio),
its tiles go to the encoder pool, and its rows feed the first overview, whose rows feed
the next; each level's encoded tiles go to a temporary file beside the output in
row-major order. At the end the header is computed from the tile sizes and the levels
are copied after it, smallest first. Memory: about two rows of full-resolution tiles
plus one row of tiles per overview level, whatever the image size.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import warnings
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.windows import Window

from geoworker.errors import GeoworkerError
from geoworker.processing import tiff_layout as tl
from geoworker.processing import validate
from geoworker.processing.overviews import Halver, level_sizes

TILE = 512
MASK_ZLEVEL = 6  # GDAL's default DEFLATE level for the mask
# Tag codes GDAL writes for georeferencing and metadata, taken from its one-pixel template:
# ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams,
# GeoAsciiParams, GDAL_METADATA and the TIFFTAG_* text fields (DocumentName, ImageDescription,
# Make, Model, Software, DateTime, Artist, Copyright). Not GDAL_NODATA: nodata becomes the mask.
GEO_TAGS = {33550, 33922, 34264, 34735, 34736, 34737, 42112, 269, 270, 271, 272, 305, 306, 315, 33432}
MASK_KINDS = ("none", "nodata", "per_dataset", "alpha")
AHEAD = 1  # rows of full-resolution tiles waiting for the encoders (memory: AHEAD + 2 rows in all)
# Huffman tables optimised per tile, as libtiff makes them for GDAL (JPEGTABLESMODE=1):
# files 6% smaller on an orthophoto (30% on smooth images) than with the standard tables,
# for ~0.1 s more CPU per 100 MB with libjpeg-turbo (bench/map_outputs.py).
OPTIMIZE_HUFFMAN = True


def split_jpeg(stream: bytes, huffman: bool) -> tuple[bytes, bytes]:
    """Split a JPEG into its tables and an abbreviated image (TIFF's JPEGTables scheme).

    Args:
        stream: a baseline JPEG interchange stream (SOI ... EOI).
        huffman: move the Huffman tables (DHT) to the tables too (they are the same in
            every tile unless optimised per tile).
    Returns:
        (tables: SOI + DQT [+ DHT] segments + EOI, image: SOI + the other segments, without APPn, + scan).
    """
    moved = (0xDB, 0xC4) if huffman else (0xDB,)
    if stream[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG stream")
    tables, image, i = [b"\xff\xd8"], [b"\xff\xd8"], 2
    while i < len(stream):
        marker = stream[i + 1]
        if marker == 0xDA:  # start of scan: the entropy-coded data runs to EOI
            image.append(stream[i:])
            break
        length = int.from_bytes(stream[i + 2:i + 4], "big")
        segment = stream[i:i + 2 + length]
        if marker in moved:
            tables.append(segment)
        elif not (0xE0 <= marker <= 0xEF or marker == 0xFE):  # APPn (JFIF) and comments are dropped
            image.append(segment)
        i += 2 + length
    tables.append(b"\xff\xd9")
    return b"".join(tables), b"".join(image)


class Scratch:
    """One in-memory file per thread for Pillow to encode into.

    Pillow releases the GIL while it encodes only when it writes to a real file
    descriptor (ImageFile's encode_to_file); encoding into a BytesIO holds the GIL for
    the whole tile, which would serialise the encoder threads.
    """

    def __init__(self):
        self._local = threading.local()
        self._files: list[BinaryIO] = []
        self._lock = threading.Lock()

    def file(self) -> BinaryIO:
        f = getattr(self._local, "file", None)
        if f is None:
            fd = os.memfd_create("cog-tile") if hasattr(os, "memfd_create") else None
            f = open(fd, "w+b", buffering=0) if fd is not None else tempfile.TemporaryFile(buffering=0)
            self._local.file = f
            with self._lock:
                self._files.append(f)
        return f

    def close(self) -> None:
        with self._lock:
            for f in self._files:
                f.close()
            self._files.clear()


def _jpeg(rgb: Image.Image, quality: int, scratch: Scratch | None = None) -> bytes:
    # 4:2:0 is what YCbCrSubsampling (2, 2) declares
    options = {"quality": quality, "subsampling": "4:2:0", "optimize": OPTIMIZE_HUFFMAN}
    if scratch is None:
        out = io.BytesIO()
        rgb.save(out, "JPEG", **options)
        return out.getvalue()
    f = scratch.file()
    fd = f.fileno()
    os.lseek(fd, 0, os.SEEK_SET)
    rgb.save(f, "JPEG", **options)
    return os.pread(fd, os.lseek(fd, 0, os.SEEK_CUR), 0)


def jpeg_tables(quality: int) -> bytes:
    """The JPEGTables value (quantisation tables) of every tile encoded at `quality`."""
    return split_jpeg(_jpeg(Image.new("RGB", (16, 16)), quality), not OPTIMIZE_HUFFMAN)[0]


def encode_tile(rgb: np.ndarray, quality: int, scratch: Scratch | None = None) -> bytes:
    """One 512 x 512 YCbCr JPEG tile, abbreviated (its tables are in JPEGTables).

    Args:
        rgb: (h, w, 3) uint8 with h, w <= 512; a partial edge tile is padded by
            repeating its last row and column (no false edge for JPEG to ring on).
        quality: JPEG quality 1-100.
        scratch: per-thread files to encode into (None: in memory, holding the GIL).
    Returns:
        the tile's bytes.
    """
    h, w = rgb.shape[:2]
    if (h, w) != (TILE, TILE):
        rgb = np.pad(rgb, ((0, TILE - h), (0, TILE - w), (0, 0)), mode="edge")
    image = Image.frombuffer("RGB", (TILE, TILE), np.ascontiguousarray(rgb), "raw", "RGB", 0, 1)
    return split_jpeg(_jpeg(image, quality, scratch), not OPTIMIZE_HUFFMAN)[1]


def encode_mask(valid: np.ndarray) -> bytes:
    """One 512 x 512 tile of a 1-bit internal mask (1 = valid), DEFLATE-compressed.

    Args:
        valid: (h, w) bool with h, w <= 512; padding outside is invalid.
    Returns:
        the tile's bytes (a zlib stream, as TIFF's Adobe DEFLATE expects).
    """
    h, w = valid.shape
    if (h, w) != (TILE, TILE):
        full = np.zeros((TILE, TILE), bool)
        full[:h, :w] = valid
        valid = full
    return zlib.compress(np.packbits(valid, axis=1).tobytes(), MASK_ZLEVEL)


def gdal_georef_tags(ds: rasterio.DatasetReader, count: int) -> list[tl.Tag]:
    """The georeferencing and metadata tags GDAL writes for this dataset's CRS, transform and metadata.

    GDAL writes a one-pixel GeoTIFF in memory with them, and its tags are taken as they
    are: the GeoKeys are exactly GDAL's encoding of the CRS (whatever the CRS), and
    AREA_OR_POINT is applied as GDAL applies it.

    Args:
        ds: the source; count: the number of image bands written.
    Returns:
        the tags (GEO_TAGS codes present in GDAL's template).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as mem:
            # rasterio reports "no geotransform" as the identity, which GDAL would write as one
            transform = None if ds.transform.is_identity else ds.transform
            with mem.open(driver="GTiff", width=1, height=1, count=count, dtype="uint8", crs=ds.crs,
                          transform=transform, photometric="RGB") as tiny:
                tags = ds.tags()
                if tags:
                    tiny.update_tags(**tags)
                for i in range(1, count + 1):
                    if ds.descriptions[i - 1]:
                        tiny.set_band_description(i, ds.descriptions[i - 1])
                    band_tags = ds.tags(i)
                    if band_tags:
                        tiny.update_tags(i, **band_tags)
                if any(s != 1 for s in ds.scales[:count]) or any(o != 0 for o in ds.offsets[:count]):
                    tiny.scales, tiny.offsets = ds.scales[:count], ds.offsets[:count]
                if any(ds.units[:count]):
                    tiny.units = ds.units[:count]
            data = mem.read()
    return [t for t in tl.read_first_ifd(data) if t.code in GEO_TAGS]


def _dimension(code: int, n: int) -> tl.Tag:
    return tl.Tag(code, tl.SHORT if n < 65536 else tl.LONG, (n,))


def image_tags(size: tuple[int, int], overview: bool, tables: bytes, extra: list[tl.Tag]) -> list[tl.Tag]:
    """The fields of one YCbCr JPEG level, as GDAL's COG driver writes them (offsets come later)."""
    tags = [_dimension(256, size[0]), _dimension(257, size[1]), tl.Tag(258, tl.SHORT, (8, 8, 8)),
            tl.Tag(259, tl.SHORT, (7,)), tl.Tag(262, tl.SHORT, (6,)), tl.Tag(277, tl.SHORT, (3,)),
            tl.Tag(284, tl.SHORT, (1,)), tl.Tag(322, tl.SHORT, (TILE,)), tl.Tag(323, tl.SHORT, (TILE,)),
            tl.Tag(339, tl.SHORT, (1, 1, 1)), tl.Tag(347, tl.UNDEFINED, tables), tl.Tag(530, tl.SHORT, (2, 2)),
            tl.Tag(532, tl.RATIONAL, (0, 1, 255, 1, 128, 1, 255, 1, 128, 1, 255, 1)), *extra]
    if overview:
        tags.append(tl.Tag(tl.NEW_SUBFILE_TYPE, tl.LONG, (tl.REDUCED,)))
    return tags


def mask_tags(size: tuple[int, int], overview: bool) -> list[tl.Tag]:
    """The fields of one level's 1-bit DEFLATE internal mask (NewSubfileType: mask, + reduced for overviews)."""
    return [tl.Tag(tl.NEW_SUBFILE_TYPE, tl.LONG, (tl.MASK | (tl.REDUCED if overview else 0),)),
            _dimension(256, size[0]), _dimension(257, size[1]), tl.Tag(258, tl.SHORT, (1,)),
            tl.Tag(259, tl.SHORT, (8,)), tl.Tag(262, tl.SHORT, (4,)), tl.Tag(277, tl.SHORT, (1,)),
            tl.Tag(284, tl.SHORT, (1,)), tl.Tag(317, tl.SHORT, (1,)), tl.Tag(322, tl.SHORT, (TILE,)),
            tl.Tag(323, tl.SHORT, (TILE,)), tl.Tag(339, tl.SHORT, (1,))]


@dataclass
class _Spool:
    """One level's encoded tiles, in row-major order, in a temporary file."""

    file: BinaryIO
    image: tl.Level
    mask: tl.Level | None

    def write(self, image: bytes, mask: bytes | None) -> None:
        self.file.write(tl.wrap_tile(image))
        self.image.tile_sizes.append(len(image))
        if self.mask is not None:
            self.file.write(tl.wrap_tile(mask))
            self.mask.tile_sizes.append(len(mask))


class _LevelRows:
    """Collects one overview level's rows into rows of 512 (a row of tiles)."""

    def __init__(self, bands: int, width: int, masked: bool):
        self.data = np.empty((0, width, bands), np.uint8)
        self.valid = np.empty((0, width), bool) if masked else None

    def add(self, data: np.ndarray, valid: np.ndarray | None) -> None:
        self.data = np.concatenate([self.data, data]) if len(self.data) else data
        if self.valid is not None:
            self.valid = np.concatenate([self.valid, valid]) if len(self.valid) else valid

    def take(self, final: bool):
        """Whole rows of tiles ready (all that is left when final): [(data, valid)]."""
        rows = []
        while len(self.data) >= TILE or (final and len(self.data)):
            n = min(TILE, len(self.data))
            rows.append((self.data[:n], self.valid[:n] if self.valid is not None else None))
            self.data = self.data[n:]
            if self.valid is not None:
                self.valid = self.valid[n:]
        return rows


def _read_rows(ds: rasterio.DatasetReader, row: int, rows: int, mask: str, nodata: list
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows `row` .. `row + rows - 1`: (rows, width, 3) pixel-interleaved colour and, unless mask is none,
    (rows, width) where they are valid."""
    window = Window(0, row, ds.width, rows)
    bands = 4 if mask == "alpha" else 3
    data = np.empty((rows, ds.width, bands), np.uint8)
    # pixel-interleaved, as the tiles are encoded and as most orthophotos are stored
    ds.read(list(range(1, bands + 1)), window=window, out=data.transpose(2, 0, 1))
    if mask == "alpha":
        return data[:, :, :3], data[:, :, 3] != 0
    if mask == "none":
        return data, None
    if mask == "per_dataset":
        return data, ds.read_masks(1, window=window) != 0
    # nodata: valid where any band holds something else than its nodata value (the PNG task's rule)
    if any(value is None for value in nodata):
        return data, np.ones(data.shape[:2], bool)
    valid = data[:, :, 0] != nodata[0]
    for b in (1, 2):
        valid |= data[:, :, b] != nodata[b]
    return data, valid


def _blocks_inside(path: str) -> bool:
    """Whether every strip or tile of the file's first image lies inside the file."""
    try:
        validate.read_tiff_header(path)
    except (GeoworkerError, OSError):
        return False
    return True


def write_jpeg_cog(ds: rasterio.DatasetReader, path: Path, quality: int, overview_count: int, mask: str,
                   threads: int | None = None, bigtiff: bool | None = None) -> None:
    """Write the JPEG COG of an 8-bit RGB or RGBA dataset.

    Args:
        ds: the open source: 3 uint8 bands, or 4 whose 4th is alpha.
        path: the file to write.
        quality: JPEG quality 1-100.
        overview_count: how many overviews (cog.overview_count).
        mask: how invalid pixels are known: "none", "nodata" (any band not its nodata
            value is valid), "per_dataset" (the file's internal mask), "alpha" (alpha != 0).
        threads: encoder threads (default: the CPUs this process may use).
        bigtiff: force BigTIFF (True) or classic TIFF (False); None: BigTIFF only past 4 GB.
    """
    if mask not in MASK_KINDS:
        raise ValueError(f"mask must be one of {MASK_KINDS}, got {mask!r}")
    path = Path(path)
    sizes = level_sizes(ds.width, ds.height, overview_count)
    masked = mask != "none"
    tables = jpeg_tables(quality)
    georef = gdal_georef_tags(ds, 3)
    nodata = list(ds.nodatavals[:3])
    threads = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    full_valid_mask = encode_mask(np.ones((TILE, TILE), bool))

    def encode(rgb: np.ndarray, valid: np.ndarray | None) -> tuple[bytes, bytes | None]:
        image = encode_tile(rgb, quality, scratch)
        if valid is None:
            return image, None
        return image, full_valid_mask if valid.shape == (TILE, TILE) and valid.all() else encode_mask(valid)

    with ExitStack() as stack:
        scratch = Scratch()
        stack.callback(scratch.close)
        pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="cog-jpeg"))
        spools = []
        for k, size in enumerate(sizes):
            spool_file = stack.enter_context(tempfile.TemporaryFile(dir=path.parent, prefix=f".{path.name}.{k}."))
            spools.append(_Spool(spool_file, tl.Level(image_tags(size, k > 0, tables, [] if k else georef)),
                                 tl.Level(mask_tags(size, k > 0)) if masked else None))
        halvers = [Halver(sizes[k], sizes[k + 1], 3, masked) for k in range(overview_count)]
        collectors = [_LevelRows(3, w, masked) for w, _ in sizes[1:]]
        pending: deque[tuple[int, list[Future]]] = deque()

        def submit(level: int, data: np.ndarray, valid: np.ndarray | None) -> None:
            futures = [pool.submit(encode, data[:, c:c + TILE], valid[:, c:c + TILE] if masked else None)
                       for c in range(0, data.shape[1], TILE)]
            pending.append((level, futures))

        def drain(keep: int) -> None:
            """Write finished tiles, in order, until at most `keep` full-resolution rows wait."""
            while sum(level == 0 for level, _ in pending) > keep or (keep == 0 and pending):
                level, futures = pending.popleft()
                for f in futures:
                    spools[level].write(*f.result())

        def cascade(data: np.ndarray, valid: np.ndarray | None, final: bool) -> None:
            for k, halver in enumerate(halvers):
                data, valid = halver.push(data, valid)
                collectors[k].add(data, valid)
                for rows in collectors[k].take(final):
                    submit(k + 1, *rows)

        # A handle of its own for the reading thread. GTIFF_DIRECT_IO (read when the file is
        # opened) copies uncompressed strips or tiles straight into the pixel-interleaved
        # buffer, without the block cache: 0.16 s instead of 0.7 s of CPU per GB. It reads
        # a block past the end of a truncated file as zeros without a word, so only for a
        # file whose blocks all lie inside it (the normal path fails on the others).
        with rasterio.Env(GTIFF_DIRECT_IO=_blocks_inside(ds.name)):
            source = stack.enter_context(rasterio.open(ds.name, driver="GTiff"))
        reader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="cog-read"))
        rows = list(range(0, ds.height, TILE))

        def read(row: int) -> Future:
            return reader.submit(_read_rows, source, row, min(TILE, ds.height - row), mask, nodata)

        ahead = read(rows[0])
        for i, row in enumerate(rows):
            data, valid = ahead.result()
            if i + 1 < len(rows):
                ahead = read(rows[i + 1])  # the next row of tiles is read while this one is encoded
            submit(0, data, valid)
            cascade(data, valid, final=row + TILE >= ds.height)
            drain(AHEAD)
        drain(0)
        _assemble(path, spools, bigtiff)


def _assemble(path: Path, spools: list[_Spool], bigtiff: bool | None) -> None:
    """Header + IFDs, then each level's tiles, smallest first."""
    levels = [s.image for s in spools]
    masks = [s.mask for s in spools] if spools[0].mask is not None else None
    if bigtiff is None:
        try:
            header, total = tl.cog_header(levels, masks, False)
        except OverflowError:
            header, total = tl.cog_header(levels, masks, True)
    else:
        header, total = tl.cog_header(levels, masks, bigtiff)
    with open(path, "wb") as out:
        out.write(header)
        for spool in reversed(spools):
            spool.file.flush()
            _copy(spool.file, out)
        if out.tell() != total:
            raise AssertionError(f"the COG has {out.tell()} bytes where its header says {total}")


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    """Append all of src to dst (in the kernel where it can: copy_file_range)."""
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src.fileno(), dst.fileno(), size - done, done)
            if n == 0:
                break
            done += n
    except (AttributeError, OSError):
        if done:
            raise
    dst.seek(0, os.SEEK_END)  # the descriptor moved: bring the file object along
    if done < size:
        src.seek(done)
        shutil.copyfileobj(src, dst, 1 << 20)
