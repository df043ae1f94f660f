"""A network partition: two supervisors as two hosts, one of them cut off from PostgreSQL mid-job.

Each host is a network namespace (tests/netns.py) whose only way out is a veth pair to a TCP
forwarder this test runs in the root namespace, in front of the test's PostgreSQL. Storage is
shared (one directory on this machine), as a network file system or a bucket would be.

Host B runs three jobs: two long ones and a short one that finishes its work just after the
cut. B's link goes down (packets dropped, connections hang). Asserted from the database, the
logs and the files:
  - B's children stop working on the jobs they can no longer heartbeat, before A may rescue
    them (fencing), and never write their outputs afterwards;
  - A rescues the three jobs and finishes them;
  - when the link returns, what B still had to say (the short job's completion, the settlement
    of the fenced attempts) is refused by the database and logged (result_discarded events);
  - every job ends exactly once (one `succeeded` event each);
  - B, never restarted, claims and finishes new jobs.

The test sends traffic only to the addresses it gave its own namespaces and to loopback; every
wait is bounded; namespaces, veths, forwarders and processes are removed however it ends.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import time
from pathlib import Path

import psutil
import pytest

import netns
from service import Database, FreezingProxy, Service, child_pid, wait_for, write_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

STALE_AFTER = 8.0  # a child fences itself about 6 s after its last confirmed heartbeat (lease.py)
LONG = 16.0  # the long jobs' work: unfenced, B would store them ~10 s after the cut, after A's rescue
SHORT = 8.0  # the short job's work: it ends ~2 s after the cut, while its lease still holds
FENCE_LINE = re.compile(r"job ([0-9a-f-]{36}): no heartbeat confirmed for .* stopping work on it")


@pytest.fixture
def hosts():
    """Two namespaces joined to this one, removed whatever happens."""
    try:
        netns.check_available()
    except netns.Unavailable as exc:
        pytest.skip(str(exc))
    tag = f"gw{os.getpid() % 100000:05d}{os.urandom(1).hex()}"  # interface names stay within 15 bytes
    made: list[netns.Host] = []
    try:
        for name, subnet in zip("ab", netns.free_subnets(2)):
            host = netns.Host(f"{tag}{name}", subnet)
            made.append(host)
            host.open()
    except netns.Unavailable as exc:
        for host in made:
            host.close()
        pytest.skip(str(exc))
    try:
        yield made
    finally:
        for host in made:
            host.close()


@pytest.fixture
def fleet(hosts, cli_env, dsn, tmp_path):
    """`geoworker run` on each host, through a forwarder on the host's gateway address."""
    forwarders: dict[str, FreezingProxy] = {}
    services: list[Service] = []

    def start(host: netns.Host, name: str, concurrency: int) -> Service:
        forwarder = forwarders.setdefault(host.ns, FreezingProxy(dsn, bind=host.gateway))
        config = write_config(tmp_path / f"{name}.toml", {
            "worker": {"debug_tasks": True, "concurrency": concurrency, "poll_interval": 1.0,
                       "heartbeat_interval": 1.0, "stale_after": STALE_AFTER, "graceful_timeout": 20.0},
            "retry": {"backoff_base": 0.2, "backoff_max": 1.0},
            "database": {"connect_timeout": 3},
            "storage": {"temp_dir": str(tmp_path / f"tmp-{name}")},  # the work directories are each host's own
        })
        env = {**cli_env, "GEOWORKER_CONFIG": str(config), "DATABASE_URL": forwarder.dsn,
               "GEOWORKER_LOGGING_FILE": str(tmp_path / f"{name}.log")}
        svc = Service(env, tmp_path, name=name, wrapper=host.wrapper).start()
        services.append(svc)
        return svc

    try:
        yield start
    finally:
        for svc in services:
            svc.stop()
        for forwarder in forwarders.values():
            forwarder.close()


