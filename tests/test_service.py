"""The service as a process: `geoworker run` on a real database, with real signals and kills."""

from __future__ import annotations

import collections
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

from geoworker.jobs import JobQueue
from service import Database, Service, child_pid, wait_for, write_config

pytestmark = pytest.mark.timeout(240)



@pytest.fixture
def make_service(cli_env, tmp_path):
    made: list[Service] = []

    def make(worker=None, retry=None, database=None, storage=None, args=(), name="service", env=None,
             start=True, config_path=None) -> Service:
        sections = {
            "worker": {"debug_tasks": True, "concurrency": 2, "poll_interval": 1.0, "heartbeat_interval": 1.0,
                       "graceful_timeout": 30.0, **(worker or {})},
            "retry": {"backoff_base": 0.2, "backoff_max": 1.0, **(retry or {})},
        }
        if database:
            sections["database"] = database
        if storage:
            sections["storage"] = storage
        path = write_config(config_path or tmp_path / f"{name}.toml", sections)
        service_env = {**cli_env, "GEOWORKER_CONFIG": str(path), **(env or {})}
        svc = Service(service_env, tmp_path, tuple(args), name)
        svc.config_path = path
        made.append(svc)
        return svc.start() if start else svc

    yield make
    for svc in made:
        svc.stop()


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts): asked without a race with its reaping."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def busy_children(db: Database, service: Service) -> dict[int, str]:
    """pid -> job id for the service's children that are running a job right now."""
    mine = {c.pid for c in service.children()}
    return {child_pid(r["locked_by"]): str(r["id"]) for r in db.running_jobs()
            if child_pid(r["locked_by"]) in mine}


def event_kinds(db: Database, job_id: str) -> list[str]:
    return [e["kind"] for e in db.events(job_id)]


def test_sigkill_of_busy_children_again_and_again_loses_nothing(make_service, queue, db):
    queue.enqueue_many("debug.sleep", [{"seconds": 1.5}] * 20, max_attempts=10)
    svc = make_service(worker={"concurrency": 3})
    killed: list[tuple[int, str]] = []
    while len(killed) < 6 and not db.all_finished(20):
        busy = wait_for(lambda: busy_children(db, svc), 60, what="a busy child")
        pid, job_id = sorted(busy.items())[0]
        time.sleep(0.3)  # well inside its 1.5 s job
        if busy_children(db, svc).get(pid) != job_id:
            continue
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, job_id))
        wait_for(lambda: gone(pid), 10)
    wait_for(lambda: db.statuses() == {"succeeded": 20}, 120, what="all 20 jobs to succeed")
    assert len(killed) >= 3
    succeeded = db.rows("SELECT job_id, count(*) AS n FROM geo_job_events WHERE kind = 'succeeded' GROUP BY 1")
    assert len(succeeded) == 20 and all(r["n"] == 1 for r in succeeded), "a job completed more than once"
    for pid, job_id in killed:
        crashed = [e for e in db.events(job_id)
                   if e["kind"] == "retry_scheduled" and e["data"]["reason"] == "crashed"
                   and e["data"]["worker"].endswith(f":{pid}")]
        assert crashed, f"the kill of child {pid} is not in job {job_id}'s history"
        assert "killed by signal 9 (SIGKILL)" in crashed[0]["message"]
        assert db.job(job_id)["attempts"] >= 2
    assert len(svc.children()) == 3, "the pool was not refilled"


def test_job_past_its_deadline_is_killed_retried_and_fails_with_timeout(make_service, queue, db):
    slow = queue.enqueue("debug.sleep", {"seconds": 60}, max_attempts=2)
    svc = make_service(worker={"concurrency": 2, "max_processing_time": 2.0})
    quick = [queue.enqueue("debug.noop").id for _ in range(3)]
    wait_for(lambda: db.job(slow.id)["status"] == "failed", 60, what="the slow job to fail")
    job = db.job(slow.id)
    assert (job["error_code"], job["attempts"]) == ("timeout", 2)
    assert "ran longer than 2 s (worker.max_processing_time)" in job["last_error"]
    events = db.events(slow.id)
    claims = [e for e in events if e["kind"] == "claimed"]
    ends = [e for e in events if e["kind"] in ("retry_scheduled", "failed")]
    assert [e["data"]["reason"] for e in ends] == ["timeout", "timeout"]
    for claimed, ended in zip(claims, ends):
        overrun = (ended["at"] - claimed["at"]).total_seconds() - 2.0
        assert overrun <= 2 * 1.0 + 0.5, f"killed {overrun:.2f} s after its deadline (more than two ticks)"
    wait_for(lambda: all(db.job(j)["status"] == "succeeded" for j in quick), 30, what="the other jobs")
    assert all(db.job(j)["status"] == "succeeded" for j in quick)
    assert "child" in svc.log() and "killed (timeout)" in svc.log()


