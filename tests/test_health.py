"""`geoworker health` as operators run it: the platform's output shape, --json, exit codes."""

from __future__ import annotations

import http.server
import json
import re
import threading

import pytest

from conftest import run_cli
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
