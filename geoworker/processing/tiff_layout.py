"""The bytes around the tiles of a Cloud-Optimized GeoTIFF, laid out as GDAL's COG driver lays them.

A COG is a tiled TIFF whose header holds every IFD (full resolution first, then each
overview, then their masks) before any tile data, and whose tile data goes smallest
overview first, full resolution last, so a reader fetches the header and the level it
needs in a few range requests. GDAL marks that layout with a "ghost" text after the
8-byte header (GDAL_STRUCTURAL_METADATA) and reports it as LAYOUT=COG:

- IFDs first (LAYOUT=IFDS_BEFORE_DATA); each IFD's small out-of-line values right after
  it, the tile offset and byte-count arrays after all IFDs (as GDAL puts them);
- tiles in row-major order per level (BLOCK_ORDER=ROW_MAJOR);
- each tile preceded by its byte count as a little-endian uint32 (BLOCK_LEADER) and
  followed by a repeat of its last 4 bytes (BLOCK_TRAILER), which GDAL uses to read a
  tile with one request and to notice a file edited in place;
- each mask tile right after the image tile it belongs to (MASK_INTERLEAVED_WITH_IMAGERY).

This module only computes bytes (pure functions): the caller encodes the tiles, knows
their sizes, and streams header and tiles into the file (cog_jpeg.py).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# TIFF field types
BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, DOUBLE, LONG8 = 1, 2, 3, 4, 5, 7, 12, 16
_FORMATS = {BYTE: "B", ASCII: "s", SHORT: "H", LONG: "I", RATIONAL: "II", 6: "b", UNDEFINED: "B", 8: "h",
            9: "i", 10: "ii", 11: "f", DOUBLE: "d", LONG8: "Q", 17: "q", 18: "Q"}
_SIZES = {t: struct.calcsize("<" + f) for t, f in _FORMATS.items() if t != ASCII} | {ASCII: 1}

NEW_SUBFILE_TYPE, TILE_OFFSETS, TILE_BYTE_COUNTS = 254, 324, 325
REDUCED, MASK = 1, 4  # NewSubfileType bits
LEADER = TRAILER = 4  # bytes before and after each tile (BLOCK_LEADER, BLOCK_TRAILER)

_GHOST_LINES = ("LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
                "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n"
                # the space lets GDAL rewrite NO as YES in place once the file is edited
                "KNOWN_INCOMPATIBLE_EDITION=NO\n ")


@dataclass(frozen=True)
class Tag:
    """One TIFF field: its code, type and values (a tuple of numbers, or bytes for ASCII/UNDEFINED)."""

    code: int
    type: int
    values: tuple | bytes

    @property
    def count(self) -> int:
        if isinstance(self.values, bytes):
            return len(self.values)
        return len(self.values) // (2 if self.type in (RATIONAL, 10) else 1)

    def payload(self) -> bytes:
        if isinstance(self.values, bytes):
            return self.values
        return struct.pack(f"<{len(self.values)}{_FORMATS[self.type][0]}", *self.values)


@dataclass
class Level:
    """One IFD's fixed tags (no offsets), and the byte count of each of its tiles in row-major order."""

    tags: list[Tag]
    tile_sizes: list[int] = field(default_factory=list)


