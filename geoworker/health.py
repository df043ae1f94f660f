"""`geoworker health`: can this host process jobs? Database, API, file system, dependencies.

Each check returns ok, fail or skip with a one-line message, in the shape the platform's
operators already read:

    ✅ Database: Database connection successful
    ✅ Api: API connection successful
    ✅ File_System: File system accessible
    ✅ Dependencies: All dependencies available

    🎉 Overall Status: HEALTHY - Worker is ready to process jobs

A check never raises and never waits long (CONNECT_TIMEOUT, API_TIMEOUT). A skipped check
(no API configured) does not make the worker unhealthy.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from geoworker.errors import DatabaseUnavailable, first_line
from geoworker.logs import redact
from geoworker.masking import mask_dsn, strip_url_secrets
from geoworker.storage.registry import backend_class

OK, FAIL, SKIP = "ok", "fail", "skip"
MARKS = {OK: "✅", FAIL: "❌", SKIP: "➖"}
CONNECT_TIMEOUT = 5.0  # seconds, at most: a health check must answer quickly
API_TIMEOUT = 5.0
GiB = 1024 ** 3
# Free space wanted under storage.root and temp_dir: 1 GiB, or more when each child may hold an
# input of max_file_size and outputs about as large again at the same time.
MIN_FREE_BYTES = 1 * GiB
FREE_PER_CHILD_FACTOR = 2


@dataclass
class Check:
    name: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "message": self.message, "details": self.details}


def run_checks(settings) -> list[Check]:
    """Every check, in the operators' order."""
    checks: list[tuple[str, Callable[[Any], Check]]] = [
        ("Database", check_database), ("Api", check_api), ("File_System", check_file_system),
        ("Dependencies", lambda s: check_dependencies()),
    ]
    results = []
    for name, check in checks:
        started = time.monotonic()
        try:
            result = check(settings)
        except Exception as exc:  # a check's own bug must still give an answer
            result = Check(name, FAIL, f"{name} check failed: {type(exc).__name__}: {exc}")
        result.message = redact(result.message)
        result.details["seconds"] = round(time.monotonic() - started, 3)
        results.append(result)
    return results


def overall(checks: list[Check]) -> tuple[bool, str]:
    failed = [c for c in checks if c.status == FAIL]
    if not failed:
        return True, "Worker is ready to process jobs"
    return False, "; ".join(f"{c.name}: {c.message}" for c in failed)


def render_text(checks: list[Check]) -> str:
    healthy, reason = overall(checks)
    lines = [f"{MARKS[c.status]} {c.name}: {c.message}" for c in checks]
    lines.append("")
    lines.append(f"🎉 Overall Status: HEALTHY - {reason}" if healthy else f"❌ Overall Status: UNHEALTHY - {reason}")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> dict[str, Any]:
    healthy, reason = overall(checks)
    return {"healthy": healthy, "status": "HEALTHY" if healthy else "UNHEALTHY", "reason": reason,
            "checks": [c.to_dict() for c in checks]}


# --- the checks ---------------------------------------------------------------------------


def check_database(settings) -> Check:
    """Connect, the schema is current, the queue can be read."""
    # psycopg2 (through db and jobs) here, not at the top: a broken driver must be a failed
    # check (Dependencies says which), not a health command that cannot start
    from geoworker import db
    from geoworker.jobs import JobQueue

    name = "Database"
    if settings.queue.mode == "http":
        return Check(name, SKIP, "not used (queue.mode = \"http\")")
    try:
        dsn = db.resolve_dsn(settings)
    except Exception as exc:  # the embedded server would not start
        return Check(name, FAIL, f"Database connection failed: {exc}")
    details: dict[str, Any] = {"dsn": mask_dsn(dsn)}
    queue = JobQueue.from_settings(settings, "health", "geoworker-health", dsn=dsn, statement_timeout=CONNECT_TIMEOUT,
                                   connect_timeout=min(settings.database.connect_timeout, CONNECT_TIMEOUT))
    try:
        try:
            queue.ping()
        except DatabaseUnavailable as exc:
            return Check(name, FAIL, f"Database connection failed: {exc}", details)
        version, latest = db.schema_version(queue.conn), db.latest_version()
        details.update(schema_version=version, schema_wanted=latest)
        if version is None:
            return Check(name, FAIL, "Database reachable but it has no geoworker schema: run `geoworker migrate`",
                         details)
        if version < latest:
            return Check(name, FAIL, f"Database schema is at version {version}, this geoworker needs {latest}: "
                         "run `geoworker migrate`", details)
        details["queue"] = queue.summary()
    except DatabaseUnavailable as exc:
        return Check(name, FAIL, f"Database connection lost: {exc}", details)
    except Exception as exc:  # e.g. a DSN psycopg2 cannot parse, a role that may not read geo_jobs
        return Check(name, FAIL, f"Database check failed: {first_line(exc)}", details)
    finally:
        queue.close()
    return Check(name, OK, "Database connection successful", details)