def test_timeout_param_overrides_max_processing_time(make_service, queue, db):
    job = queue.enqueue("debug.sleep", {"seconds": 60, "timeout": 1.5}, max_attempts=1)
    make_service(worker={"max_processing_time": 3600.0})
    wait_for(lambda: db.job(job.id)["status"] == "failed", 30)
    assert "its timeout param" in db.job(job.id)["last_error"]


def test_child_over_its_memory_limit_is_killed_and_reported(make_service, queue, db):
    job = queue.enqueue("debug.allocate", {"mb": 600, "seconds": 20}, max_attempts=1)
    svc = make_service(worker={"concurrency": 1, "max_child_rss_mb": 200})
    wait_for(lambda: db.job(job.id)["status"] == "failed", 60, what="the allocating job to fail")
    row = db.job(job.id)
    assert row["error_code"] == "memory_limit"
    assert "more than worker.max_child_rss_mb (200 MiB)" in row["last_error"]
    killed_pid = child_pid([e for e in db.events(job.id) if e["kind"] == "failed"][0]["data"]["worker"])
    log = svc.log()
    report = [line for line in log.splitlines() if "memory report:" in line and f"child pid {killed_pid} job {job.id}" in line]
    assert report, "the memory report does not show the offending child with its job"
    assert re.search(r"rss (\d+\.\d) MiB", report[0].split(f"child pid {killed_pid}")[1])
    assert "system available" in report[0] and "pool total" in report[0]
    wait_for(lambda: len(svc.children()) == 1, 20, what="the pool to be refilled")


def test_unresponsive_child_is_killed(make_service, queue, db):
    job = queue.enqueue("debug.sleep", {"seconds": 60}, max_attempts=1)
    svc = make_service(worker={"concurrency": 1, "heartbeat_interval": 1.0, "stale_after": 3.0})
    pid = wait_for(lambda: list(busy_children(db, svc)), 30)[0]
    os.kill(pid, signal.SIGSTOP)  # frozen: no pings, no heartbeats
    wait_for(lambda: db.job(job.id)["status"] == "failed", 30)
    row = db.job(job.id)
    assert row["error_code"] == "timeout" and "stopped responding" in row["last_error"]
    wait_for(lambda: gone(pid), 15,
             what="the frozen child to be killed")


def test_child_dying_on_its_own_is_requeued_and_a_poison_job_ends_failed(make_service, queue, db):
    poison = queue.enqueue("debug.crash", max_attempts=3)
    segv = queue.enqueue("debug.crash", {"signal": "SIGSEGV"}, max_attempts=1)
    fine = queue.enqueue("debug.noop")
    make_service()
    wait_for(lambda: db.all_finished(3), 60)
    assert (db.job(poison.id)["status"], db.job(poison.id)["attempts"]) == ("failed", 3)
    assert db.job(poison.id)["error_code"] == "crashed" and "exit code 70" in db.job(poison.id)["last_error"]
    assert "SIGSEGV" in db.job(segv.id)["last_error"]
    assert db.job(fine.id)["status"] == "succeeded"


def test_kill_9_of_the_supervisor_leaves_no_child_and_a_new_one_rescues_the_jobs(make_service, queue, db):
    jobs = [queue.enqueue("debug.sleep", {"seconds": 3}).id for _ in range(2)]
    first = make_service(name="first")
    wait_for(lambda: len(busy_children(db, first)) == 2, 30, what="both jobs running")
    children = first.children()
    first.signal(signal.SIGKILL)
    first.wait(10)
    gone_at = time.monotonic()
    psutil.wait_procs(children, timeout=5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], \
        "a child outlived its supervisor"
    assert time.monotonic() - gone_at <= 2.0
    assert db.statuses() == {"running": 2}, "nothing should have touched the orphaned jobs yet"

    second = make_service(name="second")
    wait_for(lambda: db.statuses() == {"succeeded": 2}, 60, what="the orphaned jobs to be rescued and run")
    for job_id in jobs:
        events = db.events(job_id)
        rescue = [e for e in events if e["kind"] == "retry_scheduled" and e["data"]["reason"] == "rescued"]
        assert len(rescue) == 1, event_kinds(db, job_id)
        assert rescue[0]["worker"].split(":")[1] == str(second.pid), "rescued by someone other than the new supervisor"
        last_claim = [e for e in events if e["kind"] == "claimed"][0]
        assert (rescue[0]["at"] - last_claim["at"]).total_seconds() >= 3.0, "rescued before stale_after"
        assert db.job(job_id)["attempts"] == 2