def read_ifds(data: bytes, limit: int | None = None) -> list[tuple[int, list[Tag]]]:
    """The IFDs of a TIFF (classic or BigTIFF, little- or big-endian), in chain order.

    Args:
        data: the file's bytes (at least up to the IFDs read and their values).
        limit: read at most this many IFDs.
    Returns:
        [(offset of the IFD, its tags in file order)].
    """
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    if big:
        offset, count_fmt, entry, inline, ptr = struct.unpack(order + "Q", data[8:16])[0], "Q", 20, 8, "Q"
    else:
        offset, count_fmt, entry, inline, ptr = struct.unpack(order + "I", data[4:8])[0], "H", 12, 4, "I"
    count_size, ptr_size = struct.calcsize(count_fmt), struct.calcsize(ptr)
    ifds = []
    while offset and (limit is None or len(ifds) < limit):
        (n,) = struct.unpack(order + count_fmt, data[offset:offset + count_size])
        tags = []
        for i in range(n):
            start = offset + count_size + i * entry
            code, typ = struct.unpack(order + "HH", data[start:start + 4])
            (count,) = struct.unpack(order + ptr, data[start + 4:start + 4 + ptr_size])
            value_at = start + 4 + ptr_size
            size = count * _SIZES[typ]
            if size > inline:
                (at,) = struct.unpack(order + ptr, data[value_at:value_at + ptr_size])
                raw = data[at:at + size]
            else:
                raw = data[value_at:value_at + size]
            if typ in (ASCII, UNDEFINED):
                tags.append(Tag(code, typ, bytes(raw)))
            else:
                fmt = _FORMATS[typ]
                tags.append(Tag(code, typ, struct.unpack(f"{order}{count * len(fmt)}{fmt[0]}", raw)))
        ifds.append((offset, tags))
        next_at = offset + count_size + n * entry
        (offset,) = struct.unpack(order + ptr, data[next_at:next_at + ptr_size])
    return ifds


def read_first_ifd(data: bytes) -> list[Tag]:
    """The fields of a TIFF's first IFD (GDAL's one-pixel georeferencing template)."""
    return read_ifds(data, 1)[0][1]


def ghost_header(masked: bool) -> bytes:
    """GDAL's structural metadata text that follows the TIFF header of a COG."""
    body = _GHOST_LINES + ("MASK_INTERLEAVED_WITH_IMAGERY=YES\n" if masked else "")
    return f"GDAL_STRUCTURAL_METADATA_SIZE={len(body):06d} bytes\n{body}".encode("ascii")


def tile_chunk_size(size: int) -> int:
    """Bytes a tile of `size` bytes takes in the file with its leader and trailer."""
    return LEADER + size + TRAILER


def _even(n: int) -> int:
    return n + (n & 1)


class _Writer:
    """Lays out IFDs at known offsets: each IFD, then the out-of-line values it alone uses."""

    def __init__(self, bigtiff: bool):
        self.big = bigtiff
        self.entry, self.inline = (20, 8) if bigtiff else (12, 4)
        self.count_fmt, self.ptr_fmt = ("<Q", "<Q") if bigtiff else ("<H", "<I")

    def ifd_size(self, tags: list[Tag], deferred: set[int]) -> int:
        """The IFD plus its own out-of-line values (those of `deferred` codes are placed elsewhere)."""
        size = struct.calcsize(self.count_fmt) + len(tags) * self.entry + struct.calcsize(self.ptr_fmt)
        for t in tags:
            n = len(t.payload())
            if n > self.inline and t.code not in deferred:
                size += _even(n)
        return size

    def ifd(self, tags: list[Tag], at: int, next_ifd: int, elsewhere: dict[int, int]) -> bytes:
        """The bytes of one IFD at offset `at`, out-of-line values following it.

        Args:
            tags: the fields (sorted here by code, as TIFF requires).
            at: the IFD's offset in the file.
            next_ifd: the next IFD's offset (0 for the last).
            elsewhere: offsets of out-of-line values laid out by the caller, by tag code.
        """
        tags = sorted(tags, key=lambda t: t.code)
        head = struct.calcsize(self.count_fmt) + len(tags) * self.entry + struct.calcsize(self.ptr_fmt)
        entries, extra = [struct.pack(self.count_fmt, len(tags))], bytearray()
        for t in tags:
            payload = t.payload()
            if len(payload) <= self.inline:
                value = payload.ljust(self.inline, b"\0")
            else:
                if t.code in elsewhere:
                    where = elsewhere[t.code]
                else:
                    where = at + head + len(extra)
                    extra += payload + b"\0" * (len(payload) & 1)
                value = struct.pack(self.ptr_fmt, where)
            count = struct.pack(self.ptr_fmt, t.count)
            entries.append(struct.pack("<HH", t.code, t.type) + count + value)
        entries.append(struct.pack(self.ptr_fmt, next_ifd))
        return b"".join(entries) + bytes(extra)


def _order(levels: list[Level], masks: list[Level] | None) -> list[Level]:
    """IFD order of GDAL's COG: full resolution, its mask, the overviews, then their masks."""
    if not masks:
        return list(levels)
    return [levels[0], masks[0], *levels[1:], *masks[1:]]


