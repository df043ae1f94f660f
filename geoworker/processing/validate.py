"""Checks made before any pixel is decoded: what the file is, how big it says it is.

A small TIFF directory parser reads the first image's header so that a hostile or
broken file (a PNG named .tif, a truncated upload, a 40-byte file declaring
1,000,000 x 1,000,000 pixels) is refused with a message naming the problem, before
GDAL is asked to allocate or decode anything.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoworker.errors import InvalidInput, TooLarge, Unsupported

TIFF_MAGICS = {
    b"II*\x00": ("<", False),
    b"MM\x00*": (">", False),
    b"II+\x00": ("<", True),
    b"MM\x00+": (">", True),
}

# Declared pixel data larger than this many times the data the file holds is not a real
# compressed raster (DEFLATE tops out near 1032:1); only sparse or hostile files get there.
# Below that ratio, the budget of declared pixels and decoded bytes (Options.max_pixels,
# max_decoded_bytes) catches what compresses well but would still cost too much to decode.
MAX_COMPRESSION_RATIO = 5000
# Pixel data smaller than this is never suspicious, however small the file.
RATIO_CHECK_FLOOR = 1 << 30
MAX_BLOCKS = 50_000_000

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TYPE_CODES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 13: "I", 16: "Q", 17: "q", 18: "Q"}
_COMPRESSIONS = {1: "none", 5: "lzw", 6: "ojpeg", 7: "jpeg", 8: "deflate", 32946: "deflate", 32773: "packbits",
                 34887: "lerc", 34925: "lzma", 50000: "zstd", 50001: "webp", 50002: "jxl"}
_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating point", 4: "undefined",
                   5: "complex integer", 6: "complex floating point"}


@dataclass(frozen=True)
class TiffHeader:
    """What the first image directory of a TIFF declares."""

    bigtiff: bool
    width: int
    height: int
    samples: int
    bits: tuple[int, ...]
    sample_format: int
    compression: int
    planar: int
    tiled: bool
    block_width: int
    block_height: int
    block_count: int
    file_size: int
    next_ifd: int = 0
    data_bytes: int | None = None  # bytes of pixel data the blocks hold (None: not known yet)
    warnings: tuple[str, ...] = field(default=())

    @property
    def raw_bytes(self) -> int:
        return (self.width * self.height * sum(self.bits) + 7) // 8

    @property
    def compression_name(self) -> str:
        return _COMPRESSIONS.get(self.compression, str(self.compression))


def human_bytes(n: float) -> str:
    """Args: n: a byte count. Returns: "1.2 MB" style text."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def check_file_size(path: str | Path, max_file_size: int) -> int:
    """Refuse a missing, empty or too large file.

    Args:
        path: the input file.
        max_file_size: largest accepted size in bytes.
    Returns:
        the file size in bytes.
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise InvalidInput(f"the input file does not exist: {Path(path).name}") from None
    if size == 0:
        raise InvalidInput("the file is empty (0 bytes), not a TIFF")
    if size > max_file_size:
        raise TooLarge(f"the file is {human_bytes(size)}, larger than the {human_bytes(max_file_size)} "
                       f"this worker accepts (max_file_size = {max_file_size} bytes)")
    return size


def sniff_kind(head: bytes) -> str | None:
    """Name the kind of a non-TIFF file from its first bytes.

    Args:
        head: the first bytes of the file.
    Returns:
        a phrase such as "a PNG image", or None when unknown.
    """
    signatures = [
        (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"),
        (b"BM", "a BMP image"), (b"RIFF", "a RIFF file (WebP/WAV)"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
        (b"7z\xbc\xaf", "a 7-Zip archive"), (b"Rar!", "a RAR archive"), (b"\x89HDF", "an HDF5 file"),
        (b"CDF\x01", "a NetCDF file"), (b"SQLite format 3", "an SQLite database (GeoPackage?)"),
    ]
    for magic, kind in signatures:
        if head.startswith(magic):
            return kind
    stripped = head.lstrip()
    if stripped[:1] in (b"<",) and b"html" in stripped[:200].lower():
        return "an HTML page"
    if stripped[:1] in (b"{", b"["):
        return "JSON text"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file"
    return None


def check_magic(path: str | Path) -> tuple[str, bool]:
    """Refuse a file that does not start with a TIFF or BigTIFF signature.

    Args:
        path: the input file.
    Returns:
        (struct byte order "<" or ">", is_bigtiff).
    """
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:4] in TIFF_MAGICS:
        return TIFF_MAGICS[head[:4]]
    kind = sniff_kind(head)
    if kind == "a text file":
        preview = head[:32].decode("utf-8", "replace").splitlines()[0] if head.strip() else ""
        raise InvalidInput(f"the file is a text file, not a TIFF (it starts with {preview!r})")
    if kind:
        raise InvalidInput(f"the file is {kind}, not a TIFF")
    raise InvalidInput(f"the file is not a TIFF: it starts with bytes {head[:8].hex(' ')} "
                       "instead of a TIFF signature (49 49 2a 00 or 4d 4d 00 2a)")


def read_tiff_header(path: str | Path) -> TiffHeader:
    """Parse the first image directory of a TIFF without decoding pixels.

    Args:
        path: a file whose magic bytes were checked.
    Returns:
        the declared geometry, layout and compression.
    Raises:
        InvalidInput: the directory is missing, truncated or declares impossible sizes.
    """
    order, big = check_magic(path)
    size = os.stat(path).st_size
    with open(path, "rb") as fh:
        reader = _IfdReader(fh, order, big, size)
        tags, next_ifd = reader.first_directory()
        return _header_from_tags(reader, tags, next_ifd, big, size)


def check_header(header: TiffHeader) -> None:
    """Refuse declared sizes that are zero, absurd, or larger than the file can hold.

    Args:
        header: what read_tiff_header found (with data_bytes once the block counts are read).
    """
    w, h = header.width, header.height
    if w <= 0 or h <= 0:
        raise InvalidInput(f"the TIFF declares zero dimensions ({w} x {h} pixels): there is no image in it")
    if header.sample_format in (5, 6):
        raise Unsupported(f"the TIFF holds {_SAMPLE_FORMATS[header.sample_format]} (complex-valued) pixels, "
                          "which cannot be rendered as an image; convert it to a real data type first")
    raw = header.raw_bytes
    if header.compression == 1 and raw > header.file_size:
        raise InvalidInput(f"TIFF is truncated: it declares {w:,} x {h:,} pixels ({human_bytes(raw)} of "
                           f"uncompressed pixel data) but the file is only {human_bytes(header.file_size)}")
    held = header.file_size if header.data_bytes is None else header.data_bytes
    if raw > RATIO_CHECK_FLOOR and raw > MAX_COMPRESSION_RATIO * held:
        what = "in all" if header.data_bytes is None else "of pixel data"
        raise InvalidInput(f"the TIFF declares {w:,} x {h:,} pixels ({human_bytes(raw)} of pixel data) but holds "
                           f"only {held:,} bytes {what}: refused as a decompression bomb (a sparse or hostile file, "
                           "or a corrupt header)")


def check_budget(width: int, height: int, band_bytes: list[int], dtype: str, max_pixels: int,
                 max_decoded_bytes: int) -> None:
    """Refuse, before decoding, an image declaring more pixels or decoded bytes than the budget.

    Compression ratios cannot catch all bombs: 100,000 x 100,000 x 3 of zeros in DEFLATE
    tiles is 34 MB (880:1, under DEFLATE's own ~1032:1 ceiling) and 30 GB to decode.

    Args:
        width, height: the declared size in pixels.
        band_bytes: bytes per pixel of each band.
        dtype: the (first) band's data type, for the message.
        max_pixels: the most pixels (width x height) accepted.
        max_decoded_bytes: the most bytes of decoded pixel data accepted.
    Raises:
        TooLarge: over either limit; the message names the declared size.
    """
    pixels = width * height
    decoded = pixels * sum(band_bytes)
    declared = (f"the TIFF declares {width:,} x {height:,} pixels x {len(band_bytes)} "
                f"band{'s' if len(band_bytes) != 1 else ''} of {dtype} ({pixels / 1e9:,.1f} gigapixels, "
                f"{human_bytes(decoded)} once decoded)")
    if pixels > max_pixels:
        raise TooLarge(f"{declared}: more than the {max_pixels / 1e9:,.1f} gigapixels this worker decodes "
                       f"(max_pixels = {max_pixels})")
    if decoded > max_decoded_bytes:
        raise TooLarge(f"{declared}: more than the {human_bytes(max_decoded_bytes)} this worker decodes "
                       f"(max_decoded_bytes = {max_decoded_bytes})")


class _IfdReader:
    def __init__(self, fh, order: str, big: bool, size: int):
        self.fh, self.order, self.big, self.size = fh, order, big, size

    def _read(self, offset: int, n: int, what: str) -> bytes:
        if offset < 0 or offset + n > self.size:
            raise InvalidInput(f"TIFF is truncated: its {what} at byte {offset:,} lies past the end of the "
                               f"file ({self.size:,} bytes)")
        self.fh.seek(offset)
        return self.fh.read(n)

    def first_directory(self) -> tuple[dict[int, tuple[int, int, bytes | int]], int]:
        if self.big:
            head = self._read(4, 12, "header")
            bytesize, _, first = struct.unpack(self.order + "HHQ", head)
            if bytesize != 8:
                raise InvalidInput("the file has a BigTIFF signature but a corrupt header")
        else:
            first = struct.unpack(self.order + "I", self._read(4, 4, "header"))[0]
        if first < 8:
            raise InvalidInput("the TIFF header points to no image directory: the file holds no image")
        count_fmt, entry_size, count_size = ("Q", 20, 8) if self.big else ("H", 12, 2)
        count = struct.unpack(self.order + count_fmt, self._read(first, count_size, "image directory"))[0]
        if count == 0 or count > 4096:
            raise InvalidInput(f"the TIFF image directory is corrupt (it claims {count} entries)")
        body = self._read(first + count_size, count * entry_size + count_size, "image directory")
        tags = {}
        for i in range(count):
            entry = body[i * entry_size:(i + 1) * entry_size]
            if self.big:
                tag, typ, n = struct.unpack(self.order + "HHQ", entry[:12])
                value = entry[12:20]
            else:
                tag, typ, n = struct.unpack(self.order + "HHI", entry[:8])
                value = entry[8:12]
            tags[tag] = (typ, n, value)
        next_ifd = struct.unpack(self.order + count_fmt, body[count * entry_size:])[0]
        return tags, next_ifd

    def values(self, tags, tag: int, what: str, limit: int = MAX_BLOCKS) -> np.ndarray | None:
        if tag not in tags:
            return None
        typ, n, inline = tags[tag]
        if typ not in _TYPE_CODES:
            raise InvalidInput(f"the TIFF {what} tag has an invalid type ({typ})")
        if n > limit:
            raise InvalidInput(f"the TIFF {what} tag lists {n:,} values, an absurd number: the header is corrupt")
        nbytes = _TYPE_SIZES[typ] * n
        data = inline[:nbytes] if nbytes <= len(inline) else self._read(_unpack_offset(self, inline), nbytes, what)
        return np.frombuffer(data, dtype=np.dtype(self.order + _TYPE_CODES[typ]))


def _unpack_offset(reader: _IfdReader, inline: bytes) -> int:
    return struct.unpack(reader.order + ("Q" if reader.big else "I"), inline)[0]


def _scalar(reader: _IfdReader, tags, tag: int, default: int, what: str) -> int:
    values = reader.values(tags, tag, what)
    return int(values[0]) if values is not None and len(values) else default


def _header_from_tags(reader: _IfdReader, tags, next_ifd: int, big: bool, size: int) -> TiffHeader:
    width = _scalar(reader, tags, 256, 0, "ImageWidth")
    height = _scalar(reader, tags, 257, 0, "ImageLength")
    samples = _scalar(reader, tags, 277, 1, "SamplesPerPixel")
    bits_values = reader.values(tags, 258, "BitsPerSample", limit=65535)
    bits = tuple(int(b) for b in bits_values) if bits_values is not None else (1,)
    if len(bits) < samples:
        bits = bits + (bits[-1],) * (samples - len(bits))
    header_args = dict(
        bigtiff=big, width=width, height=height, samples=samples, bits=bits,
        sample_format=_scalar(reader, tags, 339, 1, "SampleFormat"),
        compression=_scalar(reader, tags, 259, 1, "Compression"),
        planar=_scalar(reader, tags, 284, 1, "PlanarConfiguration"),
        file_size=size, next_ifd=next_ifd,
    )
    tiled = 322 in tags
    if tiled:
        bw = _scalar(reader, tags, 322, 0, "TileWidth")
        bh = _scalar(reader, tags, 323, 0, "TileLength")
        offsets_tag, counts_tag, unit = 324, 325, "tile"
    else:
        bw = width
        bh = _scalar(reader, tags, 278, height, "RowsPerStrip") or height
        offsets_tag, counts_tag, unit = 273, 279, "strip"
    header = TiffHeader(tiled=tiled, block_width=bw, block_height=bh, block_count=0, **header_args)
    check_header(header)
    if bw <= 0 or bh <= 0:
        raise InvalidInput(f"the TIFF declares an invalid {unit} size ({bw} x {bh})")
    per_plane = -(-width // bw) * -(-height // min(bh, height))
    expected = per_plane * (samples if header.planar == 2 else 1)
    offsets = reader.values(tags, offsets_tag, f"{unit} offsets")
    counts = reader.values(tags, counts_tag, f"{unit} byte counts")
    if offsets is None:
        raise InvalidInput(f"the TIFF has no {unit} offsets: the image data cannot be located")
    if len(offsets) < expected:
        raise InvalidInput(f"the TIFF declares {width:,} x {height:,} pixels, which needs {expected:,} {unit}s, "
                           f"but its header lists only {len(offsets):,}: the header is corrupt")
    data_bytes = None
    if counts is not None and len(counts) >= len(offsets):
        _check_blocks_inside(offsets, counts[:len(offsets)], size, unit)
        data_bytes = int(counts[:expected].astype(np.uint64).sum())
    header = TiffHeader(tiled=tiled, block_width=bw, block_height=bh, block_count=len(offsets),
                        data_bytes=data_bytes, **header_args)
    check_header(header)
    return header


def _check_blocks_inside(offsets: np.ndarray, counts: np.ndarray, size: int, unit: str) -> None:
    ends = offsets.astype(np.uint64) + counts.astype(np.uint64)
    present = counts > 0  # a zero byte count is a sparse (empty) block, legal in GDAL files
    past = np.flatnonzero(present & (ends > size))
    if len(past):
        i = int(past[0])
        raise InvalidInput(f"TIFF is truncated: {unit} {i + 1} of {len(offsets)} ends at byte {int(ends[i]):,} "
                           f"but the file has only {size:,} bytes ({len(past)} {unit}s cannot be read)")
