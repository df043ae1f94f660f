"""The watchdog's decisions and the rescuer's schedule, in-process with a fake clock: no sleeps, no processes.

The same decisions are proven on real processes in test_service.py (kills by deadline, memory,
silence) and test_stall.py (a supervisor frozen with SIGSTOP).
"""

from __future__ import annotations

import pytest

from geoworker.breaker import Breaker
from geoworker.errors import DatabaseUnavailable
from geoworker.rescue import FORGET_EVERY, Rescuer
from geoworker.watchdog import (ChildWatch, Kill, Limits, RunningJob, heard, judge, memory_warning_due,
                                next_sigkill_in, sigkill_due)

MiB = 1024 * 1024
LIMITS = Limits(max_processing_time=60.0, max_rss=100 * MiB, silence=9.0, boot_timeout=30.0, kill_grace=5.0)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def busy_child(started: float, now: float, timeout: float | None = None) -> ChildWatch:
    return ChildWatch(spawned=started - 1, last_heard=now, state="busy",
                      job=RunningJob("j1", "geotiff_to_png", 1, started=started, timeout=timeout))


def test_a_healthy_busy_child_is_left_alone():
    assert judge(busy_child(started=1000, now=1030), now=1030, limits=LIMITS) is None


def test_a_job_past_max_processing_time_is_a_timeout():
    verdict = judge(busy_child(started=1000, now=1061), now=1061, limits=LIMITS)
    assert (verdict.reason, verdict.code) == ("timeout", "timeout")
    assert "worker.max_processing_time" in verdict.message


def test_the_job_timeout_param_replaces_the_setting():
    watch = busy_child(started=1000, now=1011, timeout=10.0)
    verdict = judge(watch, now=1011, limits=LIMITS)
    assert verdict.reason == "timeout" and "its timeout param" in verdict.message
    assert judge(busy_child(started=1000, now=1009, timeout=10.0), now=1009, limits=LIMITS) is None


def test_memory_is_judged_before_the_deadline_and_warned_of_first():
    watch = busy_child(started=1000, now=1100)
    watch.rss = 95 * MiB
    assert memory_warning_due(watch, LIMITS)
    watch.warned_memory = True
    assert not memory_warning_due(watch, LIMITS), "one warning per child"
    watch.rss = 101 * MiB
    verdict = judge(watch, now=1100, limits=LIMITS)
    assert (verdict.reason, verdict.code) == ("memory_limit", "memory_limit") and "101 MiB" in verdict.message


def test_silence_is_judged_by_what_the_child_sent_not_by_when_it_was_read():
    clock = FakeClock(1000.0)
    watch = ChildWatch(spawned=990, last_heard=1000, state="idle")
    # the supervisor is frozen for 30 s while the child goes on pinging every second
    clock.advance(30)
    stamps = [1001.0 + k for k in range(29)]
    assert judge(watch, clock(), LIMITS).reason == "unresponsive", "unread pings: the child looks silent"
    for stamp in stamps:  # read after the stall: what the child sent, with its own times
        heard(watch, stamp, clock())
    assert watch.last_heard == 1029.0
    assert judge(watch, clock(), LIMITS) is None


def test_a_stamp_from_the_future_counts_as_now():
    watch = ChildWatch(spawned=0, last_heard=0, state="idle")
    heard(watch, 5000.0, now=100.0)
    assert watch.last_heard == 100.0


def test_a_child_that_never_boots_is_stopped_without_blaming_a_job():
    watch = ChildWatch(spawned=1000, last_heard=1000)
    assert judge(watch, now=1029, limits=LIMITS) is None, "booting children are not held to the silence limit"
    verdict = judge(watch, now=1031, limits=LIMITS)
    assert (verdict.reason, verdict.code) == ("boot_timeout", None)


