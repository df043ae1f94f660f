"""The command line as a user runs it: a subprocess against a real database."""

from __future__ import annotations

import json
import os
import re

import pytest

from service import run_cli

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def env(cli_env):
    return {**cli_env, "GEOWORKER_WORKER_DEBUG_TASKS": "true"}


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def user_error(result, pattern: str, code: int | None = None):
    assert result.returncode != 0
    if code is not None:
        assert result.returncode == code
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_migrate_is_idempotent(env, tmp_path):
    assert "schema is up to date" in ok(run_cli(["migrate"], env, cwd=tmp_path))


def test_submit_prints_only_the_id_and_status_events_list_agree(env, tmp_path):
    out = ok(run_cli(["submit", "--task", "debug.sleep", "--param", "seconds=2.5", "--param", "note=hi",
                      "--priority", "7", "--max-attempts", "2"], env, cwd=tmp_path))
    job_id = out.strip()
    assert UUID.match(job_id), out

    status = json.loads(ok(run_cli(["status", job_id, "--json"], env, cwd=tmp_path)))
    assert status["id"] == job_id
    assert (status["status"], status["priority"], status["max_attempts"]) == ("queued", 7, 2)
    assert status["params"] == {"seconds": 2.5, "note": "hi"}
    for field in ("task_type", "progress", "attempts", "run_at", "locked_by", "heartbeat_at", "error_code",
                  "last_error", "created_at", "updated_at", "outputs", "result", "owner", "input"):
        assert field in status

    human = ok(run_cli(["status", job_id], env, cwd=tmp_path))
    assert "status:    queued" in human and "attempts:  0 of 2" in human

    events = json.loads(ok(run_cli(["events", job_id, "--json"], env, cwd=tmp_path)))
    assert [e["kind"] for e in events] == ["created"]
    assert set(events[0]) == {"at", "kind", "message", "worker", "data"}

    listed = json.loads(ok(run_cli(["list", "--status", "queued", "--json"], env, cwd=tmp_path)))
    assert [j["id"] for j in listed] == [job_id]
    assert json.loads(ok(run_cli(["list", "--status", "failed", "--json"], env, cwd=tmp_path))) == []

    as_json = json.loads(ok(run_cli(["submit", "--task", "debug.noop", "--json"], env, cwd=tmp_path)))
    assert UUID.match(as_json["id"]) and as_json["task_type"] == "debug.noop"


def test_cancel_and_retry(env, tmp_path):
    job_id = ok(run_cli(["submit", "--task", "debug.noop"], env, cwd=tmp_path)).strip()
    assert "cancelled" in ok(run_cli(["cancel", job_id], env, cwd=tmp_path))
    user_error(run_cli(["cancel", job_id], env, cwd=tmp_path), r"already cancelled")
    assert "queued again" in ok(run_cli(["retry", job_id], env, cwd=tmp_path))
    user_error(run_cli(["retry", job_id], env, cwd=tmp_path), r"only failed or cancelled")


def test_stats_json(env, tmp_path):
    ok(run_cli(["submit", "--task", "debug.noop"], env, cwd=tmp_path))
    stats = json.loads(ok(run_cli(["stats", "--json"], env, cwd=tmp_path)))
    assert stats["counts"]["queued"] == 1 and stats["queue"]["ready"] == 1
    assert "jobs:" in ok(run_cli(["stats"], env, cwd=tmp_path))


@pytest.mark.parametrize("args,pattern", [
    (["status", "3f1e0c1a-1111-4111-8111-111111111111"], r"no job 3f1e0c1a"),
    (["status", "nonsense"], r"no job 'nonsense' \(a job id is a UUID\)"),
    (["events", "3f1e0c1a-1111-4111-8111-111111111111"], r"no job"),
    (["cancel", "3f1e0c1a-1111-4111-8111-111111111111"], r"no job"),
    (["submit", "--task", "debug.noop", "--param", "novalue"], r"--param 'novalue': expected KEY=VALUE"),
    (["submit", "/nope/missing.tif"], r"/nope/missing.tif: no such file"),
    (["submit"], r"task geotiff_to_png needs an input"),
    (["submit", "--task", "made.up"], r"unknown task 'made.up'"),
    (["submit", "--task", "debug.noop", "--max-attempts", "0"], r"--max-attempts must be at least 1"),
    (["list", "--status", "sleeping"], r"--status must be one of"),
])
def test_user_mistakes_are_one_line_and_non_zero(env, tmp_path, args, pattern):
    user_error(run_cli(args, env, cwd=tmp_path), pattern)


def test_debug_tasks_are_refused_unless_enabled(cli_env, tmp_path):
    user_error(run_cli(["submit", "--task", "debug.noop"], cli_env, cwd=tmp_path), r"debug_tasks is off")


def test_unreachable_database_is_one_line(cli_env, tmp_path):
    env = {**cli_env, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "GEOWORKER_DATABASE_CONNECT_TIMEOUT": "2"}
    user_error(run_cli(["list"], env, cwd=tmp_path), r"^geoworker: database unavailable: cannot connect to PostgreSQL")


def test_no_schema_asks_for_migrate(cli_env, fresh_db, tmp_path):
    env = {**cli_env, "DATABASE_URL": fresh_db()}
    user_error(run_cli(["list"], env, cwd=tmp_path), r"run `geoworker migrate`")
    ok(run_cli(["migrate"], env, cwd=tmp_path))
    assert ok(run_cli(["list", "--json"], env, cwd=tmp_path)).strip() == "[]"


