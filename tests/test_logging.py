"""The log file of a real `geoworker run`: rotation under load, JSON lines, memory reports, secrets."""

from __future__ import annotations

import gzip
import json
import re
import signal
import sys
from pathlib import Path

import psycopg2.extensions
import pytest

from service import Database, Service, wait_for, write_config

pytestmark = pytest.mark.timeout(240)

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| (?P<level>[A-Z]+) +\| (?P<role>supervisor|child)\[(?P<pid>\d+)\]"
    r"(?: job=(?P<job>\S+) attempt=(?P<attempt>\d+) task=\S+)? \| (?P<message>.*)$")
NUMBERED = re.compile(r"^debug\.noop line (\d+) of (\d+)$")


@pytest.fixture
def start(cli_env, tmp_path):
    made: list[Service] = []

    def make(worker=None, logging=None, env=None, name="service") -> Service:
        config = write_config(tmp_path / f"{name}.toml", {
            "worker": {"debug_tasks": True, "concurrency": 2, "poll_interval": 0.5, "heartbeat_interval": 1.0,
                       "graceful_timeout": 5.0, **(worker or {})},
            "retry": {"backoff_base": 0.2, "backoff_max": 0.5},
            "logging": {"file": str(tmp_path / "log" / "worker.log"), **(logging or {})},
        })
        service_env = {**cli_env, "GEOWORKER_CONFIG": str(config), **(env or {})}
        service_env.pop("GEOWORKER_LOGGING_FILE")  # the config file says where
        svc = Service(service_env, tmp_path, name=name)
        made.append(svc.start())
        return svc

    yield make
    for svc in made:
        svc.stop()


def log_lines(directory: Path) -> tuple[list[str], list[Path]]:
    """Every line of the current and the rotated (gzipped) files, and the files."""
    files = sorted(directory.glob("worker*.log*"))
    lines: list[str] = []
    for path in files:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
        assert text == "" or text.endswith("\n"), f"{path.name} ends in the middle of a line"
        lines += text.splitlines()
    return lines, files


def parse(line: str, json_mode: bool) -> dict:
    if json_mode:
        doc = json.loads(line)
        assert {"time", "level", "role", "pid", "message"} <= set(doc), line
        return doc
    match = TEXT_LINE.match(line)
    assert match, f"not a log line: {line!r}"
    doc = match.groupdict()
    doc["attempt"] = int(doc["attempt"]) if doc["attempt"] else None
    return doc


@pytest.mark.parametrize("json_mode", [True, False], ids=["json", "text"])
def test_log_file_rotates_under_load_with_no_lost_or_broken_line(start, queue, dsn, tmp_path, json_mode):
    jobs, per_job = 40, 250
    ids = [queue.enqueue("debug.noop", {"lines": per_job}).id for _ in range(jobs)]
    svc = start(worker={"concurrency": 4},
                logging={"json": json_mode, "rotation": "64 KB", "retention": 10000})
    db = Database(dsn)
    try:
        wait_for(lambda: db.statuses() == {"succeeded": jobs}, 120, what=f"{jobs} jobs")
    finally:
        db.close()
    svc.signal(signal.SIGTERM)
    assert svc.wait(60) == 0

    lines, files = log_lines(tmp_path / "log")
    assert len(files) > 5 and any(f.suffix == ".gz" for f in files), [f.name for f in files]
    seen: dict[str, list[int]] = {job_id: [] for job_id in ids}
    pids = set()
    for line in lines:
        doc = parse(line, json_mode)
        match = NUMBERED.match(doc["message"])
        if match:
            assert doc["role"] == "child" and doc["job"] in seen and doc["attempt"] == 1, line
            assert int(match.group(2)) == per_job
            seen[doc["job"]].append(int(match.group(1)))
            pids.add(doc["pid"])
    assert len(pids) == 4, "all four children should have logged"
    for job_id, numbers in seen.items():
        assert sorted(numbers) == list(range(1, per_job + 1)), f"job {job_id}: lines lost or repeated"


