"""The supervisor: spawn, watch, kill, reap, respawn (gunicorn's arbiter is the model).

One loop, at most a second per turn: wait on signals, the children's pipes and the
database's notifications; handle recorded signals (each by its `handle_<name>` method);
reap dead children; let the watchdog judge each child; keep the pool at size; and do the
periodic chores (worker rows, stale-job rescue, memory report, drain check).

Signal handlers only record the signal. The decisions live beside this loop, each in its
own module: watchdog.py (when a child must go, as pure functions), settlement.py (what
becomes of its job), rescue.py (jobs of workers that vanished, any host's), breaker.py
(leaving a failing database alone). An offender is signalled first and its job settled
right after, so that nothing the database does (or fails to do) can spare it; the job is
claimable again only after the kill grace, when the child is surely dead, and a child
finishing at the last moment is refused (exactly-once completion). docs/ARCHITECTURE.md
draws the parts and a job's life.
"""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from loguru import logger

from geoworker import db, logs, settlement, watchdog
from geoworker.backoff import Backoff
from geoworker.breaker import Breaker
from geoworker.config import load_settings
from geoworker.masking import mask_dsn, strip_url_secrets
from geoworker.errors import ConfigError, DatabaseUnavailable
from geoworker.memreport import rss
from geoworker.pipes import drain, set_nonblocking
from geoworker.pool import ChildHandle, Identity, Pool
from geoworker.queue import Queue, open_queue
from geoworker.rescue import Rescuer
from geoworker.storage.workdir import sweep_workdirs

TICK = 1.0  # the longest the loop sleeps
# the loop must never hang on a stalled database: its statements are tiny, so cancel them early
# (children and the API allow db.STATEMENT_TIMEOUT), and give up on a server that accepts the
# bytes but never answers
DB_STATEMENT_TIMEOUT = 5.0
DB_CLIENT_TIMEOUT = 10.0
PENDING_AT_EXIT = 10.0  # seconds a stopping supervisor keeps trying to write what it owes the database
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
HANDLED_SIGNALS = STOP_SIGNALS + (signal.SIGHUP, signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU)


class Observer(Protocol):
    """What the supervisor tells its observers (metrics): events, and sockets to wait on."""

    def on_event(self, name: str, supervisor: "Supervisor", **data: Any) -> None: ...

    def fds(self) -> list[int]: ...

    def on_readable(self, fd: int) -> None: ...


@dataclass
class Timers:
    touch: float = 0.0
    report: float = 0.0
    drain: float = 0.0


