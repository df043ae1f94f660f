"""Checks on an input before anything decodes it: declared type, size, signature, malware scan.

The pipeline parses the TIFF header again in detail (geoworker.processing.validate);
these checks are the cheap ones that belong to the transfer: they refuse an HTML error
page, a PNG or a scanner's verdict before GDAL ever opens the file.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from loguru import logger

from geoworker.errors import InvalidInput, TransientError
from geoworker.storage.stream import human_bytes, too_large
from geoworker.storage.ziparchive import ZIP_TYPES

SCAN_TIMEOUT = 600.0
TIFF_TYPES = {"image/tiff", "image/tif", "image/x-tiff", "image/geotiff", "image/x-geotiff",
              "application/x-geotiff", "application/geotiff", "image/tiff-fx"}
# what servers and browsers say when they do not know or do not care what a file is
GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream", "application/x-download",
                 "application/force-download", "application/download", "application/binary"}


class ScanUnavailable(TransientError):
    """The malware scanner could not give a verdict (not installed, timed out); the job is retried."""


def check_content_type(content_type: str | None, *, source: str = "the input", archives: bool = False) -> None:
    """Refuse a declared content type that says the file is something other than a TIFF.

    Args:
        content_type: a Content-Type header or an upload's declared type; None or "" means undeclared.
        source: where it came from, for the message (no secrets).
        archives: a ZIP (of a GeoTIFF and its sidecar files) is welcome too (the API's uploads).
    Raises:
        InvalidInput: the declared type is neither a TIFF type nor a generic binary type.
    """
    if not content_type or not content_type.strip():
        return
    media = content_type.split(";")[0].strip().lower()
    if media in TIFF_TYPES or media in GENERIC_TYPES or (archives and media in ZIP_TYPES):
        return
    wanted = "a TIFF (image/tiff) or a ZIP of one (application/zip)" if archives else "a TIFF (image/tiff)"
    raise InvalidInput(f"{source} is declared as {media}, not {wanted}")


def check_size(path: Path, max_size: int) -> int:
    size = os.stat(path).st_size
    if size == 0:
        raise InvalidInput("the input is empty (0 bytes), not a TIFF")
    if size > max_size:
        raise too_large(max_size, size)
    return size


def check_magic(path: Path) -> None:
    """Refuse a file that does not start with a TIFF or BigTIFF signature (the message names what it is)."""
    # here, not at the top: geoworker.processing pulls in rasterio and numpy, and config
    # imports this module (through storage.registry) in every process
    from geoworker.processing.validate import check_magic as tiff_signature

    tiff_signature(path)


def scan_file(path: Path, command: str, timeout: float = SCAN_TIMEOUT) -> None:
    """Run the configured scanner (`{path}` replaced, no shell); any non-zero exit rejects the file.

    Args:
        path: the downloaded input.
        command: storage.scan_command, e.g. "clamdscan --no-summary --fdpass {path}"; the path is
            appended when the command has no {path}.
    Raises:
        InvalidInput: the scanner exited non-zero (clamdscan: 1 = found, 2 = error; both refuse).
        ScanUnavailable: the scanner is missing or did not finish in time (transient).
    """
    parts = shlex.split(command)
    args = [p.replace("{path}", str(path)) for p in parts]
    if not any("{path}" in p for p in parts):
        args.append(str(path))
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise ScanUnavailable(f"the malware scanner {parts[0]!r} is not installed (storage.scan_command)") from None
    except subprocess.TimeoutExpired:
        raise ScanUnavailable(f"the malware scan did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        said = (proc.stdout + proc.stderr).decode("utf-8", "replace").replace(str(path), path.name)
        lines = [line.strip() for line in said.splitlines() if line.strip()]
        detail = f": {lines[-1][:200]}" if lines else ""
        logger.warning("malware scan rejected {} (exit {}){}", path.name, proc.returncode, detail)
        raise InvalidInput(f"the input was rejected by the malware scan (exit {proc.returncode}){detail}")


def check_input(path: Path, storage, content_type: str | None = None) -> int:
    """Every check before decoding, cheapest first: size, declared type, signature, scan.

    Args:
        path: the fetched input.
        storage: the StorageSettings (max_file_size, validate_headers, scan_command).
        content_type: the type the source declared, if any.
    Returns:
        the file size in bytes.
    """
    size = check_size(path, storage.max_file_size)
    if storage.validate_headers:
        check_content_type(content_type)
        check_magic(path)
    if storage.scan_command:
        scan_file(path, storage.scan_command)
    logger.debug("input {} passed the checks ({})", path.name, human_bytes(size))
    return size
