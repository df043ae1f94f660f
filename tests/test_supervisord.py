"""deploy/supervisord.conf, run by a real supervisord: jobs get done, `stop` is graceful."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service import ROOT
from service import Database, wait_for, write_config

pytestmark = pytest.mark.timeout(180)
BIN = Path(sys.executable).parent


def deployed_config(tmp_path: Path, env: dict[str, str]) -> Path:
    """The shipped file with its install paths pointed at tmp_path (and no user switch: tests run as whoever)."""
    text = (ROOT / "deploy" / "supervisord.conf").read_text()
    for src, dst in (("/opt/geoworker/.venv/bin/geoworker", str(BIN / "geoworker")),
                     ("/opt/geoworker", str(tmp_path)), ("/var/log/geoworker", str(tmp_path / "log")),
                     ("/run/geoworker", str(tmp_path / "run"))):
        text = text.replace(src, dst)
    lines = []
    for line in text.splitlines():
        if line.startswith("user="):
            continue
        if line.startswith("environment="):
            line += "," + ",".join(f'{k}="{v}"' for k, v in env.items())
        lines.append(line)
    (tmp_path / "log").mkdir()
    (tmp_path / "run").mkdir()
    path = tmp_path / "supervisord.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def ctl(conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "supervisorctl"), "-c", str(conf), *args], capture_output=True, text=True,
                          timeout=120)


def test_supervisord_runs_the_service_and_stops_it_gracefully(tmp_path, dsn, queue):
    assert shutil.which("supervisord", path=str(BIN)), "supervisor is a runtime dependency"
    write_config(tmp_path / "config.toml", {
        "worker": {"debug_tasks": True, "concurrency": 2, "heartbeat_interval": 1.0, "graceful_timeout": 30.0,
                   "poll_interval": 1.0},
        "logging": {"file": str(tmp_path / "log" / "worker.log")},
        "metrics": {"port": 0}})
    conf = deployed_config(tmp_path, {"DATABASE_URL": dsn})
    quick = [queue.enqueue("debug.noop").id for _ in range(5)]
    daemon = subprocess.Popen([str(BIN / "supervisord"), "-n", "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    db = Database(dsn)
    try:
        wait_for(lambda: all(db.job(j)["status"] == "succeeded" for j in quick), 60, what="jobs under supervisord")
        wait_for(lambda: "RUNNING" in ctl(conf, "status", "geoworker").stdout, 30, interval=0.5,
                 what="RUNNING after startsecs")

        slow = queue.enqueue("debug.sleep", {"seconds": 3}).id
        wait_for(lambda: db.job(slow)["status"] == "running", 30, what="the slow job to start")
        stopped = ctl(conf, "stop", "geoworker")
        assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        # graceful: the running job finished, nothing was abandoned or killed
        assert db.job(slow)["status"] == "succeeded"
        assert db.value("SELECT count(*) FROM geo_jobs WHERE status <> 'succeeded'") == 0
        status = ctl(conf, "status", "geoworker").stdout
        assert "STOPPED" in status, status
        log = (tmp_path / "log" / "worker.out.log").read_text()
        assert "SIGTERM: stopping" in log and "stopped (exit 0)" in log
        assert "SIGKILL" not in log

        # and it comes back
        assert "started" in ctl(conf, "start", "geoworker").stdout
        again = queue.enqueue("debug.noop").id
        wait_for(lambda: db.job(again)["status"] == "succeeded", 60, what="a job after the restart")
    finally:
        ctl(conf, "shutdown")
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
        db.close()
