"""Streaming copies with a size cap and a running SHA-256, written under a temporary name.

Whatever the source (a socket, an S3 body, a local file), bytes go through
`write_capped`: it counts before it writes, so a transfer stops at `max_size` with
TooLarge and nothing past the cap ever reaches the disk, and only a complete file
is renamed to its final name.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from geoworker.errors import TooLarge

CHUNK = 1 << 16


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def too_large(max_size: int, declared: int | None = None) -> TooLarge:
    said = f"declares {human_bytes(declared)}, " if declared is not None else ""
    return TooLarge(f"the input {said}more than the {human_bytes(max_size)} this worker accepts "
                    f"(max_file_size = {max_size} bytes); the transfer was stopped")


def file_chunks(fh: BinaryIO, chunk: int = CHUNK) -> Iterator[bytes]:
    while block := fh.read(chunk):
        yield block


def write_capped(chunks: Iterable[bytes], dest: Path, max_size: int, *, durable: bool = False,
                 replace: bool = True) -> tuple[int, str]:
    """Write a stream to `dest` via a temporary name in the same directory, enforcing a size cap.

    Args:
        chunks: the bytes, in pieces of bounded size.
        dest: the final path (its directory must exist).
        max_size: the most bytes accepted; one more and TooLarge is raised.
        durable: fsync before the rename (for files that outlive the job).
        replace: False: the first writer wins; FileExistsError if `dest` exists by the end
            (two uploads of one job racing on two API processes must not swap its input).
    Returns:
        (size in bytes, sha256 hex digest).
    Raises:
        TooLarge: the stream went past max_size; the partial file is removed.
    """
    part = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(part, "xb") as fh:  # exclusive: never write through something planted there
            for chunk in chunks:
                size += len(chunk)
                if size > max_size:
                    raise too_large(max_size)
                digest.update(chunk)
                fh.write(chunk)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if replace:
            os.replace(part, dest)
        else:
            os.link(part, dest)  # atomic, and refuses an existing name
            os.unlink(part)
    except BaseException:
        try:
            os.unlink(part)
        except FileNotFoundError:
            pass
        raise
    return size, digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in file_chunks(fh, 1 << 20):
            digest.update(block)
    return digest.hexdigest()