def test_two_supervisors_run_each_of_500_jobs_exactly_once(make_service, queue, db):
    queue.enqueue_many("debug.noop", [{}] * 500)
    a = make_service(name="a", worker={"poll_interval": 0.5})
    b = make_service(name="b", worker={"poll_interval": 0.5})
    wait_for(lambda: db.statuses() == {"succeeded": 500}, 180, what="500 jobs")
    claims = db.rows("SELECT job_id, count(*) AS n, min(worker) AS worker FROM geo_job_events "
                     "WHERE kind = 'claimed' GROUP BY job_id")
    assert len(claims) == 500 and all(c["n"] == 1 for c in claims)
    assert db.value("SELECT max(attempts) FROM geo_jobs") == 1
    by_supervisor = collections.Counter(c["worker"].split(":")[1] for c in claims)
    tags = {r["id"].split(":")[2]: r["pid"] for r in db.rows("SELECT id, pid FROM geo_workers WHERE kind = 'supervisor'")}
    assert set(by_supervisor) == set(tags), f"both supervisors should have worked: {by_supervisor}"
    for svc in (a, b):
        svc.signal(signal.SIGTERM)
        assert svc.wait(30) == 0


def test_sigterm_lets_the_running_job_finish_and_exits_0(make_service, queue, db):
    job = queue.enqueue("debug.sleep", {"seconds": 3})
    svc = make_service(worker={"concurrency": 1})
    wait_for(lambda: busy_children(db, svc), 30)
    later = queue.enqueue("debug.noop")
    svc.signal(signal.SIGTERM)
    assert svc.wait(30) == 0
    assert db.job(job.id)["status"] == "succeeded"
    assert db.job(later.id)["status"] == "queued", "a stopping service must not claim new jobs"
    assert not svc.children()


def test_sigterm_past_graceful_timeout_releases_the_job_without_spending_an_attempt(make_service, queue, db):
    job = queue.enqueue("debug.sleep", {"seconds": 60}, max_attempts=1)
    svc = make_service(worker={"concurrency": 1, "graceful_timeout": 1.0})
    wait_for(lambda: busy_children(db, svc), 30)
    svc.signal(signal.SIGTERM)
    assert svc.wait(30) == 0
    row = db.job(job.id)
    assert (row["status"], row["attempts"], row["locked_by"]) == ("queued", 0, None)
    assert event_kinds(db, job.id)[-1] == "released"


def test_sighup_rereads_the_config_and_changes_concurrency(make_service, queue, db):
    svc = make_service(worker={"concurrency": 1})
    svc.wait_children(1)
    job = queue.enqueue("debug.sleep", {"seconds": 2})
    wait_for(lambda: busy_children(db, svc), 30)
    write_config(svc.config_path, {"worker": {"debug_tasks": True, "concurrency": 3, "heartbeat_interval": 1.0}})
    svc.signal(signal.SIGHUP)
    svc.wait_children(3, timeout=30)
    wait_for(lambda: db.job(job.id)["status"] == "succeeded", 30, what="the job running during the reload")
    assert "SIGHUP: configuration reloaded" in svc.log()
    # a broken config is refused and the service keeps running on the old one
    svc.config_path.write_text("[worker]\nconcurrency = -1\n")
    svc.signal(signal.SIGHUP)
    wait_for(lambda: "configuration not reloaded" in svc.log(), 10)
    assert svc.proc.poll() is None and len(svc.children()) == 3
    # so is a file that is not UTF-8: one line saying why, never a loop error
    svc.config_path.write_bytes(b"[worker]\nname = \"caf\xe9\"\n")
    svc.signal(signal.SIGHUP)
    wait_for(lambda: "not UTF-8 text" in svc.log(), 10)
    assert "supervisor loop error" not in svc.log() and "Traceback" not in svc.log()
    after = queue.enqueue("debug.noop", {})
    wait_for(lambda: db.job(after.id)["status"] == "succeeded", 30, what="a job on the old configuration")


def test_drain_exits_0_when_nothing_is_queued_or_running(make_service, queue, db):
    queue.enqueue_many("debug.noop", [{}] * 5)
    queue.enqueue("debug.sleep", {"seconds": 1})
    svc = make_service(args=("--drain",))
    assert svc.wait(60) == 0
    assert db.statuses() == {"succeeded": 6}
    assert "drained" in svc.log()


