"""Prometheus metrics and /healthz, served by the supervisor from its own loop.

The metrics live in a prometheus_client registry; the endpoint that serves them is
geoworker.loop_http (a non-blocking server driven by the supervisor's select(), not a
thread: see there why). This module's observer hands its sockets to the supervisor
through `fds()` and `on_readable()`.

Children keep no registry. What they do reaches the supervisor as ctl messages (busy;
idle with outcome, duration and stage timings), the supervisor turns those and its own
decisions (kills, settlements, rescues) into events, and this observer counts them.
Queue depth is read from the database only when someone scrapes, at most every
QUEUE_REFRESH seconds (and the count of every status every STATUS_REFRESH seconds).
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from loguru import logger
from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               disable_created_metrics)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from geoworker import __version__
from geoworker.loop_http import HttpEndpoint, host_for_url

QUEUE_REFRESH = 5.0  # seconds: queue depth (one indexed query over queued and running jobs)
STATUS_REFRESH = 60.0  # seconds: jobs by every status (a scan of the status index)
LOOP_STALE_AFTER = 10.0  # /healthz: the loop's last full turn must be younger than this
MAX_LABEL_VALUES = 64  # distinct task or stage names before the rest become "other"
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
KILL_REASONS = ("timeout", "memory_limit", "unresponsive", "crashed", "lost", "fenced", "cancelled", "boot_timeout",
                "shutdown")
_LABEL = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def for_supervisor(supervisor) -> "SupervisorMetrics":
    """The observer `attach_observers()` adds; it serves when metrics.port is not 0."""
    disable_created_metrics()  # no *_created series beside every counter: noise for our dashboards
    return SupervisorMetrics(supervisor)


class SupervisorMetrics:
    """Counters, histograms and gauges of one supervisor, and the endpoint that serves them."""

    def __init__(self, supervisor, registry: CollectorRegistry | None = None):
        self.supervisor = supervisor
        self.registry = registry or CollectorRegistry()
        self.endpoint: HttpEndpoint | None = None
        self.address: tuple[str, int] | None = None  # what metrics.host/port said when we (tried to) bind
        self.last_tick = time.monotonic()
        self._queue_due = 0.0
        self._status_due = 0.0
        self._labels: dict[str, set[str]] = {"task": set(), "stage": set()}
        self._define()

    # --- the metrics -------------------------------------------------------------------

    def _define(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)  # the supervisor's own process_* (RSS, CPU, open fds)
        self.claimed = Counter("geoworker_jobs_claimed", "Jobs claimed by this supervisor's children.",
                               ["task"], registry=r)
        self.succeeded = Counter("geoworker_jobs_succeeded", "Jobs completed successfully.", ["task"], registry=r)
        self.failed = Counter("geoworker_jobs_failed", "Jobs that ended failed for good (no attempt left, or a "
                              "permanent error), whoever ended the attempt.", ["task", "error_code"], registry=r)
        self.retried = Counter("geoworker_jobs_retried", "Attempts that ended with a retry scheduled (errors, "
                               "kills, crashes, rescues).", ["task", "error_code"], registry=r)
        self.rescued = Counter("geoworker_jobs_rescued", "Running jobs of a vanished worker (any host) that this "
                               "supervisor requeued or failed.", ["task"], registry=r)
        self.discarded = Counter("geoworker_jobs_discarded", "Results refused because the job was no longer the "
                                 "child's (cancelled, rescued, killed at the last moment).", ["task"], registry=r)
        self.killed = Counter("geoworker_children_killed", "Children stopped by the supervisor or found dead, by "
                              "reason (timeout, memory_limit, unresponsive, crashed, cancelled, lost, shutdown, ...).",
                              ["reason"], registry=r)
        for reason in KILL_REASONS:  # at 0 from the start, so rate() and alerts see the series
            self.killed.labels(reason)
        self.spawned = Counter("geoworker_children_spawned", "Children forked.", registry=r)
        self.duration = Histogram("geoworker_job_duration_seconds", "Wall time of an attempt in the child, by task "
                                  "and outcome (succeeded, failed, discarded).", ["task", "outcome"],
                                  buckets=JOB_BUCKETS, registry=r)
        self.stage = Histogram("geoworker_job_stage_duration_seconds", "Time in each processing stage (validate, "
                               "read, render, warp, encode, write) of attempts that succeeded.", ["task", "stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.queue_depth = Gauge("geoworker_queue_depth", "Jobs queued and claimable now (ready), queued for later "
                                 "(scheduled: retries in backoff) and running, in the whole database.", ["state"],
                                 registry=r)
        self.jobs_by_status = Gauge("geoworker_jobs_by_status", "Jobs in the database by status (refreshed every "
                                    f"{STATUS_REFRESH:g} s at most).", ["status"], registry=r)
        self.oldest_ready = Gauge("geoworker_queue_oldest_ready_age_seconds", "How long the oldest claimable job "
                                  "has waited (0 when none waits).", registry=r)
        self.alive = Gauge("geoworker_children_alive", "Child processes of this supervisor.", registry=r)
        self.busy = Gauge("geoworker_children_busy", "Children running a job now.", registry=r)
        self.target = Gauge("geoworker_children_target", "Children the supervisor keeps (worker.concurrency, "
                            "SIGTTIN/SIGTTOU).", registry=r)
        self.child_rss = Gauge("geoworker_child_rss_bytes", "Resident memory of each child.", ["pid"], registry=r)
        self.pool_rss = Gauge("geoworker_children_rss_bytes", "Resident memory of all children together.",
                              registry=r)
        self.rss_limit = Gauge("geoworker_child_rss_limit_bytes", "worker.max_child_rss_mb: a child above it is "
                               "killed.", registry=r)
        self.db_up = Gauge("geoworker_database_up", "1 while the supervisor's last database call succeeded.",
                           registry=r)
        self.pending = Gauge("geoworker_pending_outcomes", "Outcomes of killed jobs waiting for the database.",
                             registry=r)
        self.loop_age = Gauge("geoworker_loop_last_turn_age_seconds", "Seconds since the supervisor loop's last "
                              "full turn.", registry=r)
        info = Gauge("geoworker_info", "This supervisor: version, id and worker name (always 1).",
                     ["version", "supervisor", "name"], registry=r)
        info.labels(__version__, self.supervisor.id, self.supervisor.settings.worker.name).set(1)

    def _name(self, kind: str, value: Any) -> str:
        """A label value from a child's message, bounded: never an unbounded set of series."""
        seen = self._labels[kind]
        text = str(value) if value is not None else "unknown"
        if text in seen:
            return text
        if not _LABEL.match(text) or len(seen) >= MAX_LABEL_VALUES:
            return "other"
        seen.add(text)
        return text

    # --- the supervisor's events ----------------------------------------------------------

    def on_event(self, name: str, supervisor=None, **data: Any) -> None:
        handler = getattr(self, f"_on_{name}", None)
        if handler is not None:
            handler(**data)

    def _on_starting(self, **_: Any) -> None:
        self.last_tick = time.monotonic()
        self.apply_settings()

    def _on_started(self, **_: Any) -> None:
        self.last_tick = time.monotonic()
        self.apply_settings()

    def _on_stopped(self, **_: Any) -> None:
        self.close()

    def _on_tick(self, **_: Any) -> None:
        self.last_tick = time.monotonic()
        self.apply_settings()  # SIGHUP may have changed metrics.host/port
        if self.endpoint is not None:
            self.endpoint.expire()

    def _on_job_started(self, job: dict, **_: Any) -> None:
        self.claimed.labels(self._name("task", job.get("task"))).inc()

    def _on_job_finished(self, job: dict, **_: Any) -> None:
        task = self._name("task", job.get("task"))
        outcome = job.get("outcome") or "unknown"
        code = job.get("error_code") or "none"
        if outcome == "succeeded":
            self.succeeded.labels(task).inc()
        elif outcome == "failed":
            (self.retried if job.get("retried") else self.failed).labels(task, code).inc()
        elif outcome == "discarded":
            self.discarded.labels(task).inc()
        if isinstance(job.get("duration"), (int, float)):
            self.duration.labels(task, outcome if outcome in ("succeeded", "failed", "discarded") else "other") \
                .observe(job["duration"])
        timings = job.get("timings")
        if isinstance(timings, dict):
            for stage, seconds in timings.items():
                if stage != "total" and isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                    self.stage.labels(task, self._name("stage", stage)).observe(seconds)

    def _on_job_settled(self, job=None, **_: Any) -> None:
        """The supervisor ended an attempt itself (a kill or a crash): a retry, or failed for good."""
        if job is not None:
            self._ended(job)

    def _on_job_rescued(self, job=None, **_: Any) -> None:
        if job is not None:
            self.rescued.labels(self._name("task", job.task_type)).inc()
            self._ended(job)

    def _ended(self, job) -> None:
        task, code = self._name("task", job.task_type), job.error_code or "none"
        if job.status == "queued":
            self.retried.labels(task, code).inc()
        elif job.status == "failed":
            self.failed.labels(task, code).inc()

    def _on_child_spawned(self, **_: Any) -> None:
        self.spawned.inc()

    def _on_child_killed(self, reason: str = "unknown", **_: Any) -> None:
        self.killed.labels(str(reason)).inc()

    def _on_child_exited(self, child=None, **_: Any) -> None:
        if child is not None:
            try:
                self.child_rss.remove(str(child.pid))
            except KeyError:
                pass

    # --- gauges, read when scraped ----------------------------------------------------------

    def refresh(self) -> None:
        """Gauges from the supervisor's state (free) and, now and then, from the database."""
        sup = self.supervisor
        children = list(sup.children.values())
        self.alive.set(len(children))
        self.busy.set(sum(1 for c in children if c.state == "busy"))
        self.target.set(sup.concurrency)
        for child in children:
            self.child_rss.labels(str(child.pid)).set(child.rss)
        self.pool_rss.set(sum(c.rss for c in children))
        self.rss_limit.set(sup.settings.worker.max_child_rss_mb * 1024 * 1024)
        self.pending.set(len(sup.settler.pending))
        self.loop_age.set(round(time.monotonic() - self.last_tick, 3))
        self._refresh_queue()
        self.db_up.set(1 if sup.breaker.ok else 0)

    def _refresh_queue(self) -> None:
        sup = self.supervisor
        now = time.monotonic()
        # only on a database that answers: a connect to a lost host could hold the loop for connect_timeout
        if sup.queue is None or not sup.breaker.ok or now < self._queue_due:
            return
        self._queue_due = now + QUEUE_REFRESH
        summary = sup.breaker.call(sup.queue.summary)
        if summary is not None:
            for state in ("ready", "scheduled", "running"):
                self.queue_depth.labels(state).set(summary[state])
            self.oldest_ready.set(summary["oldest_ready_age"])
        if sup.breaker.ok and now >= self._status_due:
            self._status_due = now + STATUS_REFRESH
            counts = sup.breaker.call(sup.queue.count_by_status)
            for status, n in (counts or {}).items():
                self.jobs_by_status.labels(status).set(n)

    def health(self) -> tuple[bool, list[str]]:
        """Healthy while the loop turns and the database answers; else the reasons."""
        if self.supervisor.starting:
            return False, [f"starting: {self.supervisor.starting}"]
        problems = []
        age = time.monotonic() - self.last_tick
        if age > LOOP_STALE_AFTER:
            problems.append(f"supervisor loop stalled (last turn {age:.0f} s ago)")
        if not self.supervisor.breaker.ok:
            http = self.supervisor.settings.queue.mode == "http"
            problems.append("API unreachable (queue.mode = http)" if http else "database unreachable")
        return not problems, problems

    # --- HTTP ----------------------------------------------------------------------------------

    def routes(self) -> dict[str, Callable[[], tuple[int, str, bytes]]]:
        return {"/metrics": self._metrics_page, "/healthz": self._healthz_page, "/": self._index_page}

    def _metrics_page(self) -> tuple[int, str, bytes]:
        self.refresh()
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def _healthz_page(self) -> tuple[int, str, bytes]:
        ok, problems = self.health()
        sup = self.supervisor
        if ok:
            backend = "API" if sup.settings.queue.mode == "http" else "database"
            body = (f"ok: supervisor {sup.id}, {len(sup.children)} children, {backend} reachable"
                    + (", stopping" if sup.stopping else ""))
            return 200, "text/plain; charset=utf-8", (body + "\n").encode()
        return 503, "text/plain; charset=utf-8", ("unhealthy: " + "; ".join(problems) + "\n").encode()

    def _index_page(self) -> tuple[int, str, bytes]:
        return 200, "text/plain; charset=utf-8", b"geoworker supervisor: /metrics /healthz\n"

    def apply_settings(self) -> None:
        """Listen where metrics.host/port say (port 0: not at all); follow a SIGHUP's change."""
        cfg = self.supervisor.settings.metrics
        wanted = (cfg.host, cfg.port)
        if wanted == self.address:
            return
        self.close()
        self.address = wanted
        if cfg.port == 0:
            return
        endpoint = HttpEndpoint(cfg.host, cfg.port, self.routes())
        try:
            endpoint.open()
        except OSError as exc:
            # a taken port must not take the service down: it runs on, without metrics
            logger.error(f"metrics: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); "
                         "running without /metrics and /healthz")
            return
        self.endpoint = endpoint
        logger.info(f"metrics: serving /metrics and /healthz on http://{host_for_url(cfg.host)}:{cfg.port}/")

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
        self.address = None

    # the observer protocol's sockets: the supervisor selects on them and closes them in children
    def fds(self) -> list[int]:
        return self.endpoint.fds() if self.endpoint is not None else []

    def on_readable(self, fd: int) -> None:
        if self.endpoint is not None:
            self.endpoint.on_readable(fd)