def cog_header(levels: list[Level], masks: list[Level] | None, bigtiff: bool) -> tuple[bytes, int]:
    """Header, ghost text, every IFD and the tile offset/byte-count arrays of a COG.

    The tile data follows at once: levels smallest first (levels[-1] .. levels[0]), tiles
    row-major, each wrapped in its leader and trailer, each mask tile after its image tile.

    Args:
        levels: full resolution first, then each overview; tags without offsets or counts.
        masks: the same for the 1-bit masks (the same tiling), or None.
        bigtiff: write BigTIFF (64-bit offsets).
    Returns:
        (header bytes, total file size).
    """
    w = _Writer(bigtiff)
    offset_type, ptr = (LONG8, "Q") if bigtiff else (LONG, "I")
    ordered = _order(levels, masks)
    deferred = {TILE_OFFSETS, TILE_BYTE_COUNTS}

    def with_arrays(level: Level, offsets: list[int]) -> list[Tag]:
        return [*level.tags, Tag(TILE_OFFSETS, offset_type, tuple(offsets)),
                Tag(TILE_BYTE_COUNTS, LONG, tuple(level.tile_sizes))]

    ghost = ghost_header(bool(masks))
    first_ifd = _even((16 if bigtiff else 8) + len(ghost))
    ifd_at, at = [], first_ifd
    for level in ordered:
        ifd_at.append(at)
        at += w.ifd_size(with_arrays(level, [0] * len(level.tile_sizes)), deferred)
    # the offset and byte-count arrays that do not fit in their IFD entry, after all IFDs
    arrays: list[dict[int, int]] = []
    for level in ordered:
        placed = {}
        n = len(level.tile_sizes)
        if n * struct.calcsize(ptr) > w.inline:
            placed[TILE_OFFSETS], at = at, at + _even(n * struct.calcsize(ptr))
        if n * 4 > w.inline:
            placed[TILE_BYTE_COUNTS], at = at, at + _even(n * 4)
        arrays.append(placed)
    data_start = at
    # tile data: smallest level first, image tile then its mask tile
    offsets: dict[int, list[int]] = {}
    for i in range(len(levels) - 1, -1, -1):
        image, mask = levels[i], masks[i] if masks else None
        image_offsets, mask_offsets = [], []
        for k, size in enumerate(image.tile_sizes):
            image_offsets.append(at + LEADER)
            at += tile_chunk_size(size)
            if mask is not None:
                mask_offsets.append(at + LEADER)
                at += tile_chunk_size(mask.tile_sizes[k])
        offsets[id(image)] = image_offsets
        if mask is not None:
            offsets[id(mask)] = mask_offsets
    total = at
    if not bigtiff and total >= 1 << 32:
        raise OverflowError("the COG would pass 4 GB: write it as BigTIFF")
    out = bytearray(struct.pack("<2sHHHQ", b"II", 43, 8, 0, first_ifd) if bigtiff
                    else struct.pack("<2sHI", b"II", 42, first_ifd))
    out += ghost
    out += b"\0" * (first_ifd - len(out))
    for n, level in enumerate(ordered):
        next_ifd = ifd_at[n + 1] if n + 1 < len(ordered) else 0
        out += w.ifd(with_arrays(level, offsets[id(level)]), ifd_at[n], next_ifd, arrays[n])
    for level, placed in zip(ordered, arrays):
        if TILE_OFFSETS in placed:
            block = struct.pack(f"<{len(level.tile_sizes)}{ptr}", *offsets[id(level)])
            out += block + b"\0" * (len(block) & 1)
        if TILE_BYTE_COUNTS in placed:
            block = struct.pack(f"<{len(level.tile_sizes)}I", *level.tile_sizes)
            out += block + b"\0" * (len(block) & 1)
    assert len(out) == data_start, (len(out), data_start)
    return bytes(out), total


def wrap_tile(data: bytes) -> bytes:
    """A tile as it is stored: leader (its size), the data, trailer (its last 4 bytes again)."""
    return struct.pack("<I", len(data)) + data + data[-4:].rjust(4, b"\0")