def test_cancel_of_a_running_job_stops_its_child(make_service, queue, db, cli_env, tmp_path):
    job = queue.enqueue("debug.sleep", {"seconds": 60})
    svc = make_service(worker={"concurrency": 1})
    pid = wait_for(lambda: list(busy_children(db, svc)), 30)[0]
    from service import run_cli

    assert run_cli(["cancel", job.id], {**cli_env, "GEOWORKER_CONFIG": str(svc.config_path)}, cwd=tmp_path).returncode == 0
    wait_for(lambda: gone(pid), 15,
             what="the cancelled job's child to stop")
    assert db.job(job.id)["status"] == "cancelled"
    after = queue.enqueue("debug.noop")
    wait_for(lambda: db.job(after.id)["status"] == "succeeded", 30, what="the pool to go on")


def test_polling_alone_works_without_listen(make_service, queue, db):
    make_service(worker={"poll_interval": 0.5}, database={"listen": False})
    time.sleep(1)
    jobs = [queue.enqueue("debug.noop").id for _ in range(3)]
    wait_for(lambda: all(db.job(j)["status"] == "succeeded" for j in jobs), 30)


def test_children_are_recycled_after_max_jobs_per_child(make_service, queue, db):
    queue.enqueue_many("debug.noop", [{}] * 6)
    make_service(worker={"concurrency": 1, "max_jobs_per_child": 2})
    wait_for(lambda: db.statuses() == {"succeeded": 6}, 60)
    workers = {r["worker"] for r in db.rows("SELECT worker FROM geo_job_events WHERE kind = 'claimed'")}
    assert len(workers) == 3


def test_a_killed_childs_work_directory_is_removed(make_service, queue, db, tmp_path):
    temp_dir = tmp_path / "work"
    job = queue.enqueue("debug.sleep", {"seconds": 60}, max_attempts=1)
    svc = make_service(worker={"concurrency": 1}, env={"GEOWORKER_STORAGE_TEMP_DIR": str(temp_dir)})
    pid = wait_for(lambda: list(busy_children(db, svc)), 30)[0]
    workdir = wait_for(lambda: list(temp_dir.glob(f"geojob_{job.id}_{pid}")), 10, what="the work directory")[0]
    assert (workdir.stat().st_mode & 0o777) == 0o700
    (workdir / "partial.tif").write_bytes(b"II*\0" + b"\0" * 1000)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not workdir.exists(), 15, what="the supervisor to remove the dead child's work directory")
    assert db.job(job.id)["error_code"] == "crashed"