def check_api(settings) -> Check:
    """GET {api.base_url}/health when an API is configured."""
    name = "Api"
    base = settings.api.base_url.strip()
    if not base:
        return Check(name, SKIP, "skipped: api.base_url (API_BASE_URL) is not set")
    import requests

    url = base.rstrip("/") + "/health"
    details: dict[str, Any] = {"url": strip_url_secrets(url)}
    try:
        response = requests.get(url, timeout=API_TIMEOUT, allow_redirects=False)
    except requests.RequestException as exc:
        return Check(name, FAIL, f"API connection failed: {type(exc).__name__} for {details['url']}", details)
    details["status_code"] = response.status_code
    if not 200 <= response.status_code < 300:
        return Check(name, FAIL, f"API answered HTTP {response.status_code} at {details['url']}", details)
    return Check(name, OK, "API connection successful", details)


def required_free_bytes(settings) -> int:
    return max(MIN_FREE_BYTES, FREE_PER_CHILD_FACTOR * settings.storage.max_file_size * settings.worker.concurrency)


def check_file_system(settings) -> Check:
    """temp_dir and the backend's own directories (storage.root on the local backend): writable,
    with free space above the threshold."""
    name = "File_System"
    wanted = required_free_bytes(settings)
    places = {"temp_dir": settings.storage.temp_dir,
              **backend_class(settings.storage.backend).local_directories(settings)}
    details: dict[str, Any] = {"required_free_bytes": wanted}
    problems = []
    for key, path in places.items():
        problem, info = _check_directory(Path(path), wanted)
        details[key] = info
        if problem:
            problems.append(f"{key} {path}: {problem}")
    if problems:
        return Check(name, FAIL, "; ".join(problems), details)
    return Check(name, OK, "File system accessible", details)


def _check_directory(path: Path, wanted: int) -> tuple[str | None, dict[str, Any]]:
    info: dict[str, Any] = {"path": str(path)}
    try:
        path.mkdir(parents=True, exist_ok=True)  # the worker would create it too
        with tempfile.NamedTemporaryFile(dir=path, prefix=".health-") as probe:
            probe.write(b"geoworker health check\n")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        return f"not writable ({exc.strerror or exc})", info
    free = shutil.disk_usage(path).free
    info["free_bytes"] = free
    if free < wanted:
        return f"only {free / GiB:.2f} GiB free, {wanted / GiB:.2f} GiB wanted", info
    return None, info


def check_dependencies() -> Check:
    """The libraries a job needs import, and rasterio/GDAL write and read a tiny GeoTIFF in memory.

    They are imported in here (and in the helpers below), not at the top: a missing or
    broken one must be this check's failure, not a health command that cannot start.
    """
    name = "Dependencies"
    versions: dict[str, Any] = {}
    missing = []
    for module, label in (("rasterio", "rasterio"), ("numpy", "numpy"), ("PIL", "Pillow"),
                          ("psycopg2", "psycopg2"), ("psutil", "psutil")):
        try:
            mod = __import__(module)
            versions[label] = getattr(mod, "__version__", "?")
        except Exception as exc:
            missing.append(f"{label} ({type(exc).__name__}: {exc})")
    details: dict[str, Any] = {"versions": versions}
    if missing:
        return Check(name, FAIL, "missing or broken: " + ", ".join(missing), details)
    import rasterio

    versions["GDAL"] = rasterio.__gdal_version__
    try:
        _tiny_geotiff_round_trip()
        _tiny_png()
        import psutil

        psutil.virtual_memory()
    except Exception as exc:
        return Check(name, FAIL, f"libraries import but do not work: {type(exc).__name__}: {first_line(exc)}",
                     details)
    return Check(name, OK, "All dependencies available", details)


def _tiny_geotiff_round_trip() -> None:
    import numpy as np
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    data = np.arange(64, dtype="uint8").reshape(1, 8, 8)
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8", "crs": "EPSG:4326",
               "transform": from_origin(44.0, 15.5, 0.001, 0.001), "compress": "deflate"}
    with MemoryFile() as memfile:
        with memfile.open(**profile) as dst:
            dst.write(data)
        with memfile.open() as src:
            back = src.read()
            if not (back == data).all() or src.crs.to_epsg() != 4326:
                raise RuntimeError("a GeoTIFF written in memory did not read back the same")


def _tiny_png() -> None:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), dtype="uint8")).save(buf, format="PNG")
    if not buf.getvalue().startswith(b"\x89PNG"):
        raise RuntimeError("Pillow did not write a PNG")

