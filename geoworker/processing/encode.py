"""Writing rendered arrays as PNG, JPEG or WebP, and the thumbnail.

Every file is written under a temporary name in its final directory and renamed
into place, so a process killed mid-write never leaves a half file under a final name.
"""

from __future__ import annotations

import io
import math
import os
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
from PIL import Image

from geoworker.processing.render import mode_for

try:  # ISA-L's deflate: 5-7x faster than zlib at the same ratio (bench/processing.py)
    from isal import isal_zlib as _deflate

    DEFLATE_LEVEL = 2  # isal levels are 0-3
except ImportError:  # pragma: no cover - isal is a pinned dependency; stay correct without it
    _deflate = zlib
    DEFLATE_LEVEL = 1

# Pillow's zlib level for the small images it still writes (thumbnails).
PNG_COMPRESS_LEVEL = 1
PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (L, LA, RGB, RGBA)
ROWS_PER_CHUNK = 256


def to_pil(pixels: np.ndarray) -> Image.Image:
    """Args: pixels: (h, w, c) uint8 with c in 1..4. Returns: a Pillow image (L, LA, RGB or RGBA)."""
    if pixels.shape[2] == 1:
        return Image.fromarray(pixels[..., 0], "L")
    return Image.fromarray(pixels, mode_for(pixels.shape[2]))


def save_pixels(pixels: np.ndarray, path: Path, fmt: str, quality: int) -> int:
    """Encode (h, w, c) uint8 pixels as png (lossless, parallel deflate), jpeg or webp; returns the size."""
    if fmt == "png":
        return write_png(pixels, path)
    return save_image(to_pil(pixels), path, fmt, quality)


def flatten_alpha(img: Image.Image, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """Drop transparency for formats without it (JPEG): invalid pixels get the background."""
    if img.mode in ("RGBA", "LA"):
        base = Image.new("RGB", img.size, background)
        base.paste(img.convert("RGBA"), mask=img.getchannel("A"))
        return base
    return img


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> int:
    """Write a small text file atomically. Returns: its size in bytes."""
    data = text.encode("utf-8")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return len(data)


def save_image(img: Image.Image, path: Path, fmt: str, quality: int) -> int:
    """Encode an image atomically.

    Args:
        img: a Pillow image.
        path: the final file name.
        fmt: png | jpeg | webp (PNG stays lossless; quality applies to jpeg/webp only).
        quality: 1-100 for jpeg/webp.
    Returns:
        the file's size in bytes.
    """
    with atomic_path(path) as tmp:
        if fmt == "png":
            img.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        elif fmt == "jpeg":
            flatten_alpha(img).save(tmp, format="JPEG", quality=quality, optimize=False)
        elif fmt == "webp":
            img.save(tmp, format="WEBP", quality=quality, method=4)
        else:
            raise ValueError(f"unknown output format {fmt!r}")
        return os.path.getsize(tmp)


def make_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """A copy whose long side is at most `size` (aspect kept; alpha-aware resampling)."""
    w, h = img.size
    if size >= w and size >= h:
        return img.copy()
    # Image.thumbnail's own size rule, then resize(): the same pixels without first copying
    # the full-size image (thumbnail() works in place).
    x, y, aspect = size, size, w / h
    if x / y >= aspect:
        x = _round_aspect(y * aspect, lambda n: abs(aspect - n / y))
    else:
        y = _round_aspect(x / aspect, lambda n: 0 if n == 0 else abs(aspect - x / n))
    return img.resize((x, y), Image.Resampling.LANCZOS, reducing_gap=2.0)


def _round_aspect(number: float, key) -> int:
    return max(min(math.floor(number), math.ceil(number), key=key), 1)


def _filter_up(rows: np.ndarray, previous: np.ndarray | None) -> bytes:
    """PNG filter type 2 ("Up") for a block of scanlines: each byte minus the byte above."""
    h = rows.shape[0]
    out = np.empty((h, rows.shape[1] + 1), np.uint8)
    out[:, 0] = 2
    if previous is None:
        out[0, 1:] = rows[0]
    else:
        np.subtract(rows[0], previous, out=out[0, 1:])
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out.tobytes()


def _deflate_rows(flat: np.ndarray, start: int, stop: int, last: bool) -> tuple[bytes, int, int]:
    """Filter and raw-deflate scanlines [start, stop); returns (data, adler32, uncompressed length).

    A non-final segment ends with a sync flush (byte-aligned, not final), so segments
    compressed in parallel concatenate into one valid deflate stream, as pigz does.
    """
    comp = _deflate.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    parts, adler, length = [], 1, 0
    for row in range(start, stop, ROWS_PER_CHUNK):
        end = min(stop, row + ROWS_PER_CHUNK)
        raw = _filter_up(flat[row:end], flat[row - 1] if row > 0 else None)
        adler = zlib.adler32(raw, adler)
        length += len(raw)
        parts.append(comp.compress(raw))
    parts.append(comp.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))
    return b"".join(parts), adler, length


