"""With no database configured at all, geoworker starts its own PostgreSQL and reuses it."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import psutil
import rasterio

from service import run_cli


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def test_demo_on_the_embedded_database_which_is_then_reused():
    import shutil
    import tempfile

    # not pytest's tmp_path (mode 0700): under root the server runs as its own system user
    tmp_path = Path(tempfile.mkdtemp(prefix="geoworker-embedded-"))
    tmp_path.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "GEOWORKER_")) and k != "DATABASE_URL"}
    env["GEOWORKER_WORKER_DEBUG_TASKS"] = "true"
    first = run_cli(["demo"], env, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr + first.stdout
    assert re.search(r"job [0-9a-f-]{36}: succeeded", first.stdout), first.stdout
    png = Path(re.search(r"image\s+(\S+\.png)", first.stdout).group(1))
    with rasterio.open(png) as ds:
        assert ds.crs.to_epsg() == 4326 and ds.count == 4, "the demo's PNG is not georeferenced RGBA"
    assert "succeeded" in first.stdout.split("events:")[1]
    data_dir = tmp_path / "var" / "postgres"
    assert (data_dir / "PG_VERSION").is_file()
    pid = _postmaster_pid(data_dir)
    try:
        job_id = run_cli(["submit", "--task", "debug.noop"], env, cwd=tmp_path).stdout.strip()
        listed = run_cli(["list"], env, cwd=tmp_path)
        assert listed.returncode == 0 and job_id in listed.stdout
        assert _postmaster_pid(data_dir) == pid, "a second server was started instead of reusing the first"
        assert "RuntimeDirWarning" not in listed.stderr
    finally:
        os.kill(pid, signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + 20
        while psutil.pid_exists(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(tmp_path, ignore_errors=True)