class Supervisor:
    """The parent process. Args: settings; concurrency (overrides worker.concurrency); drain (exit when idle)."""

    def __init__(self, settings, concurrency: int | None = None, drain: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.concurrency = concurrency or settings.worker.concurrency
        self.drain = drain
        self.clock = clock
        self.signals: list[int] = []
        self.timers = Timers()
        self.starting: str | None = "starting"  # why it is not serving yet (/healthz says so), or None
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code: int | None = None
        self.queue: Queue | None = None
        self.breaker = Breaker("database", clock=clock)
        self.settler = settlement.Settler(lambda: self.queue, self.breaker, self.emit)
        self.rescuer = Rescuer(settings.worker.stale_after, clock=clock)
        self.pid = os.getpid()
        tag = os.urandom(3).hex()
        self.id = f"{db.hostname()}:{self.pid}:{tag}"
        self._wake_r = self._wake_w = -1
        self.hooks: list[Observer] = []
        identity = Identity(self.id, self.pid, f"{db.hostname()}:{tag}:", "")
        self.pool = Pool(settings, identity, self.breaker, self.settler, self.emit, self.private_fds, clock)

    @property
    def children(self) -> dict[int, ChildHandle]:
        return self.pool.children

    # --- start and stop ---------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        self.start()
        try:
            while self.exit_code is None:
                try:
                    self.loop_once()
                except Exception:
                    # a bug here must not take the pool down with it; log it and carry on
                    logger.exception("supervisor loop error")
                    time.sleep(0.5)
        finally:
            self.close()
        return self.exit_code

    def start(self) -> None:
        self.install_signals()
        self.emit("starting")  # /healthz answers from now on: 503 with the reason until the queue is ready
        db.install_client_timeout(DB_CLIENT_TIMEOUT)
        remote = self.settings.queue.mode == "http"
        # http mode never resolves the DSN: no embedded server starts, nothing touches the database
        dsn = "" if remote else db.resolve_dsn(self.settings)
        self.pool.identity = Identity(self.id, self.pid, self.pool.identity.prefix, dsn)
        self.queue = self.pool.queue = open_queue(self.settings, self.id, f"geoworker-supervisor-{self.pid}",
                                                  dsn=dsn, statement_timeout=DB_STATEMENT_TIMEOUT)
        self.connect_until_ready()
        sweep_old_workdirs(self.settings)
        where = f"API {strip_url_secrets(self.settings.api.base_url)}" if remote else f"database {mask_dsn(dsn)}"
        logger.info(f"supervisor {self.id} started: {self.concurrency} children, {where}, "
                    f"config {self.settings.config_path or '(defaults)'}"
                    + (", draining" if self.drain else ""))
        self.emit("started")

    def connect_until_ready(self) -> None:
        """Wait for the queue (backing off, logging why) and check it once (schema, or the API's token)."""
        backoff = Backoff(first=1.0, cap=30.0)
        while True:
            try:
                self.queue.check()
                self.queue.register_worker(self.id, "supervisor", self.pid)
                if self.settings.database.listen:
                    self.queue.listen(db.CANCEL_CHANNEL)
                self.breaker.up()
                self.starting = None
                return
            except DatabaseUnavailable as exc:
                delay = backoff.next_delay()
                self.starting = f"waiting for the database ({exc})"
                logger.error(f"database unavailable at start, retrying in {delay:.0f} s: {exc}")
                deadline = self.clock() + delay
                while (left := deadline - self.clock()) > 0 and not any(s in STOP_SIGNALS for s in self.signals):
                    self.wait_for_events(min(left, TICK))  # signals and /healthz are served meanwhile
                    self.emit("tick")
                if any(s in STOP_SIGNALS for s in self.signals):
                    raise SystemExit(0)

    def close(self) -> None:
        try:
            if self.queue is not None:
                self.queue.stop_workers([self.id] + [c.worker_id for c in self.children.values()])
        except Exception as exc:
            logger.warning(f"could not mark this supervisor stopped: {exc}")
        if self.queue is not None:
            self.queue.close()
        logger.info(f"supervisor {self.id} stopped (exit {self.exit_code})")
        self.emit("stopped")

    # --- signals: recorded by the handler, dispatched by name in the loop ----------------------

    def install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            set_nonblocking(fd)
        signal.set_wakeup_fd(self._wake_w)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self.record_signal)

    def record_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def handle_signals(self) -> None:
        while self.signals:
            name = signal.Signals(self.signals.pop(0)).name
            getattr(self, f"handle_{name[3:].lower()}")()

    def handle_term(self, name: str = "SIGTERM") -> None:
        if self.stopping:
            logger.warning(f"{name} again: stopping now")
            self.stop_deadline = self.clock()
            return
        logger.info(f"{name}: stopping; running jobs get {self.settings.worker.graceful_timeout:g} s to finish")
        self.begin_stop()

    def handle_int(self) -> None:
        self.handle_term("SIGINT")

    def handle_quit(self) -> None:
        logger.warning("SIGQUIT: stopping now")
        self.begin_stop()
        self.stop_deadline = self.clock()

    def handle_hup(self) -> None:
        self.reload()

    def handle_ttin(self) -> None:
        self.concurrency += 1
        logger.info(f"SIGTTIN: concurrency now {self.concurrency}")

    def handle_ttou(self) -> None:
        self.concurrency = max(1, self.concurrency - 1)
        logger.info(f"SIGTTOU: concurrency now {self.concurrency}")

    def handle_chld(self) -> None:
        """Nothing to do here: reap_children() runs on every turn."""

    def begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = self.clock() + self.settings.worker.graceful_timeout
        for child in self.children.values():
            self.pool.retire_child(child)

    def reload(self) -> None:
        """SIGHUP: re-read config.toml; replace every child gracefully with one on the new settings."""
        new = reloaded_settings(self.settings)
        if new is None:
            return
        self.settings = self.pool.settings = new
        self.rescuer.stale_after = new.worker.stale_after
        self.concurrency = new.worker.concurrency  # the file wins over --concurrency and TTIN/TTOU
        logger.info(f"SIGHUP: configuration reloaded; replacing {len(self.children)} children; "
                    f"concurrency {self.concurrency}")
        for child in self.children.values():
            self.pool.retire_child(child)

    # --- the loop ----------------------------------------------------------------------------

    def loop_once(self) -> None:
        self.wait_for_events(self.next_timeout())
        self.handle_signals()
        self.pool.reap_children()
        self.pool.murder_children()
        if self.stopping:
            self.finish_stop()
        else:
            self.pool.manage_children(self.concurrency)
        self.housekeeping()

    def next_timeout(self) -> float:
        timeout, now = TICK, self.clock()
        limits = self.pool.limits
        for child in self.children.values():
            kill_in = watchdog.next_sigkill_in(child.watch, now, limits)
            if kill_in is not None:
                timeout = min(timeout, kill_in)
        if not self.stopping and self.pool.next_spawn_at > now:
            timeout = min(timeout, self.pool.next_spawn_at - now)
        elif not self.stopping and not self.children:
            timeout = 0.0  # start-up: fork the pool now, not a tick later
        return max(0.01, timeout)

    def wait_for_events(self, timeout: float) -> None:
        db_fd = self.queue.wakeup_fd() if self.queue is not None and self.settings.database.listen else None
        fds = [self._wake_r] + self.pool.fds()
        fds += [db_fd] if db_fd is not None else []
        fds += self.observer_fds()
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except (InterruptedError, ValueError, OSError):
            readable = []
        for fd in readable:
            if fd == self._wake_r:
                drain(fd)
            elif fd == db_fd:
                self.read_notifications()
        for hook in self.hooks:
            for fd in set(hook.fds()) & set(readable):
                hook.on_readable(fd)
        for child in list(self.children.values()):
            if child.ctl.fd in readable or child.log.fd in readable:
                self.pool.read_child(child)

    def observer_fds(self) -> list[int]:
        return [fd for hook in self.hooks for fd in hook.fds()]

    def private_fds(self) -> list[int]:
        """What a new child closes: the wake-up pipe and the observers' sockets are the supervisor's alone."""
        return [self._wake_r, self._wake_w] + self.observer_fds()

    def read_notifications(self) -> None:
        try:
            notes = self.queue.notifications()
        except DatabaseUnavailable as exc:
            self.breaker.down(exc)
            return
        for channel, payload in notes:
            if channel == db.CANCEL_CHANNEL:
                self.pool.cancel_running(payload)

    def emit(self, name: str, **data: Any) -> None:
        for hook in self.hooks:
            try:
                hook.on_event(name, supervisor=self, **data)
            except Exception:
                logger.exception(f"observer failed on {name}")

    # --- chores --------------------------------------------------------------------------------

    def housekeeping(self) -> None:
        now, w, t = self.clock(), self.settings.worker, self.timers
        if self.settler.pending:
            self.settler.retry_pending()
        if now >= t.touch:
            t.touch = now + min(5.0, w.heartbeat_interval / 2)
            self.touch_workers()
        if self.rescuer.due():
            for job in self.breaker.call(lambda: self.rescuer.run(self.queue)) or []:
                self.emit("job_rescued", job=job)
        if now >= t.report:
            if t.report:
                self.pool.memory_report()
            t.report = now + w.report_interval
        if self.drain and not self.stopping and now >= t.drain:
            t.drain = now + 0.5
            self.check_drained()
        self.emit("tick")

    def touch_workers(self) -> None:
        own = {"id": self.id, "rss": rss(self.pid), "current_job": None, "jobs_done": 0}
        rows = [own] + self.pool.presence()
        self.breaker.call(lambda: self.queue.touch_workers(rows))

    def check_drained(self) -> None:
        summary = self.breaker.call(self.queue.summary)
        if summary is None:
            return
        busy = any(c.state == "busy" for c in self.children.values())
        if summary["ready"] + summary["scheduled"] + summary["running"] == 0 and not busy and not self.settler.pending:
            logger.info("drained: no queued or running job is left")
            self.begin_stop()

    # --- stopping --------------------------------------------------------------------------------

    def finish_stop(self) -> None:
        """After begin_stop: wait for children; past the deadline, release their jobs and kill them."""
        if not self.children:
            self.settler.retry_pending()
            if self.settler.pending and self.clock() < self.stop_deadline + PENDING_AT_EXIT:
                return  # the database may be back in a moment; what is left is rescued later anyway
            if self.settler.pending:
                logger.warning(f"exiting with {len(self.settler.pending)} job outcome(s) unwritten; those jobs "
                               "will be rescued by any supervisor after worker.stale_after")
            self.exit_code = 0
            return
        if self.clock() < self.stop_deadline:
            return
        for child in self.children.values():
            if child.watch.kill is None:
                self.pool.kill_child(child, "shutdown", None, "the service stopped before the job finished",
                                release=True)