def test_children_that_cannot_connect_do_not_make_the_supervisor_fork_loop(make_service, queue, db, admin_dsn, dsn):
    """The supervisor holds the role's only connection; every child is refused at boot."""
    import psycopg2.extensions

    role = f"gw_limited_{os.getpid()}"
    db.rows(f"DROP ROLE IF EXISTS {role}")
    db.rows(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
    db.rows(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    db.rows(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    limited = psycopg2.extensions.make_dsn(dsn, user=role)
    try:
        job = queue.enqueue("debug.noop")
        svc = make_service(worker={"concurrency": 2}, env={"DATABASE_URL": limited})
        time.sleep(8)
        failures = svc.log().count("could not start")
        assert 1 <= failures <= 8, f"{failures} failed child starts in 8 s: a fork loop"
        assert "too many connections for role" in svc.log()
        assert db.job(job.id)["status"] == "queued"
        db.rows(f"ALTER ROLE {role} CONNECTION LIMIT -1")
        wait_for(lambda: db.job(job.id)["status"] == "succeeded", 90, what="the pool to recover")
    finally:
        db.rows(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")


def test_postgres_restart_mid_run_loses_nothing(make_service, tmp_path):
    """A private cluster we may restart: the service reconnects and finishes every job."""
    import subprocess

    import pgserver
    from pgserver._commands import POSTGRES_BIN_PATH

    from geoworker import db as gwdb

    import shutil
    import tempfile

    # not under tmp_path: pytest keeps its base directory at mode 0700, and under root the
    # server runs as pgserver's own system user, which must be able to reach its data
    base = Path(tempfile.mkdtemp(prefix="geoworker-pg-"))
    base.chmod(0o755)
    data = base / "pg"
    server = pgserver.get_server(data, cleanup_mode=None)
    user = ["runuser", "-u", server.system_user, "--"] if server.system_user else []
    pg_ctl = user + [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-l", str(data / "log")]
    try:
        dsn = server.get_uri()
        conn = gwdb.connect(dsn)
        gwdb.migrate(conn)
        conn.close()
        queue = JobQueue(dsn, worker_id="test")
        queue.enqueue_many("debug.sleep", [{"seconds": 0.4}] * 30)
        queue.close()
        svc = make_service(env={"DATABASE_URL": dsn}, worker={"concurrency": 2, "poll_interval": 0.5})
        check = Database(dsn)
        wait_for(lambda: check.statuses().get("succeeded", 0) >= 5, 60, what="some jobs done")
        check.close()
        # -l: the restarted postmaster must not inherit (and hold open) a pipe of ours
        with open(tmp_path / "pg_ctl.out", "w") as out:
            restarted = subprocess.run(pg_ctl + ["-m", "fast", "-w", "restart"], stdout=out, stderr=out, timeout=60)
        assert restarted.returncode == 0, (tmp_path / "pg_ctl.out").read_text()

        def done():
            try:
                c = Database(dsn)
            except Exception:
                return False
            try:
                return c.statuses() == {"succeeded": 30}
            finally:
                c.close()

        wait_for(done, 120, interval=0.5, what="all 30 jobs after the restart")
        check = Database(dsn)
        per_job = check.rows("SELECT job_id, count(*) AS n FROM geo_job_events WHERE kind = 'succeeded' GROUP BY 1")
        check.close()
        assert len(per_job) == 30 and all(r["n"] == 1 for r in per_job)
        assert "database unavailable" in svc.log() or "cannot connect" in svc.log() or "terminating connection" in svc.log()
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0
    finally:
        subprocess.run(pg_ctl + ["-m", "immediate", "-w", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def test_a_hung_database_does_not_stop_the_watchdog(make_service, queue, db, dsn):
    """The database accepts bytes and never answers: deadlines are still enforced, and the
    outcome is written once it answers again."""
    from service import FreezingProxy

    proxy = FreezingProxy(dsn)
    try:
        job = queue.enqueue("debug.sleep", {"seconds": 120}, max_attempts=1)
        # stale_after well past the deadline: the child would fence itself first otherwise (test_fencing.py)
        svc = make_service(worker={"concurrency": 1, "max_processing_time": 4.0, "stale_after": 30.0},
                           env={"DATABASE_URL": proxy.dsn})
        pid = wait_for(lambda: list(busy_children(db, svc)), 30, what="the job to start")[0]
        proxy.frozen.set()
        wait_for(lambda: gone(pid),
                 60, what="the overdue child to be killed while the database hangs")
        assert db.job(job.id)["status"] == "running", "nothing could have reached the database"
        proxy.frozen.clear()
        wait_for(lambda: db.job(job.id)["status"] == "failed", 90, what="the outcome once the database answers")
        assert db.job(job.id)["error_code"] == "timeout"
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0
    finally:
        proxy.close()


@pytest.mark.slow
def test_a_frozen_supervisor_does_not_kill_healthy_children_when_it_resumes(make_service, queue, db):
    """SIGSTOP the supervisor longer than stale_after, let a child die meanwhile, SIGCONT it: the children
    that kept working are judged by the pings they sent during the stall, not killed as "stopped responding"."""
    jobs = [queue.enqueue("debug.sleep", {"seconds": 14}).id for _ in range(3)]
    svc = make_service(worker={"concurrency": 3, "heartbeat_interval": 1.0, "stale_after": 3.0})
    busy = wait_for(lambda: (lambda b: b if len(b) == 3 else None)(busy_children(db, svc)), 60, what="3 busy children")
    victim, victim_job = sorted(busy.items())[0]
    healthy = {pid: job for pid, job in busy.items() if pid != victim}
    time.sleep(1.0)
    svc.signal(signal.SIGSTOP)
    try:
        time.sleep(5.0)  # longer than stale_after: every child's pings wait unread in its pipe
        os.kill(victim, signal.SIGKILL)  # its SIGCHLD wakes the supervisor the moment it resumes
        time.sleep(0.5)
    finally:
        svc.signal(signal.SIGCONT)
    wait_for(lambda: all(db.job(j)["status"] in ("succeeded", "failed") for j in healthy.values()), 60,
             what="the healthy children's jobs to finish")
    for pid, job_id in healthy.items():
        job = db.job(job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 1), \
            f"child {pid} was killed after the stall: {event_kinds(db, job_id)} / {job['last_error']}"
    assert "stopped responding" not in svc.log()
    crashed = [e for e in db.events(victim_job) if e["kind"] == "retry_scheduled"]
    assert crashed and crashed[0]["data"]["reason"] == "crashed", "the child that really died is settled as crashed"
    wait_for(lambda: db.statuses().get("succeeded") == 3, 60, what="the victim's job to be retried and succeed")
    assert set(jobs) == {str(r["id"]) for r in db.rows("SELECT id FROM geo_jobs WHERE status = 'succeeded'")}
