"""A ZIP of one GeoTIFF and its sidecar files (world file, .aux.xml, .msk, .ovr), unpacked safely.

What users have is often `site.tif` + `site.tfw` + `site.tif.aux.xml`: a ZIP carries them as one
upload. Nothing in it is trusted: member names never become paths (only their last component,
made safe, and only once), links, devices, encrypted or nested-too-deep members are refused,
the number of files and the bytes written are capped while writing (a member's declared size
is not believed), and exactly one TIFF must be inside. Of the other files, only those GDAL
itself would read beside the TIFF are kept.
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from geoworker.errors import InvalidInput, TooLarge
from geoworker.storage.names import safe_filename
from geoworker.storage.stream import human_bytes

ZIP_MAGIC = b"PK\x03\x04"
ZIP_TYPES = {"application/zip", "application/x-zip-compressed", "application/x-zip", "multipart/x-zip"}
MAX_MEMBERS = 16
MAX_DEPTH = 4  # folders inside the archive
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CHUNK = 1 << 20


def is_zip(head: bytes) -> bool:
    return head[:4] == ZIP_MAGIC


def unpack(zip_path: Path, dest: Path, max_bytes: int) -> tuple[Path, list[Path]]:
    """Unpack the archive's files flat into dest (an empty private directory).

    Args:
        zip_path: the uploaded archive.
        dest: where its files go, each under its own safe name.
        max_bytes: what all of them may hold together once unpacked (storage.max_file_size).
    Returns:
        (the TIFF, the sidecar files GDAL reads with it).
    Raises:
        InvalidInput: not a ZIP, an unsafe member, not exactly one TIFF; TooLarge: over max_bytes.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"the upload is not a readable ZIP archive: {exc}") from None
    written, names = 0, set()
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _is_junk(m.filename)]
        if len(members) > MAX_MEMBERS:
            raise InvalidInput(f"the ZIP holds {len(members)} files; at most {MAX_MEMBERS} (one GeoTIFF and its "
                               "sidecar files) are taken")
        for member in members:
            name = _checked_name(member)
            if name in names:
                raise InvalidInput(f"the ZIP holds two files named {name}")
            names.add(name)
            written += _extract(archive, member, dest / name, max_bytes - written)
    tiffs = [p for p in (dest / n for n in sorted(names)) if _starts_like_tiff(p)]
    if len(tiffs) != 1:
        found = ", ".join(p.name for p in tiffs) or "none"
        raise InvalidInput(f"the ZIP must hold exactly one GeoTIFF (found {len(tiffs)}: {found})")
    return tiffs[0], [p for p in dest.iterdir() if p != tiffs[0]]


def _is_junk(name: str) -> bool:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return "__MACOSX" in parts or (parts and parts[-1].startswith("._")) or (parts and parts[-1] == ".DS_Store")


def _checked_name(member: zipfile.ZipInfo) -> str:
    raw = member.filename
    if "\x00" in raw:
        raise InvalidInput("the ZIP holds a member whose name contains a NUL character")
    path = PurePosixPath(raw.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise InvalidInput(f"the ZIP member {raw[:100]!r} points outside the archive")
    if len(path.parts) > MAX_DEPTH + 1:
        raise InvalidInput(f"the ZIP member {raw[:100]!r} is nested more than {MAX_DEPTH} folders deep")
    kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the archiver recorded no Unix mode
    if kind and kind != stat.S_IFREG:
        kind = "a link" if kind == stat.S_IFLNK else "not a regular file"
        raise InvalidInput(f"the ZIP member {raw[:100]!r} is {kind}; only plain files are taken")
    if member.flag_bits & 0x1:
        raise InvalidInput(f"the ZIP member {raw[:100]!r} is encrypted")
    return safe_filename(path.name)


def _extract(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, left: int) -> int:
    """Copy one member out, counting what is really written (a declared size may lie)."""
    if member.file_size > left:
        raise TooLarge(f"the ZIP unpacks to more than the {human_bytes(left)} this service takes "
                       "(storage.max_file_size)")
    written = 0
    try:
        with archive.open(member) as src, open(target, "xb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > left:
                    raise TooLarge(f"the ZIP unpacks to more than this service takes (storage.max_file_size): "
                                   f"{member.filename[:100]!r} grows past its declared size")
                out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, OSError) as exc:
        if isinstance(exc, FileExistsError):
            raise InvalidInput(f"the ZIP holds two files named {target.name}") from None
        raise InvalidInput(f"the ZIP member {member.filename[:100]!r} cannot be read: {exc}") from None
    return written


def _starts_like_tiff(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) in TIFF_MAGICS
