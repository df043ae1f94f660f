"""Reading one tile out of a PMTiles v3 archive by range reads, with the pmtiles package's own parsing.

The archive stays where storage keeps it (a local file, an S3 object, a URL): the header and
root directory come in one 16 KiB read, a leaf directory in one more when the archive has
them, the tile in a third. Directories are kept (a small LRU per archive), so a map that
pans across a layer costs one range read per tile.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections import OrderedDict
from typing import Any, Callable

from pmtiles.tile import Compression, TileType, deserialize_directory, deserialize_header, find_tile, zxy_to_tileid

ReadRange = Callable[[int, int], bytes]  # (offset, length) -> bytes
HEAD = 16384  # the spec keeps the header and the root directory within the first 16 KiB
MAX_DEPTH = 4  # root + at most three levels of leaves (the spec's own bound)
MEDIA_TYPES = {TileType.PNG: "image/png", TileType.JPEG: "image/jpeg", TileType.WEBP: "image/webp"}
EXTENSIONS = {TileType.PNG: ("png",), TileType.JPEG: ("jpg", "jpeg"), TileType.WEBP: ("webp",)}


class ArchiveError(Exception):
    """The bytes are not a PMTiles v3 archive this reader understands."""


class Archive:
    """One archive. Args: read: ranged reads of it; leaves: how many leaf directories to keep."""

    def __init__(self, read: ReadRange, leaves: int = 64):
        self.read = read
        head = read(0, HEAD)
        try:
            self.header = deserialize_header(head[:127])
        except Exception as exc:
            raise ArchiveError(f"not a PMTiles v3 archive: {exc}") from None
        h = self.header
        start, length = h["root_offset"], h["root_length"]
        root = head[start:start + length] if start + length <= len(head) else read(start, length)
        self.root = self._directory(root)
        self._leaves: OrderedDict[tuple[int, int], list] = OrderedDict()
        self._max_leaves = leaves
        self._lock = threading.Lock()

    @property
    def tile_type(self) -> TileType:
        return TileType(self.header["tile_type"])

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES.get(self.tile_type, "application/octet-stream")

    def _directory(self, data: bytes) -> list:
        # the pmtiles package's parser takes a gzipped directory (what its writer makes)
        if self.header["internal_compression"] == Compression.NONE:
            data = gzip.compress(data, compresslevel=1)
        elif self.header["internal_compression"] != Compression.GZIP:
            raise ArchiveError(f"directories compressed as {Compression(self.header['internal_compression']).name}")
        return deserialize_directory(data)

    def _leaf(self, offset: int, length: int) -> list:
        key = (offset, length)
        with self._lock:
            if key in self._leaves:
                self._leaves.move_to_end(key)
                return self._leaves[key]
        entries = self._directory(self.read(self.header["leaf_directory_offset"] + offset, length))
        with self._lock:
            self._leaves[key] = entries
            while len(self._leaves) > self._max_leaves:
                self._leaves.popitem(last=False)
        return entries

    def tile(self, z: int, x: int, y: int) -> bytes | None:
        """The tile's bytes, or None when the archive has no such tile (wholly transparent, or outside)."""
        if not (self.header["min_zoom"] <= z <= self.header["max_zoom"]):
            return None
        tile_id = zxy_to_tileid(z, x, y)
        entries = self.root
        for _ in range(MAX_DEPTH):
            entry = find_tile(entries, tile_id)
            if entry is None:
                return None
            if entry.run_length > 0:
                data = self.read(self.header["tile_data_offset"] + entry.offset, entry.length)
                if self.header["tile_compression"] == Compression.GZIP:
                    data = gzip.decompress(data)
                return data
            entries = self._leaf(entry.offset, entry.length)
        return None

    def metadata(self) -> dict[str, Any]:
        """The archive's JSON metadata (geoworker writes its TileJSON there)."""
        data = self.read(self.header["metadata_offset"], self.header["metadata_length"])
        if self.header["internal_compression"] == Compression.GZIP:
            data = gzip.decompress(data)
        return json.loads(data or b"{}")


class ArchiveCache:
    """Open archives by key (a job and its archive's reference), the least recently used dropped first."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: OrderedDict[Any, Archive] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, read: ReadRange) -> Archive:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        archive = Archive(read)  # outside the lock: a slow read must not hold up other layers
        with self._lock:
            self._items[key] = archive
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return archive