def _adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """zlib's adler32_combine: the checksum of A+B from those of A and B."""
    base = 65521
    rem = len2 % base
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % base
    sum1 += (adler2 & 0xFFFF) + base - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + base - rem
    sum1 %= base
    sum2 %= base
    return sum1 | (sum2 << 16)


def _chunk(fh: BinaryIO, kind: bytes, data: bytes) -> None:
    fh.write(struct.pack(">I", len(data)) + kind + data)
    fh.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def png_bytes_segments(image: np.ndarray, threads: int = 0) -> list[bytes]:
    """Compress an 8-bit image into a zlib stream, in row segments deflated in parallel.

    Args:
        image: (h, w) or (h, w, c) uint8, c in 1..4.
        threads: worker threads (0 = one per CPU, at most 4).
    Returns:
        the zlib stream as a list of byte strings (header, segments, checksum).
    """
    h = image.shape[0]
    flat = image.reshape(h, -1)
    threads = threads or min(4, os.cpu_count() or 1)
    segments = max(1, min(threads, h // ROWS_PER_CHUNK))
    bounds = [round(h * i / segments) for i in range(segments + 1)]
    jobs = [(bounds[i], bounds[i + 1], i == segments - 1) for i in range(segments)]
    if segments == 1:
        results = [_deflate_rows(flat, *jobs[0])]
    else:
        with ThreadPoolExecutor(segments) as pool:
            results = list(pool.map(lambda job: _deflate_rows(flat, *job), jobs))
    adler = 1
    for _, part_adler, length in results:
        adler = _adler32_combine(adler, part_adler, length)
    return [b"\x78\x01"] + [data for data, _, _ in results] + [struct.pack(">I", adler)]


def png_bytes(image: np.ndarray) -> bytes:
    """A small 8-bit PNG (L, LA, RGB or RGBA) in memory, deflated on the calling thread (map tiles).

    Args:
        image: (h, w) or (h, w, c) uint8.
    Returns:
        the PNG file's bytes.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    _chunk(out, b"IHDR", struct.pack(">IIBBBBB", w, h, 8, PNG_COLOR_TYPES[channels], 0, 0, 0))
    _chunk(out, b"IDAT", b"".join(png_bytes_segments(image, threads=1)))
    _chunk(out, b"IEND", b"")
    return out.getvalue()


def write_png(image: np.ndarray, path: Path) -> int:
    """Write a lossless 8-bit PNG (L, LA, RGB or RGBA) atomically, deflating in parallel.

    Pillow's encoder tries every filter on every row and runs zlib on one core; this
    one uses the Up filter and ISA-L deflate over row segments in threads (3-8x faster,
    about the same size; measured in bench/processing.py).

    Args:
        image: (h, w) or (h, w, c) uint8.
        path: the final file name.
    Returns:
        the file's size in bytes.
    """
    image = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    stream = png_bytes_segments(image)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n")
            _chunk(fh, b"IHDR", struct.pack(">IIBBBBB", w, h, 8, PNG_COLOR_TYPES[channels], 0, 0, 0))
            for data in stream:
                for i in range(0, len(data), 1 << 24):
                    _chunk(fh, b"IDAT", data[i:i + (1 << 24)])
            _chunk(fh, b"IEND", b"")
        return os.path.getsize(tmp)
