"""`geoworker health` as operators run it: the platform's output shape, --json, exit codes."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from service import run_cli
from geoworker import health

LINE = r"^(✅|❌|➖) (Database|Api|File_System|Dependencies): .+$"


@pytest.fixture
def api_server():
    """A stand-in for the platform's API on loopback: /health answers `status[0]`."""
    status = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = status[0] if self.path == "/api/health" else 404
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api", status
    server.shutdown()
    server.server_close()


def test_healthy_output_is_the_shape_operators_know(cli_env, tmp_path):
    result = run_cli(["health"], cli_env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "✅ Database: Database connection successful",
        "➖ Api: skipped: api.base_url (API_BASE_URL) is not set",
        "✅ File_System: File system accessible",
        "✅ Dependencies: All dependencies available",
        "",
        "🎉 Overall Status: HEALTHY - Worker is ready to process jobs",
    ]


def test_json_has_every_check_with_details(cli_env, tmp_path, api_server):
    url, _status = api_server
    result = run_cli(["health", "--json"], {**cli_env, "API_BASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["healthy"] is True and doc["status"] == "HEALTHY"
    checks = {c["name"]: c for c in doc["checks"]}
    assert list(checks) == ["Database", "Api", "File_System", "Dependencies"]
    assert all(c["status"] == "ok" for c in checks.values())
    assert checks["Api"]["message"] == "API connection successful"
    assert checks["Database"]["details"]["schema_version"] == checks["Database"]["details"]["schema_wanted"]
    assert "ready" in checks["Database"]["details"]["queue"]
    versions = checks["Dependencies"]["details"]["versions"]
    assert {"rasterio", "GDAL", "numpy", "Pillow", "psycopg2", "psutil"} <= set(versions)
    assert checks["File_System"]["details"]["temp_dir"]["free_bytes"] > 0


def test_bad_dsn_is_unhealthy_with_exit_1_and_no_password(cli_env, tmp_path):
    env = {**cli_env, "DATABASE_URL": "postgresql://geo:pw-SECRET@127.0.0.1:1/geo"}
    result = run_cli(["health"], env, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert all(re.match(LINE, line) for line in lines[:4])
    assert lines[0].startswith("❌ Database: Database connection failed")
    assert lines[4] == "" and lines[5].startswith("❌ Overall Status: UNHEALTHY - Database: ")
    assert "pw-SECRET" not in result.stdout + result.stderr
    doc = json.loads(run_cli(["health", "--json"], env, cwd=tmp_path).stdout)
    assert doc["healthy"] is False and doc["reason"].startswith("Database: ")


def test_a_database_without_the_schema_says_to_migrate(cli_env, tmp_path, fresh_db):
    result = run_cli(["health"], {**cli_env, "DATABASE_URL": fresh_db()}, cwd=tmp_path)
    assert result.returncode == 1
    assert "❌ Database: Database reachable but it has no geoworker schema: run `geoworker migrate`" in result.stdout


def test_an_api_that_fails_makes_it_unhealthy(cli_env, tmp_path, api_server):
    url, status = api_server
    status[0] = 503
    result = run_cli(["health"], {**cli_env, "API_BASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 1
    assert f"❌ Api: API answered HTTP 503 at {url}/health" in result.stdout


def test_file_system_problems_are_named(cli_env, tmp_path):
    (tmp_path / "a-file").write_text("")
    env = {**cli_env, "GEOWORKER_STORAGE_TEMP_DIR": str(tmp_path / "a-file" / "tmp")}
    result = run_cli(["health"], env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"❌ File_System: temp_dir {tmp_path / 'a-file' / 'tmp'}: not writable" in result.stdout
    # free space: a max_file_size no disk has room for twice
    result = run_cli(["health"], {**cli_env, "MAX_FILE_SIZE": str(10 ** 17)}, cwd=tmp_path)
    assert result.returncode == 1 and "GiB wanted" in result.stdout


def test_skipped_checks_do_not_make_it_unhealthy():
    checks = [health.Check("Database", health.OK, "Database connection successful"),
              health.Check("Api", health.SKIP, "skipped")]
    assert health.overall(checks) == (True, "Worker is ready to process jobs")
    checks.append(health.Check("File_System", health.FAIL, "temp_dir /x: not writable"))
    assert health.overall(checks) == (False, "File_System: temp_dir /x: not writable")
    assert health.render_text(checks).splitlines()[-1] == \
        "❌ Overall Status: UNHEALTHY - File_System: temp_dir /x: not writable"


# --- the start script and the deployment files that run the checks -------------------------

ROOT = Path(__file__).resolve().parent.parent


def start_worker(env, *args: str) -> subprocess.CompletedProcess:
    env = {**env, "GEOWORKER_BIN": str(Path(sys.executable).parent / "geoworker")}
    return subprocess.run([str(ROOT / "start_worker.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_start_worker_checks_migrates_and_execs_the_service(cli_env, tmp_path, fresh_db):
    env = {**cli_env, "DATABASE_URL": fresh_db(), "GEOWORKER_WORKER_DEBUG_TASKS": "true"}
    result = start_worker(env, "--drain")  # a new database: migrated before the health check
    assert result.returncode == 0, result.stdout + result.stderr
    assert "🎉 Overall Status: HEALTHY" in result.stdout
    assert "applied schema.sql" in result.stdout and "drained" in result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("start_worker: ")]
    assert [s.split(": ", 1)[1].split(" ")[0] for s in steps] == ["checking", "applying", "checking", "starting:"]


def test_start_worker_does_not_start_an_unhealthy_worker(cli_env, tmp_path):
    (tmp_path / "a-file").write_text("")
    env = {**cli_env, "GEOWORKER_STORAGE_TEMP_DIR": str(tmp_path / "a-file" / "tmp")}
    result = start_worker(env, "--drain")
    assert result.returncode == 1
    assert "❌ File_System" in result.stdout and "unhealthy: not starting" in result.stderr
    assert "starting:" not in result.stderr
    bad_config = start_worker({**cli_env, "POLL_INTERVAL": "-1"}, "--drain")
    assert bad_config.returncode != 0 and "worker.poll_interval (from POLL_INTERVAL)" in bad_config.stderr


def test_env_example_is_a_valid_env_file_with_secrets_empty(tmp_path):
    from geoworker.config import load_settings

    text = (ROOT / ".env.example").read_text()
    (tmp_path / ".env").write_text(text)
    settings = load_settings(environ={}, base_dir=tmp_path)
    assert settings.database.dsn == "" and settings.api.worker_token == ""
    for name in ("DATABASE_URL", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGSSLMODE", "PGSSL",
                 "API_BASE_URL", "WORKER_AUTH_TOKEN", "WORKER_NAME", "POLL_INTERVAL", "HEARTBEAT_INTERVAL",
                 "MAX_PROCESSING_TIME", "MAX_FILE_SIZE", "CONCURRENT_JOBS", "LOG_LEVEL", "TEMP_DIR"):
        assert re.search(rf"^#? ?{name}=", text, re.MULTILINE), f"{name} is missing from .env.example"
    assert "chmod 600" in text
    # the PG* parts a user fills in are not hidden by anything else in the file
    with_pg = load_settings(environ={"PGHOST": "db.internal", "PGUSER": "geo"}, base_dir=tmp_path)
    assert "host=db.internal" in with_pg.database.dsn


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies(tmp_path):
    unit = (ROOT / "deploy" / "geoworker.service").read_text()
    for key in ("Type=simple", "KillMode=mixed", "Restart=on-failure", "MemoryMax=", "ExecStartPre="):
        assert key in unit
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE).group(1))
    assert stop > 60 + 5, "TimeoutStopSec must exceed worker.graceful_timeout and the kill grace"
    # verify needs the commands to exist: point them at this checkout's geoworker
    local = unit.replace("/opt/geoworker/.venv/bin/geoworker", str(Path(sys.executable).parent / "geoworker"))
    (tmp_path / "geoworker.service").write_text(local)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "geoworker.service")],
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "geoworker.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