def children_of(db: Database, svc: Service) -> str:
    """The worker-id prefix of a supervisor's children (host:tag:), from its own row."""
    row = wait_for(lambda: db.rows("SELECT id FROM geo_workers WHERE kind = 'supervisor' AND pid = %s "
                                   "AND stopped_at IS NULL", (svc.pid,)), 30, what=f"supervisor {svc.pid} to register")
    host, _pid, tag = row[0]["id"].split(":")
    return f"{host}:{tag}:"


def fenced_at(log: str) -> dict[str, dt.datetime]:
    """job id -> when a child logged that it stopped working on it (its own clock: this machine's)."""
    found = {}
    for line in log.splitlines():
        match = FENCE_LINE.search(line)
        if match:
            found[match.group(1)] = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
    return found


def rescued_at(db: Database, job_id: str) -> dt.datetime:
    """When a rescuer took the job back (the database's clock: the same machine's), as local time."""
    [at] = [e["at"] for e in db.events(job_id) if e["kind"] == "retry_scheduled" and e["data"]["reason"] == "rescued"]
    return at.astimezone().replace(tzinfo=None)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def holder(db: Database, job_id: str) -> str | None:
    return db.job(job_id)["locked_by"]


def succeeded_by(db: Database, job_id: str) -> list[str]:
    return [e["worker"] for e in db.events(job_id) if e["kind"] == "succeeded"]


