"""Names from users, made safe to use as one path component.

A name that reaches the file system (an uploaded file name, the last segment of a URL,
an object key) goes through `safe_filename` first: it keeps the last component only,
so `../`, absolute paths and Windows separators cannot climb out of a directory, and
reduces the rest to [A-Za-z0-9._-] so that NUL bytes, control characters, shell
metacharacters and leading dashes or dots never appear in a path we create.
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME = 120
# output kinds renamed for what they are, with the name earlier releases used: the API still shows
# the old key beside the new one, and the http backend still finds a platform's upload URL under it
# (kept for one release; "png" held a JPEG or WebP as well when output_format said so)
LEGACY_OUTPUT_KINDS = {"image": "png"}
DEFAULT_INPUT_NAME = "input.tif"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
# names Windows refuses whatever the extension; a share mounted from Windows would too
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_filename(name: object, default: str = DEFAULT_INPUT_NAME) -> str:
    """One safe path component from an untrusted name.

    Args:
        name: a file name, path or URL segment from a user (anything; None allowed).
        default: returned when nothing usable is left.
    Returns:
        a non-empty name of [A-Za-z0-9._-], at most MAX_NAME characters, not starting with
        a dot or dash, extension kept when the name had to be shortened.
    """
    text = unicodedata.normalize("NFKC", str(name or "")).replace("\x00", "")
    last = re.split(r"[/\\]", text)[-1]
    cleaned = _UNSAFE.sub("_", last).lstrip("._-")
    cleaned = re.sub(r"_+\.", ".", re.sub(r"_{2,}", "_", cleaned)).rstrip("_")
    if not cleaned or cleaned.strip(".") == "":
        return default
    if len(cleaned) > MAX_NAME:
        stem, dot, ext = cleaned.rpartition(".")
        ext = ext[:16] if dot and stem else ""
        cleaned = cleaned[: MAX_NAME - len(ext) - 1].rstrip("._-") + ("." + ext if ext else "")
    if cleaned.split(".")[0].lower() in _RESERVED:
        cleaned = "_" + cleaned
    return cleaned


def sidecar_name(original: str, stored: str, sidecar: str) -> str:
    """The name a sidecar file takes beside an input stored as `stored` that the user called `original`.

    GDAL finds sidecars by the TIFF's name (site.tif.aux.xml, site.tif.msk, site.tif.ovr) or its stem
    (site.tfw, site.wld): when storage renames the TIFF, its sidecars are renamed the same way.
    """
    if sidecar.startswith(original):
        return stored + sidecar[len(original):]
    original_stem, stored_stem = original.rpartition(".")[0] or original, stored.rpartition(".")[0] or stored
    if sidecar.startswith(original_stem):
        return stored_stem + sidecar[len(original_stem):]
    return safe_filename(sidecar)


def checked_job_id(job_id: object) -> str:
    """A job id known to be one plain path component (uuids are; anything else is a bug upstream).

    Raises:
        ValueError: the id holds characters a path component must not.
    """
    text = str(job_id)
    if not _JOB_ID.match(text):
        raise ValueError(f"not a usable job id: {text[:80]!r}")
    return text
