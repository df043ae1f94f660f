"""What becomes of a dead child's job: written through the real queue, in-process (no child processes)."""

from __future__ import annotations

from geoworker.breaker import Breaker
from geoworker.jobs import JobQueue, RetryPolicy
from geoworker.settlement import Settler, for_crash, for_kill
from geoworker.watchdog import RunningJob


def _settler(queue) -> tuple[Settler, list]:
    events: list = []
    return Settler(lambda: queue, Breaker("database"), lambda name, **data: events.append((name, data))), events


def test_a_crash_is_an_attempt_retried_with_backoff(queue):
    queue.enqueue("debug.noop", {})
    job = queue.claim()
    settler, events = _settler(queue)
    settler.settle(for_crash(RunningJob(job.id, job.task_type, job.attempts, started=0.0), queue.worker_id, "signal 9"))
    after = queue.get(job.id)
    assert (after.status, after.error_code, after.attempts) == ("queued", "crashed", 1)
    assert settler.pending == [] and events[0][0] == "job_settled"


def test_a_kill_is_claimable_again_only_after_the_grace(queue, sql):
    queue.enqueue("debug.noop", {})
    job = queue.claim()
    settler, _ = _settler(queue)
    settler.settle(for_kill(RunningJob(job.id, job.task_type, 1, started=0.0), queue.worker_id, "timeout", "timeout",
                            "too long"))
    wait = sql("SELECT extract(epoch FROM run_at - now()) FROM geo_jobs WHERE id = %s", (job.id,))[0][0]
    assert float(wait) > 5.0, "a killed child gets its grace before anyone else may run the job"


def test_a_value_the_database_refuses_fails_the_job_once_instead_of_looping(dsn):
    """retry.backoff_* so large that the retry's run_at overflows (config refuses it now; a queue built by
    hand still can): the settlement is a data error, not an outage, so the job fails with
    internal_error and nothing stays pending to be retried every turn."""
    queue = JobQueue(dsn, worker_id="supervisor-test", retry=RetryPolicy(base=1e14, cap=1e14))
    try:
        queue.enqueue("debug.noop", {})
        job = queue.claim()
        settler, _ = _settler(queue)
        settler.settle(for_crash(RunningJob(job.id, job.task_type, 1, started=0.0), queue.worker_id, "signal 9"))
        after = queue.get(job.id)
        assert (after.status, after.error_code) == ("failed", "internal_error"), after.last_error
        assert "could not be recorded" in after.last_error and "refused a value" in after.last_error
        assert settler.pending == []
        settler.retry_pending()
        assert queue.get(job.id).status == "failed"
    finally:
        queue.close()