def test_json_lines_carry_job_ids_and_the_memory_report_warns_before_a_kill(start, queue, dsn, tmp_path):
    fine = queue.enqueue("debug.noop", {"lines": 3})
    hog = queue.enqueue("debug.allocate", {"mb": 600, "seconds": 20}, max_attempts=1)
    svc = start(worker={"concurrency": 1, "max_child_rss_mb": 200, "report_interval": 1.0},
                logging={"json": True})
    db = Database(dsn)
    try:
        wait_for(lambda: db.job(hog.id)["status"] == "failed", 60, what="the allocating job to be killed")
        wait_for(lambda: db.job(fine.id)["status"] == "succeeded", 60, what="the small job")
    finally:
        db.close()
    wait_for(lambda: sum("memory report" in line for line in log_lines(tmp_path / "log")[0]) >= 2, 30,
             what="periodic memory reports")
    svc.signal(signal.SIGTERM)
    assert svc.wait(60) == 0

    docs = [json.loads(line) for line in log_lines(tmp_path / "log")[0]]
    for job in (fine, hog):
        mine = [d for d in docs if d.get("job") == job.id]
        assert any(f"job {job.id} started" in d["message"] for d in mine)
        assert all(d["attempt"] == 1 and d["task"] == job.task_type for d in mine)
    assert sum(bool(NUMBERED.match(d["message"])) and d.get("job") == fine.id for d in docs) == 3

    # the warning comes before the kill, and the kill's memory report names the job, as an event too
    warned = next(i for i, d in enumerate(docs) if "is near its memory limit" in d["message"])
    killed = next(i for i, d in enumerate(docs) if "killed (memory_limit)" in d["message"])
    assert warned < killed and docs[killed]["job"] == hog.id and docs[killed]["role"] == "supervisor"
    report = next(d for d in docs[killed:] if d["message"].startswith("memory report:"))
    assert report["level"] == "WARNING" and f"job {hog.id}" in report["message"]
    memory = report["memory"]
    child = next(c for c in memory["children"] if c["job"] == hog.id)  # its RSS: 0 if it died already
    assert child["state"] == "busy" and memory["limit_per_child"] == 200 * 1024 * 1024
    assert memory["pool_total"] >= child["rss"] and memory["supervisor"]["rss"] > 0
    assert 0 < memory["system"]["percent"] < 100 and memory["system"]["available"] > 0


def test_secrets_and_url_signatures_never_reach_the_log(start, queue, dsn, tmp_path):
    secret_dsn = psycopg2.extensions.make_dsn(dsn, password="pw-SUPERSECRET")  # trust auth ignores it
    signed = "https://files.example.org/a.tif?X-Amz-Credential=CRED-SECRET&X-Amz-Signature=SIG-SECRET"
    job = queue.enqueue("debug.fail", {"permanent": True,
                                       "message": f"could not fetch {signed} with Authorization: Bearer TOKEN-SECRET"})
    svc = start(env={"DATABASE_URL": secret_dsn})
    db = Database(dsn)
    try:
        wait_for(lambda: db.job(job.id)["status"] == "failed", 60, what="the failing job")
    finally:
        db.close()
    svc.signal(signal.SIGTERM)
    assert svc.wait(60) == 0
    text = "\n".join(log_lines(tmp_path / "log")[0]) + svc.log()
    assert "files.example.org/a.tif" in text and "started" in text  # the lines are there ...
    for secret in ("SUPERSECRET", "CRED-SECRET", "SIG-SECRET", "TOKEN-SECRET"):
        assert secret not in text  # ... without what they must not carry


def test_a_traceback_in_text_mode_is_redacted_too(tmp_path):
    """loguru's own exception formatting would print the exception's text as it is."""
    from loguru import logger

    from geoworker import logs
    from geoworker.config import load_settings

    settings = load_settings(environ={"GEOWORKER_LOGGING_FILE": str(tmp_path / "w.log")}, base_dir=tmp_path)
    try:
        logs.setup_service_logging(settings, role="supervisor")
        try:
            raise RuntimeError("GET https://h.example/x?sig=SIG-SECRET failed")
        except RuntimeError:
            logger.exception("upload failed")
    finally:
        logger.remove()
        logger.add(sys.stderr)
    text = (tmp_path / "w.log").read_text()
    assert "upload failed" in text and "RuntimeError: GET https://h.example/x?sig=<redacted> failed" in text
    assert "SIG-SECRET" not in text


def test_a_service_logs_each_settings_warning_once(tmp_path):
    """At start, and not again when a SIGHUP sets the logging up anew with the same settings."""
    import dataclasses
    import uuid

    from loguru import logger

    from geoworker import logs
    from geoworker.config import load_settings

    settings = load_settings(environ={"GEOWORKER_LOGGING_FILE": str(tmp_path / "w.log"),
                                      "GEOWORKER_STORAGE_BUCKET": "b"}, base_dir=tmp_path)
    assert any("GEOWORKER_STORAGE_S3_BUCKET" in w for w in settings.warnings)
    fresh = f"a warning no other test logged: {uuid.uuid4()}"
    settings = dataclasses.replace(settings, warnings=(*settings.warnings, fresh))
    try:
        logs.setup_service_logging(settings, role="supervisor")
        logs.setup_service_logging(settings, role="supervisor")  # a SIGHUP that changed nothing
    finally:
        logger.remove()
        logger.add(sys.stderr)
    lines = [line for line in (tmp_path / "w.log").read_text().splitlines() if fresh in line]
    assert len(lines) == 1 and "| WARNING  |" in lines[0]


def test_an_unwritable_log_file_is_one_clear_line(cli_env, tmp_path):
    from service import run_cli

    (tmp_path / "not-a-dir").write_text("")
    result = run_cli(["run"], {**cli_env, "GEOWORKER_LOGGING_FILE": str(tmp_path / "not-a-dir" / "w.log")},
                     cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "configuration error: logging.file: cannot write" in result.stderr
    assert "Traceback" not in result.stderr
