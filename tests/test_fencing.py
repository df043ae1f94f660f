"""Fencing: a child that cannot get a heartbeat confirmed for about stale_after stops its job by itself.

The lease's arithmetic as pure functions, then the service as a process: its database stops
answering mid-job (a TCP proxy that swallows the bytes), the child stops working on the job
and stores nothing for it, and once the database answers again the attempt is settled and the
job runs again to one success.
"""

from __future__ import annotations

import json
import signal
import time

import psutil
import pytest

from geoworker.lease import MAX_MARGIN, MIN_MARGIN, Lease, margin_for
from service import FreezingProxy, Service, child_pid, wait_for, write_config

# --- the lease ----------------------------------------------------------------------------


def test_the_lease_runs_from_when_the_last_confirmed_call_was_sent():
    lease = Lease("job", renewed=100.0, stale_after=8.0)
    assert lease.margin == 2.0 and lease.expires == 106.0
    assert not lease.expired(105.9) and lease.expired(106.0)
    lease.renew(103.0)  # a heartbeat sent at 103 was confirmed (whenever its reply came)
    assert lease.expires == 109.0 and lease.silent_for(109.0) == 6.0


def test_a_late_reply_never_moves_the_lease_backwards():
    lease = Lease("job", renewed=100.0, stale_after=8.0)
    lease.renew(104.0)
    lease.renew(101.0)  # a heartbeat sent earlier, stuck in a partition, confirmed after a later one
    assert lease.renewed == 104.0


def test_the_child_stops_before_another_host_may_rescue_the_job():
    # the database's heartbeat_at is never earlier than the send time, and a rescue needs it older
    # than stale_after: the lease always ends at least a margin before the earliest rescue
    for stale_after in (1.0, 3.0, 8.0, 90.0, 600.0, 86400.0):
        lease = Lease("job", renewed=0.0, stale_after=stale_after)
        earliest_rescue = 0.0 + stale_after
        assert earliest_rescue - lease.expires == margin_for(stale_after) >= MIN_MARGIN
    assert margin_for(86400.0) == MAX_MARGIN and margin_for(1.0) == MIN_MARGIN
    assert 0 < Lease("job", renewed=0.0, stale_after=0.4).expires < 0.4  # even an absurd setting leaves a lease


# --- the service, its database gone quiet mid-job -----------------------------------------------


@pytest.fixture
def service(cli_env, tmp_path):
    made: list[Service] = []

    def make(env: dict, **worker) -> Service:
        config = write_config(tmp_path / "service.toml", {
            "worker": {"debug_tasks": True, "concurrency": 1, "poll_interval": 1.0, **worker},
            "retry": {"backoff_base": 0.2, "backoff_max": 1.0},
        })
        svc = Service({**cli_env, "GEOWORKER_CONFIG": str(config), **env}, tmp_path).start()
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_child_that_cannot_heartbeat_stops_its_job_and_stores_nothing(service, queue, db, dsn, tmp_path):
    work = 6.0  # the job stores its output after this long; stale_after is half of it
    proxy = FreezingProxy(dsn)
    try:
        job = queue.enqueue("debug.write", {"seconds": work}, max_attempts=3)
        svc = service({"DATABASE_URL": proxy.dsn}, heartbeat_interval=0.5, stale_after=3.0)
        holder = wait_for(lambda: db.job(job.id)["locked_by"], 30, what="the job to start")
        pid = child_pid(holder)
        wait_for(lambda: db.job(job.id)["heartbeat_at"] > db.job(job.id)["started_at"], 10,
                 what="a heartbeat after the claim")
        started = time.monotonic()
        proxy.frozen.set()  # from now on no heartbeat is confirmed
        output = tmp_path / "storage" / "jobs" / job.id / "output" / "attempt.json"

        wait_for(lambda: gone(pid), 3.0 + work, what="the child to stop working on its job by itself")
        # the job would have stored its output `work` seconds after it began: wait past that
        while time.monotonic() < started + work + 2.0:
            assert not output.exists(), "a fenced child stored its output"
            time.sleep(0.1)
        assert not output.exists()
        # its last words wait in the pipe while the supervisor's own statement hangs (up to 10 s)
        fenced = wait_for(lambda: [line for line in svc.log().splitlines() if "stopping work on it" in line], 20,
                          what="the child's fencing line in the log")
        assert len(fenced) == 1 and job.id in fenced[0] and f"child[{pid}]" in fenced[0]
        assert db.job(job.id)["status"] == "running", "nothing could have reached the database"

        proxy.frozen.clear()  # the database answers again: the attempt is settled, the job runs again
        wait_for(lambda: db.job(job.id)["status"] == "succeeded", 90, what="the job to succeed on its next attempt")
        # the attempt was ended once: by the supervisor for its fenced child, or (if its rescuer's
        # statement, stuck in the frozen connection, ran first) by the rescue
        settled = [e for e in db.events(job.id) if e["kind"] == "retry_scheduled"]
        assert [e["data"]["worker"] for e in settled] == [holder]
        assert settled[0]["data"]["reason"] in ("fenced", "rescued"), settled
        record = json.loads(output.read_text())
        assert record["attempt"] == 2 and record["pid"] != pid
        assert [e["kind"] for e in db.events(job.id)].count("succeeded") == 1
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0
    finally:
        proxy.close()