def test_python_dash_m_and_console_script_are_the_same(env, tmp_path):
    import shutil
    import subprocess

    import sys

    # beside the interpreter: CI runs .venv/bin/python without activating the venv
    script = shutil.which("geoworker", path=os.path.dirname(sys.executable)) or shutil.which("geoworker")
    assert script, "the console script is not installed"
    direct = subprocess.run([script, "--version"], capture_output=True, text=True, env=env)
    module = run_cli(["--version"], env)
    assert direct.returncode == module.returncode == 0
    assert direct.stdout == module.stdout and direct.stdout.startswith("geoworker ")


def test_process_runs_the_pipeline_without_a_queue(tmp_path):
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    src = tmp_path / "site plan.tif"
    data = np.arange(64 * 48, dtype="uint16").reshape(1, 48, 64) * 7
    with rasterio.open(src, "w", driver="GTiff", width=64, height=48, count=1, dtype="uint16",
                       crs="EPSG:32638", transform=from_origin(400000, 1700000, 2, 2)) as ds:
        ds.write(data)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin"}
    result = run_cli(["process", str(src), "--out", str(out), "--param", "max_size=32",
                      "--param", "coordinate_system=native"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    png = next(out.glob("*.png"))
    with rasterio.open(png) as ds:
        assert (ds.width, ds.height) == (32, 24)
        assert ds.crs.to_epsg() == 32638
        assert ds.transform.a == pytest.approx(4.0)
    assert str(png) in result.stdout and ".pgw" in result.stdout

    missing = run_cli(["process", str(tmp_path / "nope.tif"), "--out", str(out)], env, cwd=tmp_path)
    user_error(missing, r"nope.tif: no such file")
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster")
    bad = run_cli(["process", str(text), "--out", str(out)], env, cwd=tmp_path)
    user_error(bad, r"not a TIFF")


def test_submit_refuses_bad_processing_params_at_once(env, tmp_path):
    tif = tmp_path / "a.tif"
    tif.write_bytes(b"II*\x00" + b"\x00" * 64)
    user_error(run_cli(["submit", str(tif), "--param", "max_size=abc"], env, cwd=tmp_path), r"max_size")
    assert json.loads(run_cli(["list", "--json"], env, cwd=tmp_path).stdout) == [], "no job may be created"


def test_process_into_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "taken").write_text("x")
    (tmp_path / "in.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    user_error(run_cli(["process", str(tmp_path / "in.tif"), "--out", str(tmp_path / "taken")],
                       {"PATH": "/usr/bin:/bin"}, cwd=tmp_path), r"exists and is not a directory")


# Values a user can type (issue 14, item 3): each is one line naming what is wrong, never a traceback.
TYPED_VALUES = [
    (["submit", "--task", "debug.noop", "--priority", "99999999999"], r"priority must be a whole number between"),
    (["submit", "--task", "debug.noop", "--priority", "-99999999999"], r"priority must be a whole number between"),
    (["submit", "--task", "debug.noop", "--max-attempts", "99999999999"], r"max_attempts must be a whole number"),
    (["list", "--limit", "100000000000000000000"], r"--limit must be between 1 and \d+"),
    (["submit", "--task", "debug.noop", "--param", "x=Infinity"], r"^geoworker: x: numbers must be finite"),
    (["submit", "--task", "debug.noop", "--param", "x=-Infinity"], r"^geoworker: x: numbers must be finite"),
    (["submit", "--task", "debug.noop", "--param", "x=NaN"], r"^geoworker: x: numbers must be finite"),
    (["submit", "--task", "debug.noop", "--param", 'x="a\\u0000b"'], r"^geoworker: x: strings must not contain NUL"),
    (["submit", "--task", "debug.noop", "--param", 'x="\\ud800"'], r"^geoworker: x: strings must be valid Unicode"),
    (["submit", "--task", "debug.noop", "--param", "x=\udcff"], r"^geoworker: x: strings must be valid Unicode"),
    (["submit", "--task", "debug.noop", "--param", "\udcff=1"], r"strings must be valid Unicode"),
    (["submit", "--task", "debug.noop", "--param", "x=" + "[" * 100_000], r"--param x: the value is nested too deeply"),
    (["retry", "zz"], r"no job 'zz' \(a job id is a UUID\)"),
    (["run", "--concurrency", "99999999999"], r"--concurrency must be between 1 and \d+"),
]


@pytest.mark.parametrize("args,pattern", TYPED_VALUES, ids=[" ".join(a)[-40:] for a, _ in TYPED_VALUES])
def test_typed_values_are_one_line_and_create_nothing(env, tmp_path, db, args, pattern):
    user_error(run_cli(args, env, cwd=tmp_path), pattern)
    assert db.statuses() == {}  # refused before anything was written


def test_a_value_the_database_refuses_is_one_line_and_not_an_outage(queue):
    """What the boundary checks missed: SQLSTATE class 22 is DataRefused (permanent), not DatabaseUnavailable."""
    from geoworker.errors import DatabaseUnavailable, DataRefused

    with pytest.raises(DataRefused) as refused:
        queue.list(limit=10**20)  # past bigint, straight to the database
    assert not isinstance(refused.value, DatabaseUnavailable) and refused.value.permanent
    assert str(refused.value).splitlines() == [str(refused.value)]
    assert "bigint out of range" in str(refused.value)
    assert queue.list(limit=5) == []  # the connection is still good