def test_sigkill_follows_sigterm_after_the_grace_and_only_once():
    watch = busy_child(started=1000, now=1000)
    watch.kill = Kill("timeout", term_sent=1000.0)
    assert judge(watch, now=2000, limits=LIMITS) is None, "a child being stopped is not judged again"
    assert not sigkill_due(watch, 1004.9, LIMITS) and next_sigkill_in(watch, 1004.0, LIMITS) == pytest.approx(1.0)
    assert sigkill_due(watch, 1005.0, LIMITS)
    watch.kill.sigkilled = True
    assert not sigkill_due(watch, 1010.0, LIMITS) and next_sigkill_in(watch, 1010.0, LIMITS) is None


def test_the_breaker_pauses_after_a_failure_and_doubles_its_pause():
    clock = FakeClock()
    breaker = Breaker("database", first=1.0, cap=4.0, clock=clock)
    calls = []

    def failing():
        calls.append(clock())
        raise DatabaseUnavailable("gone")

    assert breaker.call(failing) is None and not breaker.ok
    assert breaker.call(failing) is None and len(calls) == 1, "paused: not even tried"
    clock.advance(1.0)
    breaker.call(failing)
    clock.advance(1.9)
    assert breaker.paused(), "the second pause is 2 s"
    clock.advance(0.1)
    assert breaker.call(lambda: "ok") == "ok" and breaker.ok and not breaker.paused()


def test_the_rescuer_runs_at_once_then_every_interval_and_forgets_hourly(queue, sql):
    clock = FakeClock()
    rescuer = Rescuer(stale_after=8.0, clock=clock)
    assert rescuer.interval == 2.0
    job = queue.enqueue("debug.noop", {})
    claimed = queue.claim()
    assert claimed.id == job.id
    # the worker that claimed it is gone, and its last heartbeat is a minute old (the database's clock)
    sql("UPDATE geo_jobs SET heartbeat_at = now() - interval '60 seconds' WHERE id = %s", (job.id,))
    sql("INSERT INTO geo_workers (id, host, pid, kind, last_seen, stopped_at) VALUES "
        "('old', 'h', 1, 'child', now() - interval '8 days', now() - interval '8 days')")
    assert rescuer.due()
    rescued = rescuer.run(queue)
    assert [(j.id, j.status, j.error_code) for j in rescued] == [(job.id, "queued", "crashed")]
    assert sql("SELECT count(*) FROM geo_workers WHERE id = 'old'")[0][0] == 0, "old rows forgotten on the first run"
    assert not rescuer.due()
    clock.advance(1.9)
    assert not rescuer.due()
    clock.advance(0.1)
    assert rescuer.due()
    sql("INSERT INTO geo_workers (id, host, pid, kind, last_seen, stopped_at) VALUES "
        "('old2', 'h', 1, 'child', now() - interval '8 days', now() - interval '8 days')")
    rescuer.run(queue)
    assert sql("SELECT count(*) FROM geo_workers WHERE id = 'old2'")[0][0] == 1, "not forgotten before the hour"
    clock.advance(FORGET_EVERY)
    rescuer.run(queue)
    assert sql("SELECT count(*) FROM geo_workers WHERE id = 'old2'")[0][0] == 0


def test_the_rescuer_spares_a_live_workers_job(queue, sql):
    rescuer = Rescuer(stale_after=8.0, clock=FakeClock())
    queue.enqueue("debug.noop", {})
    job = queue.claim()
    queue.register_worker(queue.worker_id, "child", 1)
    queue.touch_workers([{"id": queue.worker_id, "rss": 0, "current_job": job.id, "jobs_done": 0}])
    sql("UPDATE geo_jobs SET heartbeat_at = now() - interval '60 seconds' WHERE id = %s", (job.id,))
    assert rescuer.run(queue) == []
    assert sql("SELECT status FROM geo_jobs WHERE id = %s", (job.id,))[0][0] == "running"


def test_rescue_while_the_database_is_away_raises_and_waits_one_interval(tmp_path):
    from geoworker.jobs import JobQueue

    clock = FakeClock()
    rescuer = Rescuer(stale_after=8.0, clock=clock)
    gone = JobQueue("postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
    with pytest.raises(DatabaseUnavailable):
        rescuer.run(gone)
    assert not rescuer.due()
    clock.advance(rescuer.interval)
    assert rescuer.due()

