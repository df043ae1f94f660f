"""Writing rendered arrays as PNG, JPEG or WebP, and the thumbnail.

Every file is written under a temporary name in its final directory and renamed
into place, so a process killed mid-write never leaves a half file under a final name.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from geoworker.processing.render import mode_for

# zlib level for PNG: measured in bench/processing.py. Level 1 with the "Sub" filter
# family compresses orthophotos within a few percent of level 6, about 3x faster.
PNG_COMPRESS_LEVEL = 1


def to_pil(image: np.ndarray) -> Image.Image:
    """Args: image: (c, h, w) uint8 with c in 1..4. Returns: a Pillow image (L, LA, RGB or RGBA)."""
    if image.shape[0] == 1:
        return Image.fromarray(image[0], "L")
    return Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)), mode_for(image.shape[0]))


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
    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return thumb
