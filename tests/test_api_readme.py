"""The README's "HTTP API" examples, run as written against a real API and a real worker.

Every ```sh block of that section that calls curl is taken verbatim and run with bash, in a
directory holding map.tif, with the virtualenv first on PATH (as the README asks) and the
API's address and secrets in the environment, as an operator would have them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

import rasters
from apiserver import JWT_SECRET, WORKER_TOKEN, api, api_env  # noqa: F401 (fixtures)
from service import Service, write_config

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(240)


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## HTTP API\n", 1)[1].split("\n## ", 1)[0]
    return [b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "curl " in b]


def test_the_readme_has_curl_examples_for_users_and_workers():
    blocks = readme_blocks()
    assert len(blocks) == 2
    assert "/api/geo-jobs" in blocks[0] and "/api/internal/geo-jobs/claim" in blocks[1]


def test_the_readmes_curl_examples_work_as_written(api, cli_env, tmp_path):
    work = tmp_path / "client"
    work.mkdir()
    rasters.write(work / "map.tif", rasters.gradient_rgb(200, 260), compress="deflate")
    config = write_config(tmp_path / "worker.toml", {"worker": {"poll_interval": 1.0, "heartbeat_interval": 1.0}})
    worker = Service({**cli_env, "GEOWORKER_CONFIG": str(config)}, tmp_path, name="worker").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "GEOWORKER_"))}
    env.update({"PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}", "API": api.base,
                "GEOWORKER_API_JWT_SECRET": JWT_SECRET, "WORKER_AUTH_TOKEN": WORKER_TOKEN})
    try:
        runs = [subprocess.run(["bash", "-e", "-c", block], cwd=work, env=env, capture_output=True, text=True,
                               timeout=120) for block in readme_blocks()]
    finally:
        worker.stop()
    for run in runs:
        assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    user, workers = runs
    assert "queued" in user.stdout and "succeeded 100" in user.stderr
    assert '"kind":"succeeded"' in user.stdout.replace(" ", "")
    for name in ("map.png", "map_thumb.png", "map.pgw", "map.prj", "map.png.aux.xml", "map.json"):
        assert (work / name).is_file() and name in user.stdout, name
    with rasterio.open(work / "map.png") as png:
        assert png.crs is not None and png.crs.to_epsg() == 4326
    assert '"status":"healthy"' in workers.stdout.replace(" ", "") and workers.stdout.strip().endswith("204")