def reloaded_settings(old):
    """The settings config.toml gives now, with logging switched over; None (and why, logged) to keep the old."""
    try:
        new = load_settings(old.config_path, base_dir=old.base_dir)
    except ConfigError as exc:
        logger.error(f"SIGHUP: configuration not reloaded, keeping the old one: {exc}")
        return None
    if new.logging != old.logging:
        try:
            logs.setup_service_logging(new, role="supervisor")
        except ConfigError as exc:  # e.g. a log file it cannot write: the old sinks come back
            logs.setup_service_logging(old, role="supervisor")
            logger.error(f"SIGHUP: configuration not reloaded, keeping the old one: {exc}")
            return None
    if new.database.dsn != old.database.dsn or new.queue != old.queue or new.api.base_url != old.api.base_url:
        logger.warning("SIGHUP: the database or queue settings changed; they take effect at the next restart")
    return new


def sweep_old_workdirs(settings) -> None:
    """At start: remove work directories a crashed process left (never younger than a job may live,
    so that a live job's directory on another supervisor sharing temp_dir is never swept)."""
    older_than = max(86400.0, 2 * settings.worker.max_processing_time)
    try:
        removed = sweep_workdirs(settings.storage.temp_dir, older_than=older_than)
    except OSError as exc:
        logger.warning(f"temp sweep failed: {exc}")
        return
    if removed:
        logger.info(f"removed {removed} stale work directories from {settings.storage.temp_dir}")


def run_service(settings, concurrency: int | None = None, drain: bool = False) -> int:
    """`geoworker run`: logging, then the supervisor in the foreground, with its metrics observer."""
    from geoworker import metrics  # late: prometheus_client, only for the service

    logs.setup_service_logging(settings, role="supervisor")
    supervisor = Supervisor(settings, concurrency=concurrency, drain=drain)
    supervisor.hooks.append(metrics.for_supervisor(supervisor))
    return supervisor.run()
