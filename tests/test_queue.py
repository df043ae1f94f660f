"""The queue on a real PostgreSQL: claim order, exactly-once, locks, backoff, rescue, cancel."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import time

import pytest

from geoworker import reports
from geoworker.errors import InvalidState, JobNotFound, LockLost
from geoworker.jobs import JobQueue, RetryPolicy

UTC = dt.timezone.utc


def other(queue: JobQueue, worker_id: str) -> JobQueue:
    return JobQueue(queue.dsn, worker_id=worker_id, retry=queue.retry)


def kinds(queue: JobQueue, job_id: str) -> list[str]:
    return [e["kind"] for e in queue.events(job_id)]


def test_enqueue_claim_complete_writes_every_state_change(queue):
    job = queue.enqueue("debug.noop", {"x": 1}, priority=3, max_attempts=2)
    assert (job.status, job.attempts, job.params) == ("queued", 0, {"x": 1})

    claimed = queue.claim()
    assert claimed.id == job.id
    assert (claimed.status, claimed.attempts, claimed.locked_by) == ("running", 1, "test-worker")
    assert claimed.started_at is not None and claimed.heartbeat_at is not None

    assert queue.progress(job.id, 40, "render")
    done = queue.complete(job.id, outputs={"png": "a.png"}, result={"ok": True})
    assert (done.status, done.progress, done.locked_by, done.outputs) == ("succeeded", 100, None, {"png": "a.png"})
    assert done.finished_at >= done.started_at
    assert kinds(queue, job.id) == ["created", "claimed", "progress", "succeeded"]
    assert queue.claim() is None


def test_claim_order_is_priority_then_run_at_then_age(queue, sql):
    now = dt.datetime.now(UTC)
    low_old = queue.enqueue("debug.noop", priority=0, run_at=now - dt.timedelta(minutes=5))
    high_late = queue.enqueue("debug.noop", priority=5, run_at=now - dt.timedelta(minutes=1))
    high_early = queue.enqueue("debug.noop", priority=5, run_at=now - dt.timedelta(minutes=2))
    low_new = queue.enqueue("debug.noop", priority=0, run_at=now - dt.timedelta(minutes=5))
    # same priority and run_at: the older row first
    sql("UPDATE geo_jobs SET created_at = created_at + interval '1 second' WHERE id = %s", (low_new.id,))
    order = [queue.claim().id for _ in range(4)]
    assert order == [high_early.id, high_late.id, low_old.id, low_new.id]


def test_job_scheduled_in_the_future_is_not_claimed_early(queue):
    later = queue.enqueue("debug.noop", run_at=dt.datetime.now(UTC) + dt.timedelta(hours=1), priority=100)
    assert queue.claim() is None
    now_job = queue.enqueue("debug.noop", priority=0)
    assert queue.claim().id == now_job.id
    assert queue.get(later.id).status == "queued"


def test_claim_uses_the_partial_index(queue, sql):
    queue.enqueue_many("debug.noop", [{}] * 2000)
    sql("ANALYZE geo_jobs")
    from geoworker import db

    claim_select = db.load_queries()["claim_next_job"].split("), job AS")[0].replace("WITH next AS (", "")
    plan = "\n".join(r[0] for r in sql("EXPLAIN " + claim_select))
    assert "geo_jobs_claim_idx" in plan, plan


def _claimer(dsn: str, name: str, out) -> None:
    q = JobQueue(dsn, worker_id=name)
    got = []
    while (job := q.claim()) is not None:
        q.complete(job.id, result={"by": name})
        got.append(job.id)
    out.put(got)
    q.close()


def test_eight_processes_claim_two_thousand_jobs_exactly_once(queue, sql):
    assert queue.enqueue_many("debug.noop", [{"n": i} for i in range(2000)]) == 2000
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(queue.dsn, f"w{i}", out)) for i in range(8)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    claimed = [job_id for got in results for job_id in got]
    assert len(claimed) == 2000
    assert len(set(claimed)) == 2000
    assert sum(1 for got in results if got) > 1, "the claims were not spread over processes"
    rows = sql("SELECT status, attempts, count(*) FROM geo_jobs GROUP BY 1, 2")
    assert rows == [("succeeded", 1, 2000)]
    assert sql("SELECT count(*) FROM geo_job_events WHERE kind = 'claimed'") == [(2000,)]


def test_retry_policy_is_capped_jittered_exponential():
    policy = RetryPolicy(base=10, cap=100)
    rng = random.Random(7)
    for attempts, ceiling in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 100), (12, 100)]:
        delays = [policy.delay(attempts, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempts, min(delays), max(delays))
        assert max(delays) - min(delays) > ceiling / 4, "no jitter"


def test_transient_failures_back_off_then_fail_when_attempts_are_spent(queue, sql):
    job = queue.enqueue("debug.fail", max_attempts=3)
    for attempt in (1, 2):
        claimed = queue.claim()
        assert claimed.attempts == attempt
        before = dt.datetime.now(UTC)
        after_fail = queue.fail(claimed, "storage_error", "bucket said 503", permanent=False)
        ceiling = 10 * 2 ** (attempt - 1)
        assert after_fail.status == "queued"
        assert after_fail.error_code == "storage_error" and after_fail.locked_by is None
        wait = (after_fail.run_at - before).total_seconds()
        assert ceiling / 2 - 1 <= wait <= ceiling + 1, (attempt, wait)
        assert queue.claim() is None, "a job waiting for its retry was claimed early"
        sql("UPDATE geo_jobs SET run_at = now() WHERE id = %s", (job.id,))
    last = queue.claim()
    assert last.attempts == 3
    final = queue.fail(last, "storage_error", "still 503", permanent=False)
    assert (final.status, final.attempts, final.error_code) == ("failed", 3, "storage_error")
    assert final.last_error == "storage_error: still 503"
    assert final.finished_at is not None
    assert kinds(queue, job.id).count("retry_scheduled") == 2
    assert kinds(queue, job.id)[-1] == "failed"


def test_permanent_failure_fails_at_once_with_one_attempt(queue):
    job = queue.enqueue("geotiff_to_png", max_attempts=5)
    failed = queue.fail(queue.claim(), "invalid_input", "the file is a PNG, not a TIFF", permanent=True)
    assert (failed.status, failed.attempts, failed.error_code) == ("failed", 1, "invalid_input")
    assert queue.get(job.id).last_error == "invalid_input: the file is a PNG, not a TIFF"
    assert queue.claim() is None


def test_rescue_requeues_stale_job_and_the_old_worker_cannot_complete_it(queue, sql):
    job = queue.enqueue("debug.sleep", max_attempts=3)
    old = other(queue, "host-a:111:dead")
    assert old.claim().id == job.id
    sql("UPDATE geo_jobs SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s", (job.id,))

    rescuer = other(queue, "host-b:222:reaper")
    rescued = rescuer.requeue_stale(stale_after=60)
    assert [j.id for j in rescued] == [job.id]
    assert rescued[0].status == "queued" and rescued[0].error_code == "crashed"
    assert rescued[0].attempts == 1, "the dead worker's attempt must count"

    with pytest.raises(LockLost):
        old.complete(job.id, result={"late": True})
    assert not old.heartbeat(job.id)
    assert not old.progress(job.id, 90, "too late")
    events = queue.events(job.id)
    assert [e["kind"] for e in events] == ["created", "claimed", "retry_scheduled", "result_discarded"]
    assert events[2]["data"]["reason"] == "rescued"
    assert "host-a:111:dead is gone" in events[2]["message"]
    assert "complete refused" in events[3]["message"] and "no longer holds" in events[3]["message"]
    assert queue.get(job.id).result is None

    # the retry is a fresh attempt by someone else, and it can finish
    sql("UPDATE geo_jobs SET run_at = now() WHERE id = %s", (job.id,))
    new = other(queue, "host-b:222:child")
    again = new.claim()
    assert (again.id, again.attempts) == (job.id, 2)
    assert new.complete(job.id).status == "succeeded"
    for q in (old, rescuer, new):
        q.close()


def test_a_live_worker_is_never_rescued_even_with_a_late_heartbeat(queue, sql):
    job = queue.enqueue("debug.sleep")
    holder = other(queue, "host-a:1:alive")
    holder.register_worker(holder.worker_id, "child", 1)
    holder.claim()
    holder.touch_workers([{"id": holder.worker_id, "rss": 1, "current_job": job.id, "jobs_done": 0}])
    sql("UPDATE geo_jobs SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s", (job.id,))
    assert queue.requeue_stale(stale_after=60) == []
    # once its process is known to be gone, the same job is rescued at once
    holder.stop_workers([holder.worker_id])
    assert [j.id for j in queue.requeue_stale(stale_after=60)] == [job.id]
    holder.close()


def test_a_claim_its_live_worker_never_learned_of_is_rescued(queue, sql):
    """The claim committed but the reply was lost: the worker is alive and idle, the job orphaned."""
    job = queue.enqueue("debug.sleep")
    holder = other(queue, "host-a:2:alive")
    holder.register_worker(holder.worker_id, "child", 2)
    holder.claim()
    holder.touch_workers([{"id": holder.worker_id, "rss": 1, "current_job": None, "jobs_done": 3}])
    assert queue.requeue_stale(stale_after=60) == [], "a fresh heartbeat is never rescued"
    sql("UPDATE geo_jobs SET heartbeat_at = now() - interval '10 minutes' WHERE id = %s", (job.id,))
    [rescued] = queue.requeue_stale(stale_after=60)
    assert rescued.id == job.id and rescued.status == "queued"
    holder.close()


def test_fresh_heartbeat_is_not_rescued(queue):
    job = queue.enqueue("debug.sleep")
    holder = other(queue, "host-a:1:unregistered")
    holder.claim()
    assert holder.heartbeat(job.id)
    assert queue.requeue_stale(stale_after=60) == []
    holder.close()


def test_rescue_of_the_last_attempt_fails_the_job(queue, sql):
    job = queue.enqueue("debug.crash", max_attempts=1)
    queue.claim()
    sql("UPDATE geo_jobs SET heartbeat_at = now() - interval '1 hour', locked_by = 'gone' WHERE id = %s", (job.id,))
    [rescued] = queue.requeue_stale(stale_after=60)
    assert (rescued.status, rescued.error_code, rescued.attempts) == ("failed", "crashed", 1)


def test_supervisor_requeue_of_a_killed_child_counts_as_an_attempt(queue):
    job = queue.enqueue("debug.sleep", max_attempts=2)
    child = other(queue, "host:10:child")
    supervisor = other(queue, "host:9:supervisor")
    first = child.claim()
    requeued = supervisor.end_attempt(first.id, first.attempts, holder=child.worker_id, code="timeout",
                                      message="ran longer than 5 s", reason="timeout")
    assert (requeued.status, requeued.attempts, requeued.error_code) == ("queued", 1, "timeout")
    ev = queue.events(job.id)[-1]
    assert ev["worker"] == supervisor.worker_id and ev["data"]["worker"] == child.worker_id
    # a second requeue of the same (already ended) attempt is refused
    with pytest.raises(LockLost):
        supervisor.end_attempt(first.id, first.attempts, holder=child.worker_id, code="timeout", message="again")
    for q in (child, supervisor):
        q.close()


def test_cancel_and_manual_retry(queue):
    queued = queue.enqueue("debug.noop")
    assert queue.cancel(queued.id).status == "cancelled"
    with pytest.raises(InvalidState, match="already cancelled"):
        queue.cancel(queued.id)
    retried = queue.retry_now(queued.id)
    assert (retried.status, retried.attempts, retried.error_code) == ("queued", 0, None)

    running = queue.claim()
    assert running.id == queued.id
    cancelled = queue.cancel(running.id, reason="user asked")
    assert (cancelled.status, cancelled.error_code) == ("cancelled", "cancelled")
    with pytest.raises(LockLost):
        queue.complete(running.id)
    assert queue.get(running.id).status == "cancelled"

    done = queue.enqueue("debug.noop")
    queue.claim()
    queue.complete(done.id)
    with pytest.raises(InvalidState, match="only failed or cancelled"):
        queue.retry_now(done.id)


def test_pending_job_waits_for_its_input(queue):
    job = queue.enqueue("geotiff_to_png", status="pending")
    assert queue.claim() is None
    queued = queue.queue_pending(job.id, {"path": "/x.tif"})
    assert queued.status == "queued" and queued.input == {"path": "/x.tif"}
    with pytest.raises(InvalidState):
        queue.queue_pending(job.id, {"path": "/y.tif"})
    assert queue.claim().id == job.id


def test_unknown_job_is_reported(queue):
    with pytest.raises(JobNotFound):
        queue.get("7d1b1b0e-0000-4000-8000-000000000000")
    with pytest.raises(JobNotFound):
        queue.get("not-a-uuid")


def test_notify_wakes_a_listener_when_a_job_is_queued(queue):
    listener = other(queue, "listener")
    listener.listen()
    assert listener.wait(0.05) == []
    queue.enqueue("debug.noop")
    started = time.monotonic()
    got = listener.wait(5)
    assert got and got[0][0] == "geoworker_jobs"
    assert time.monotonic() - started < 5
    # a job for later does not wake anyone
    queue.enqueue("debug.noop", run_at=dt.datetime.now(UTC) + dt.timedelta(hours=1))
    assert listener.wait(0.2) == []
    listener.close()


def test_stats_count_what_happened(queue):
    for _ in range(3):
        queue.enqueue("debug.noop")
    queue.complete(queue.claim().id)
    queue.fail(queue.claim(), "invalid_input", "bad", permanent=True)
    queue.register_worker("w1", "supervisor", 42)
    queue.touch_workers([{"id": "w1", "rss": 50 * 2**20, "current_job": None, "jobs_done": 7}])
    stats = reports.stats(queue)
    assert stats["counts"]["succeeded"] == 1 and stats["counts"]["failed"] == 1 and stats["counts"]["queued"] == 1
    assert stats["finished"]["succeeded"] == 1
    assert stats["failure_reasons"] == {"invalid_input": 1}
    assert stats["durations"][0]["task_type"] == "debug.noop" and stats["durations"][0]["n"] == 1
    assert stats["queue"]["ready"] == 1
    assert [(w["id"], w["jobs_done"], w["rss"]) for w in stats["workers"]] == [("w1", 7, 50 * 2**20)]


def test_lost_connection_is_reported_and_the_next_call_reconnects(queue, sql):
    from geoworker.errors import DatabaseUnavailable

    queue.enqueue("debug.noop")
    pid = queue.conn.get_backend_pid()
    sql("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(DatabaseUnavailable):
        queue.claim()
    assert queue.claim() is not None


def test_without_prepared_statements_for_pgbouncer(queue):
    plain = JobQueue(queue.dsn, worker_id="pgbouncer-safe", prepare=False)
    job = plain.enqueue("debug.noop", {"n": 1})
    assert plain.claim().id == job.id
    assert plain.complete(job.id).status == "succeeded"
    with plain.conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cur.fetchone()[0] == 0
    plain.close()


def test_prepared_statements_survive_a_migration_that_alters_the_table(queue, sql):
    queue.enqueue("debug.noop")
    queue.enqueue("debug.noop")
    queue.complete(queue.claim().id)
    stale = other(queue, "gone-worker").claim()
    sql("UPDATE geo_jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (stale.id,))
    queue.enqueue("debug.fail")
    queue.fail(queue.claim(), "internal_error", "prepares fail_attempt", permanent=True)
    sql("ALTER TABLE geo_jobs ADD COLUMN added_by_a_later_migration integer")
    # the reaper's path (fail_attempt inside a transaction) prepares again
    assert [j.id for j in queue.requeue_stale(stale_after=60)] == [stale.id]
    sql("ALTER TABLE geo_jobs ADD COLUMN and_another integer")
    # and so does every plain call
    queue.enqueue("debug.noop")
    job = queue.claim()
    assert job is not None and job.status == "running"
    assert queue.complete(job.id).status == "succeeded"


def test_complete_and_claim_is_one_statement_with_the_same_guarantees(queue, sql):
    first, second = queue.enqueue("debug.noop"), queue.enqueue("debug.noop")
    job = queue.claim()
    completed, nxt = queue.complete_and_claim(job.id, outputs={"png": "a.png"}, result={"ok": 1})
    assert completed and nxt is not None and nxt.id != job.id
    assert (nxt.status, nxt.attempts, nxt.locked_by) == ("running", 1, "test-worker")
    assert queue.get(job.id).status == "succeeded" and queue.get(job.id).outputs == {"png": "a.png"}
    assert kinds(queue, nxt.id) == ["created", "claimed"]
    # nothing left: completes, claims nothing
    completed, none = queue.complete_and_claim(nxt.id)
    assert completed and none is None
    # a worker that lost its job is refused (and it is recorded), but still gets the next job
    third = queue.enqueue("debug.noop")
    fourth = queue.enqueue("debug.noop")
    held = queue.claim()
    queue.cancel(held.id)
    completed, nxt = queue.complete_and_claim(held.id)
    assert not completed and nxt is not None and nxt.id in (third.id, fourth.id)
    assert kinds(queue, held.id)[-1] == "result_discarded"
    assert queue.get(held.id).status == "cancelled"
    assert {first.id, second.id} <= {r[0] for r in sql("SELECT id::text FROM geo_jobs WHERE status = 'succeeded'")}
