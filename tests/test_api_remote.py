"""Workers without a database: queue.mode = "http", through a real `geoworker api`.

The HttpJobQueue against the real routes (the lock semantics of jobs.py, over HTTP), then
whole remote services: a `geoworker run` whose configuration has no DSN and no PG*
variable processes jobs, survives a SIGKILL of its child mid-job like a database-mode
service does, and is rescued by the API's reaper when it dies outright.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests

import rasters
from apiserver import WORKER_TOKEN, api, api_env, bearer  # noqa: F401 (api, api_env: fixtures)
from geoworker.config import load_settings
from geoworker.errors import ConfigError, DatabaseUnavailable, JobNotFound, LockLost
from geoworker.jobs import JobQueue
from geoworker.queue import open_queue
from geoworker.remote import ApiUnavailable, HttpJobQueue, WorkerRefused
from service import Database, Service, child_pid, wait_for, write_config

pytestmark = pytest.mark.timeout(240)



def remote(api, worker: str = "remote-host:tag:101", wait: float = 0.0, token: str = WORKER_TOKEN) -> HttpJobQueue:
    return HttpJobQueue(api.base, token, worker, claim_wait=wait)


def event_kinds(db, job_id) -> list[str]:
    return [e["kind"] for e in db.events(job_id)]


# --- HttpJobQueue: jobs.py's semantics over HTTP ---------------------------------------------------


def test_claim_heartbeat_progress_complete_over_http(api, queue, db):
    job = queue.enqueue("debug.noop", {"x": 1}, priority=3)
    q = remote(api)
    claimed = q.claim()
    assert (claimed.id, claimed.status, claimed.attempts, claimed.locked_by) == (job.id, "running", 1,
                                                                                 "remote-host:tag:101")
    assert claimed.params == {"x": 1} and claimed.started_at is not None
    assert q.claim().id == job.id, "a worker that holds a job gets it again (its first answer was lost)"
    assert q.heartbeat(job.id) is True
    assert q.progress(job.id, 40, "halfway") is True
    done = q.complete(job.id, {"png": "out.png"}, {"ok": True})
    assert (done.status, done.outputs, done.result, done.progress) == ("succeeded", {"png": "out.png"}, {"ok": True},
                                                                       100)
    assert q.claim() is None
    assert event_kinds(db, job.id) == ["created", "claimed", "progress", "succeeded"]
    assert db.events(job.id)[2]["worker"] == "remote-host:tag:101"


def test_a_worker_that_lost_its_job_is_refused_and_the_refusal_is_recorded(api, queue, db):
    job = queue.enqueue("debug.noop")
    mine, other = remote(api, "host-a:1:1"), remote(api, "host-b:2:2")
    mine.claim()
    with pytest.raises(LockLost):
        other.complete(job.id, {}, {})
    with pytest.raises(LockLost):
        other.fail(mine.claim(), "internal_error", "not mine", permanent=True)
    assert other.heartbeat(job.id) is False and other.progress(job.id, 50, "x") is False
    assert db.job(job.id)["status"] == "running"
    refused = [e for e in db.events(job.id) if e["kind"] == "result_discarded"]
    assert [e["data"]["operation"] for e in refused] == ["complete", "fail"]
    assert all(e["worker"] == "host-b:2:2" for e in refused)

    r = requests.post(api.url(f"/api/geo-jobs/{job.id}/cancel"), headers=bearer(), timeout=10)
    assert r.status_code == 404  # not a platform user's job: owner is NULL
    queue.cancel(job.id)
    assert mine.heartbeat(job.id) is False, "a cancelled job's heartbeat tells its worker to stop"
    with pytest.raises(LockLost):
        mine.complete(job.id, {}, {})
    with pytest.raises(JobNotFound):
        mine.complete(str(uuid.uuid4()), {}, {})


def test_a_supervisor_settles_and_releases_its_childrens_jobs_over_http(api, queue, db):
    first, second = queue.enqueue("debug.noop", max_attempts=3), queue.enqueue("debug.noop")
    child = remote(api, "host:tag:77")
    supervisor = remote(api, "host:77:tag")
    assert child.claim().id == first.id
    ended = supervisor.end_attempt(first.id, 1, holder="host:tag:77", code="crashed",
                                   message="the worker process died (killed by signal 9 (SIGKILL))", reason="crashed", min_delay=60)  # not ready again before the summary below
    assert (ended.status, ended.error_code, ended.locked_by) == ("queued", "crashed", None)
    settled = db.events(first.id)[-1]
    assert settled["kind"] == "retry_scheduled" and settled["worker"] == "host:77:tag"
    assert settled["data"]["worker"] == "host:tag:77" and settled["data"]["reason"] == "crashed"
    with pytest.raises(LockLost):  # the child's late result is refused
        child.complete(first.id, {}, {})

    assert child.claim().id == second.id
    released = supervisor.release(second.id, "host:tag:77", "released: shutting down")
    assert (released.status, released.attempts) == ("queued", 0)
    assert db.events(second.id)[-1]["kind"] == "released"
    assert supervisor.summary()["ready"] == 1


def test_the_supervisors_chores_over_http(api, queue, db):
    q = remote(api, "remote-host:99:sup")
    q.register_worker("remote-host:99:sup", "supervisor", 99)
    q.register_worker("remote-host:sup:100", "child", 100, parent_id="remote-host:99:sup")
    job = queue.enqueue("debug.noop")
    q.touch_workers([{"id": "remote-host:99:sup", "rss": 1000, "current_job": None, "jobs_done": 0},
                     {"id": "remote-host:sup:100", "rss": 2000, "current_job": job.id, "jobs_done": 3}])
    rows = {r["id"]: r for r in db.rows("SELECT * FROM geo_workers")}
    assert rows["remote-host:sup:100"]["parent_id"] == "remote-host:99:sup"
    assert rows["remote-host:sup:100"]["jobs_done"] == 3 and str(rows["remote-host:sup:100"]["current_job"]) == job.id
    import socket

    assert rows["remote-host:99:sup"]["host"] == socket.gethostname()
    q.stop_workers(["remote-host:sup:100"])
    assert db.value("SELECT stopped_at IS NOT NULL FROM geo_workers WHERE id = 'remote-host:sup:100'")
    summary = q.summary()
    assert (summary["ready"], summary["scheduled"], summary["running"]) == (1, 0, 0)
    assert 0 <= summary["oldest_ready_age"] < 60
    assert q.requeue_stale(1.0) == [] and q.forget_workers() is None  # the API's reaper does those


def test_a_long_polling_claim_answers_as_soon_as_a_job_arrives(api, queue):
    q = remote(api, wait=20.0)
    got: list = []
    started = time.monotonic()
    waiter = threading.Thread(target=lambda: got.append((q.claim(), time.monotonic())))
    waiter.start()
    time.sleep(1.0)
    job = queue.enqueue("debug.noop")  # NOTIFY
    waiter.join(25)
    claimed, at = got[0]
    assert claimed is not None and claimed.id == job.id
    assert at - started < 3.0, f"the claim waited {at - started:.1f} s after a job arrived at 1.0 s"
    quick = remote(api, "another-host:tag:5")
    t0 = time.monotonic()
    assert quick.claim() is None and time.monotonic() - t0 < 2.0  # wait=0 answers at once


def test_transport_failures_are_retried_and_a_refused_token_is_a_configuration_error(api, tmp_path):
    down = HttpJobQueue(f"http://127.0.0.1:{_closed_port()}", WORKER_TOKEN, "w:1:1")
    with pytest.raises(ApiUnavailable) as caught:
        down.claim()
    assert isinstance(caught.value, DatabaseUnavailable), "the child's retry paths catch DatabaseUnavailable"
    wrong = remote(api, token="not-the-token")
    with pytest.raises(WorkerRefused):
        wrong.claim()
    with pytest.raises(WorkerRefused):
        wrong.ping()  # a child's boot: retried with backoff
    with pytest.raises(ConfigError, match="worker_token"):
        wrong.check()  # a supervisor's start: stop with one clear line
    with pytest.raises(ApiUnavailable, match="404"):
        HttpJobQueue(api.base + "/elsewhere", WORKER_TOKEN, "w:1:1").ping()


def test_open_queue_in_http_mode_resolves_no_dsn(tmp_path):
    settings = load_settings(environ={"GEOWORKER_QUEUE_MODE": "http", "API_BASE_URL": "http://127.0.0.1:9",
                                      "WORKER_AUTH_TOKEN": "t"}, base_dir=tmp_path)
    q = open_queue(settings, "w:1:1")
    assert isinstance(q, HttpJobQueue) and q.wakeup_fd() is None
    assert not (tmp_path / "var").exists(), "no embedded server may be started for an http-mode worker"
    db_settings = load_settings(environ={"DATABASE_URL": "postgresql://x@127.0.0.1:9/x"}, base_dir=tmp_path)
    assert isinstance(open_queue(db_settings, "w:1:1"), JobQueue)


def _closed_port() -> int:
    from apiserver import free_port

    return free_port()


# --- whole remote services ---------------------------------------------------------------------------


@pytest.fixture
def remote_service(api, tmp_path):
    """A factory of `geoworker run` in http mode: no DATABASE_URL, no PG*, its own empty directory."""
    made: list[Service] = []

    def make(name: str = "remote", concurrency: int = 1) -> Service:
        home = tmp_path / name
        home.mkdir()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PG", "GEOWORKER_")) and k not in ("DATABASE_URL", "API_BASE_URL")}
        config = write_config(home / "config.toml", {
            "worker": {"concurrency": concurrency, "poll_interval": 2.0, "heartbeat_interval": 1.0,
                       "debug_tasks": True, "graceful_timeout": 10.0},
            "queue": {"mode": "http"},
            "storage": {"root": str(Path(api.env["GEOWORKER_STORAGE_ROOT"])), "temp_dir": str(home / "tmp")},
            "logging": {"file": str(home / "worker.log")},
            "metrics": {"port": 0}})
        env.update({"GEOWORKER_CONFIG": str(config), "API_BASE_URL": api.base, "WORKER_AUTH_TOKEN": WORKER_TOKEN,
                    "PYTHONUNBUFFERED": "1"})
        svc = Service(env, home, name=name)
        svc.home = home
        made.append(svc)
        return svc.start()

    yield make
    for svc in made:
        svc.stop()


def _config(svc: Service) -> dict:
    import json

    from service import run_cli

    result = run_cli(["config", "--json"], svc.env, cwd=svc.home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _remote_connections(db: Database) -> list[dict]:
    """Sessions on the test database opened by anything but the API process and the test itself."""
    return db.rows("SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                   "AND application_name LIKE 'geoworker%%' AND application_name NOT LIKE 'geoworker-api%%'")


def test_a_remote_worker_processes_jobs_with_no_database_access(api, remote_service, db, tmp_path):
    src = rasters.write(tmp_path / "ortho.tif", rasters.gradient_rgb(120, 160), compress="deflate")
    r = requests.post(api.url("/api/geo-jobs"), headers=bearer(), timeout=10,
                      json={"taskType": "geotiff_to_png", "inputPayload": {"maxSize": 512}})
    png_job = r.json()["id"]
    grant = requests.post(api.url(f"/api/geo-jobs/{png_job}/upload"), headers=bearer(), timeout=10,
                          json={"fileName": "ortho.tif", "fileSize": src.stat().st_size}).json()
    assert requests.put(grant["uploadUrl"], data=src.read_bytes(), timeout=20).status_code == 200
    noops = [requests.post(api.url("/api/geo-jobs"), headers=bearer(), timeout=10,
                           json={"taskType": "debug.noop"}).json()["id"] for _ in range(5)]

    svc = remote_service(concurrency=2)
    wait_for(lambda: db.statuses() == {"succeeded": 6}, 90, what="the remote worker to run all six jobs")

    config = _config(svc)
    assert config["database"]["dsn"] == "" and config["queue"]["mode"] == "http"
    assert not (svc.home / "var").exists(), "an embedded PostgreSQL was started: http mode touched a database"
    assert _remote_connections(db) == [], "a remote process holds a database connection"
    assert "children, API http://127.0.0.1:" in svc.log()
    workers = {r["id"]: r for r in db.rows("SELECT * FROM geo_workers WHERE stopped_at IS NULL")}
    supervisors = [w for w in workers.values() if w["kind"] == "supervisor" and w["pid"] == svc.pid]
    assert supervisors, f"the remote supervisor did not register through the API: {workers}"
    claimers = {e["worker"] for j in [png_job, *noops] for e in db.events(j) if e["kind"] == "claimed"}
    assert all(child_pid(w) in {c.pid for c in svc.children()} for w in claimers), claimers
    job = requests.get(api.url(f"/api/geo-jobs/{png_job}"), headers=bearer(), timeout=10).json()
    assert job["status"] == "succeeded" and "png" in job["outputs"]

    svc.signal(signal.SIGTERM)
    assert svc.wait(30) == 0
    stopped = db.value("SELECT count(*) FROM geo_workers WHERE pid = %s AND stopped_at IS NOT NULL", (svc.pid,))
    assert stopped == 1, "the remote supervisor did not mark itself stopped through the API"


def test_sigkill_of_a_remote_child_mid_job_is_retried_and_succeeds(api, remote_service, db):
    r = requests.post(api.url("/api/geo-jobs"), headers=bearer(), timeout=10,
                      json={"taskType": "debug.sleep", "inputPayload": {"seconds": 3}})
    job_id = r.json()["id"]
    svc = remote_service()
    running = wait_for(lambda: db.running_jobs(), 60, what="the job to be running")[0]
    pid = child_pid(running["locked_by"])
    assert pid in {c.pid for c in svc.children()}
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: db.job(job_id)["status"] == "succeeded", 60, what="the retried job to succeed")
    row = db.job(job_id)
    assert row["attempts"] == 2
    events = db.events(job_id)
    crashed = [e for e in events if e["kind"] == "retry_scheduled"]
    assert len(crashed) == 1 and crashed[0]["data"]["reason"] == "crashed", [e["kind"] for e in events]
    assert "killed by signal 9 (SIGKILL)" in crashed[0]["message"]
    assert crashed[0]["data"]["worker"] == running["locked_by"]  # the child's attempt ...
    assert crashed[0]["worker"].split(":")[1] == str(svc.pid)  # ... ended by its supervisor, over HTTP
    assert [e["kind"] for e in events].count("claimed") == 2
    wait_for(lambda: len(svc.children()) == 1, 20, what="the pool to be refilled")


def test_a_remote_supervisor_killed_outright_is_rescued_by_the_apis_reaper(api, remote_service, db):
    r = requests.post(api.url("/api/geo-jobs"), headers=bearer(), timeout=10,
                      json={"taskType": "debug.sleep", "inputPayload": {"seconds": 2}})
    job_id = r.json()["id"]
    first = remote_service("first")
    wait_for(lambda: db.running_jobs(), 60, what="the job to be running")
    children = first.children()
    first.signal(signal.SIGKILL)
    first.wait(10)
    psutil.wait_procs(children, timeout=5)
    rescued = wait_for(lambda: [e for e in db.events(job_id) if e["data"] and e["data"].get("reason") == "rescued"],
                       30, what="the API's reaper to rescue the job")
    assert rescued[0]["worker"].startswith("api-reaper:")
    remote_service("second")
    wait_for(lambda: db.job(job_id)["status"] == "succeeded", 60, what="the rescued job to succeed")
    assert db.job(job_id)["attempts"] == 2