def test_a_partitioned_host_fences_its_jobs_and_the_other_host_finishes_them(hosts, fleet, queue, db, tmp_path):
    host_a, host_b = hosts
    storage = tmp_path / "storage" / "jobs"

    # --- B takes three jobs; A is up and idle -----------------------------------------------------------
    b = fleet(host_b, "b", concurrency=3)
    b_prefix = children_of(db, b)
    long_jobs = [queue.enqueue("debug.write", {"seconds": LONG}, max_attempts=5).id for _ in range(2)]
    short_job = queue.enqueue("debug.write", {"seconds": SHORT}, max_attempts=5).id
    jobs = long_jobs + [short_job]
    b_holders = wait_for(lambda: (lambda h: h if all(w and w.startswith(b_prefix) for w in h.values()) else None)(
        {j: holder(db, j) for j in jobs}), 60, what="B's children to hold the three jobs")
    a = fleet(host_a, "a", concurrency=3)
    a_prefix = children_of(db, a)
    wait_for(lambda: db.value("SELECT count(*) FROM geo_workers WHERE kind = 'child' AND id LIKE %s "
                              "AND stopped_at IS NULL", (a_prefix + "%",)) >= 3, 60, what="A's three children")

    # --- cut B off two seconds before its short job's work ends --------------------------------------
    wait_for(lambda: db.value("SELECT extract(epoch FROM now() - started_at) FROM geo_jobs WHERE id = %s",
                              (short_job,)) >= SHORT - 2.0, 30, interval=0.05, what="the short job to near its end")
    host_b.cut()
    cut_at = time.monotonic()

    # watch until A holds all three jobs: B's children must be gone (fenced) before each rescue,
    # and every version of every output file is recorded as it appears
    writes: dict[str, list[tuple[float, dict]]] = {j: [] for j in jobs}
    seen: dict[str, tuple[int, int]] = {}
    b_gone_at: dict[str, float] = {}
    taken_at: dict[str, float] = {}

    def watch() -> None:
        now = time.monotonic()
        for job_id in jobs:
            path = storage / job_id / "output" / "attempt.json"
            try:
                st = path.stat()
                if seen.get(job_id) != (st.st_ino, st.st_mtime_ns):
                    seen[job_id] = (st.st_ino, st.st_mtime_ns)
                    writes[job_id].append((now, json.loads(path.read_text())))
            except (FileNotFoundError, ValueError):
                pass
            if job_id not in b_gone_at and gone(child_pid(b_holders[job_id])):
                b_gone_at[job_id] = now
            if job_id not in taken_at and holder(db, job_id) != b_holders[job_id]:
                taken_at[job_id] = now

    deadline = cut_at + 60
    while len(taken_at) < len(jobs) or any(not (holder(db, j) or "").startswith(a_prefix) for j in jobs):
        assert time.monotonic() < deadline, f"A did not take over B's jobs: {[db.job(j) for j in jobs]}"
        watch()
        time.sleep(0.1)

    # the long jobs' children stopped working on them (and exited) before A could rescue them; the
    # short job's child, its work done and stored while its lease held, waits to record the outcome
    b_log = Path(b.stderr_path)
    fenced = wait_for(lambda: (lambda f: f if len(f) >= 2 else None)(fenced_at(b_log.read_text())), 30,
                      what="B's fencing lines")  # they wait in the pipe while B's supervisor is stuck
    assert sorted(fenced) == sorted(long_jobs), fenced
    for job_id in long_jobs:
        assert fenced[job_id] < rescued_at(db, job_id), (fenced, rescued_at(db, job_id))
        assert job_id in b_gone_at and b_gone_at[job_id] <= taken_at[job_id], (b_gone_at, taken_at)
    assert not gone(child_pid(b_holders[short_job])), "the short job's child had nothing to fence"

    # --- the link returns; A finishes everything ---------------------------------------------------------
    healed_db_time = db.value("SELECT now()")
    host_b.heal()
    heal_deadline = time.monotonic() + 90
    while not all(db.job(j)["status"] == "succeeded" for j in jobs):
        assert time.monotonic() < heal_deadline, [db.job(j) for j in jobs]
        watch()
        time.sleep(0.1)

    # what B still had to say once the link was back was refused, and said so
    late = wait_for(lambda: (lambda rows: rows if len(rows) >= 3 else None)(db.rows(
        "SELECT job_id::text AS job, worker, data->>'operation' AS operation, at FROM geo_job_events "
        "WHERE kind = 'result_discarded' AND job_id = ANY(%s::uuid[])", (jobs,))), 60,
        what="B's late outcomes to be refused")
    by_job = {r["job"]: r for r in late}
    for job_id in jobs:
        assert by_job[job_id]["worker"] == b_holders[job_id] and by_job[job_id]["at"] > healed_db_time
    assert by_job[short_job]["operation"] == "complete"  # its late completion
    assert {by_job[j]["operation"] for j in long_jobs} == {"fail"}  # the fenced attempts' settlement
    wait_for(lambda: "result discarded" in b_log.read_text(), 30, what="B's child to log the refusal")

    # exactly once, by A; the outputs are A's and nobody touched them after B's fence
    for job_id in jobs:
        [winner] = succeeded_by(db, job_id)
        assert winner.startswith(a_prefix)
        record = json.loads((storage / job_id / "output" / "attempt.json").read_text())
        assert record["pid"] == child_pid(winner) and record["attempt"] == db.job(job_id)["attempts"]
        fence_deadline = cut_at + STALE_AFTER  # no write of B's may land after the earliest rescue
        b_writes = [(t, r) for t, r in writes[job_id] if r["pid"] == child_pid(b_holders[job_id])]
        assert all(t < fence_deadline for t, _ in b_writes), (job_id, writes[job_id])
    assert all(not any(r["pid"] == child_pid(b_holders[j]) for _, r in writes[j]) for j in long_jobs)

    # --- B rejoins without a restart: with A gone, it claims and finishes new work -------------------
    a.signal(signal.SIGTERM)
    assert a.wait(60) == 0
    fresh = [queue.enqueue("debug.write", {"seconds": 0.5}).id for _ in range(2)]
    wait_for(lambda: all(db.job(j)["status"] == "succeeded" for j in fresh), 90, what="B to finish new jobs")
    assert all(succeeded_by(db, j)[0].startswith(b_prefix) for j in fresh)
    assert b.proc.poll() is None  # the same supervisor process all along

    # after all of that, the three outputs are still the ones A wrote
    for job_id in jobs:
        record = json.loads((storage / job_id / "output" / "attempt.json").read_text())
        assert record["pid"] == child_pid(succeeded_by(db, job_id)[0])
    succeeded = db.rows("SELECT job_id, count(*) AS n FROM geo_job_events WHERE kind = 'succeeded' GROUP BY 1")
    assert len(succeeded) == 5 and all(r["n"] == 1 for r in succeeded)
    b.signal(signal.SIGTERM)
    assert b.wait(60) == 0
