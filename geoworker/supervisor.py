"""The supervisor: spawn, watch, kill, reap, requeue, respawn (gunicorn's arbiter is the model).

One loop, at most a second per turn: wait on signals, the children's pipes and the
database's notifications; handle recorded signals; reap dead children; kill children
that overrun their deadline, their memory or go silent; keep the pool at size; and do
the periodic chores (worker rows, stale-job rescue, memory report, drain check).

Signal handlers only record the signal. The job of a child the supervisor kills is
settled in the database *before* the signal is sent, so a child finishing at the last
moment cannot overwrite the outcome: its complete is refused (exactly-once).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import time
from dataclasses import dataclass
from typing import Any

import psutil
from loguru import logger

from geoworker import db, logs
from geoworker.backoff import Backoff, exponential
from geoworker.child import CHILD_ABORTED, CHILD_BOOT_ERROR, GRACEFUL_SIGNAL, Child
from geoworker.config import load_settings, mask_dsn, strip_url_secrets
from geoworker.errors import ConfigError, DatabaseUnavailable, JobNotFound, LockLost
from geoworker.jobs import JobQueue
from geoworker.remote import make_queue

TICK = 1.0  # the longest the loop sleeps
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for an offender
NEAR_LIMIT = 0.9  # warn when a child's RSS passes this share of max_child_rss_mb
MiB = 1024 * 1024
# the loop must never hang on a stalled database: its statements are tiny, so cancel them early,
# and after a failure leave the database alone for a while (the watchdog keeps running meanwhile)
DB_STATEMENT_TIMEOUT = 5.0
DB_CLIENT_TIMEOUT = 10.0  # ... and give up on a server that accepts the bytes but never answers
DB_PAUSE_FIRST, DB_PAUSE_MAX = 1.0, 30.0
PENDING_AT_EXIT = 10.0  # seconds a stopping supervisor keeps trying to write what it owes the database


@dataclass
class ChildHandle:
    """What the supervisor knows of one child."""

    pid: int
    worker_id: str
    ctl_fd: int
    log_fd: int
    spawned: float
    ctl_buf: bytes = b""
    log_buf: bytes = b""
    state: str = "booting"  # booting, idle, busy
    job: dict | None = None  # {id, task, attempt, max_attempts, timeout, started}
    last_ping: float = 0.0
    retiring: bool = False
    registered: bool = False
    kill_reason: str | None = None
    term_sent: float | None = None
    killed: bool = False
    jobs_done: int = 0
    rss: int = 0
    rss_due: float = 0.0  # when murder_children next samples rss
    warned_memory: bool = False
    boot_error: str | None = None


@dataclass
class PendingOutcome:
    """A job outcome to write once the database answers again."""

    job_id: str
    attempts: int
    holder: str
    code: str | None
    message: str
    reason: str
    release: bool = False
    delay: float = 0.0  # the job is claimable again no sooner than this
    tries: int = 0


@dataclass
class Timers:
    touch: float = 0.0
    reap_stale: float = 0.0
    report: float = 0.0
    drain: float = 0.0
    forget: float = 0.0


class Supervisor:
    """The parent process. Args: settings; concurrency (overrides worker.concurrency); drain (exit when idle)."""

    def __init__(self, settings, concurrency: int | None = None, drain: bool = False):
        self.settings = settings
        self.concurrency = concurrency or settings.worker.concurrency
        self.drain = drain
        self.children: dict[int, ChildHandle] = {}
        self.signals: list[int] = []
        self.pending: list[PendingOutcome] = []
        self.timers = Timers()
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code: int | None = None
        self.boot_failures = 0
        self.next_spawn_at = 0.0
        self.db_ok = False
        self._db_warned = False
        self.db_pause_until = 0.0
        self._db_backoff = Backoff(DB_PAUSE_FIRST, DB_PAUSE_MAX)
        self.dsn = ""
        self.queue: JobQueue | None = None
        self.pid = os.getpid()
        self.tag = os.urandom(3).hex()
        self.id = f"{db.hostname()}:{self.pid}:{self.tag}"
        self.child_prefix = f"{db.hostname()}:{self.tag}:"
        self._wake_r = self._wake_w = -1
        self.hooks: list[Any] = []  # observers (metrics): on_event(name, **data)

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
        db.install_client_timeout(DB_CLIENT_TIMEOUT)
        remote = self.settings.queue.mode == "http"
        # http mode never resolves the DSN: no embedded server starts, nothing touches the database
        self.dsn = "" if remote else db.resolve_dsn(self.settings)
        self.queue = self._new_queue()
        self.connect_until_ready()
        self.sweep_workdirs()
        where = f"API {strip_url_secrets(self.settings.api.base_url)}" if remote else f"database {mask_dsn(self.dsn)}"
        logger.info(f"supervisor {self.id} started: {self.concurrency} children, {where}, "
                    f"config {self.settings.config_path or '(defaults)'}"
                    + (", draining" if self.drain else ""))
        self.emit("started")

    def _new_queue(self) -> JobQueue:
        # JobQueue on the database, or HttpJobQueue on the API (queue.mode = "http")
        return make_queue(self.settings, self.id, f"geoworker-supervisor-{self.pid}", dsn=self.dsn,
                          statement_timeout=DB_STATEMENT_TIMEOUT)

    def connect_until_ready(self) -> None:
        """Wait for the database (backing off, logging why) and check the schema once."""
        backoff = Backoff(first=1.0, cap=30.0)
        while True:
            try:
                if self.settings.queue.mode == "http":
                    self.queue.check()  # the API owns the schema; a refused token stops us (ConfigError)
                else:
                    if not self.settings.database.dsn:
                        db.migrate(self.queue.conn)  # the embedded server is ours to keep current
                    db.require_schema(self.queue.conn)
                self.queue.register_worker(self.id, "supervisor", self.pid)
                if self.settings.database.listen:
                    self.queue.listen(db.CANCEL_CHANNEL)
                self.db_ok = True
                return
            except DatabaseUnavailable as exc:
                delay = backoff.next_delay()
                logger.error(f"database unavailable at start, retrying in {delay:.0f} s: {exc}")
                self._sleep_handling_signals(delay)
                if self.signals and any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) for s in self.signals):
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

    # --- signals: record only -----------------------------------------------------------------

    def install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            _set_nonblocking(fd)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD,
                    signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, self._record_signal)

    def _record_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    logger.warning(f"{signal.Signals(sig).name} again: stopping now")
                    self.stop_deadline = time.monotonic()
                else:
                    logger.info(f"{signal.Signals(sig).name}: stopping; running jobs get "
                                f"{self.settings.worker.graceful_timeout:g} s to finish")
                    self.begin_stop()
            elif sig == signal.SIGQUIT:
                logger.warning("SIGQUIT: stopping now")
                self.begin_stop()
                self.stop_deadline = time.monotonic()
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGTTIN:
                self.concurrency += 1
                logger.info(f"SIGTTIN: concurrency now {self.concurrency}")
            elif sig == signal.SIGTTOU:
                self.concurrency = max(1, self.concurrency - 1)
                logger.info(f"SIGTTOU: concurrency now {self.concurrency}")

    def begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.settings.worker.graceful_timeout
        for child in self.children.values():
            self.retire_child(child)

    def reload(self) -> None:
        """SIGHUP: re-read config.toml; replace every child gracefully with one on the new settings."""
        try:
            new = load_settings(self.settings.config_path, base_dir=self.settings.base_dir)
        except ConfigError as exc:
            logger.error(f"SIGHUP: configuration not reloaded, keeping the old one: {exc}")
            return
        old = self.settings
        if new.logging != old.logging:
            try:
                logs.setup_service_logging(new, role="supervisor")
            except ConfigError as exc:  # e.g. a log file it cannot write: the old sinks come back
                logs.setup_service_logging(old, role="supervisor")
                logger.error(f"SIGHUP: configuration not reloaded, keeping the old one: {exc}")
                return
        if new.database.dsn != old.database.dsn or new.queue != old.queue or new.api.base_url != old.api.base_url:
            logger.warning("SIGHUP: the database or queue settings changed; they take effect at the next restart")
        self.settings = new
        self.concurrency = new.worker.concurrency  # the file wins over --concurrency and TTIN/TTOU
        logger.info(f"SIGHUP: configuration reloaded; replacing {len(self.children)} children; "
                    f"concurrency {self.concurrency}")
        for child in self.children.values():
            self.retire_child(child)

    # --- the loop ----------------------------------------------------------------------------

    def loop_once(self) -> None:
        self.wait_for_events(self._next_timeout())
        self.handle_signals()
        self.reap_children()
        self.murder_children()
        if self.stopping:
            self.finish_stop()
        else:
            self.manage_children()
        self.housekeeping()

    def _next_timeout(self) -> float:
        timeout = TICK
        now = time.monotonic()
        for child in self.children.values():
            if child.term_sent is not None and not child.killed:
                timeout = min(timeout, max(0.0, child.term_sent + KILL_GRACE - now))
        if not self.stopping and self.next_spawn_at > now:
            timeout = min(timeout, self.next_spawn_at - now)
        elif not self.stopping and not self.children:
            timeout = 0.0  # start-up: fork the pool now, not a tick later
        return max(0.01, timeout)

    def wait_for_events(self, timeout: float) -> None:
        fds = [self._wake_r]
        for child in self.children.values():
            fds += [child.ctl_fd, child.log_fd]
        db_fd = None
        if self.queue is not None and self.queue.connected and self.settings.database.listen:
            try:
                db_fd = self.queue.fileno()
                fds.append(db_fd)
            except Exception:
                db_fd = None
        fds.extend(self.extra_fds())
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except (InterruptedError, ValueError, OSError):
            readable = []
        for fd in readable:
            if fd == self._wake_r:
                _drain_fd(fd)
            elif db_fd is not None and fd == db_fd:
                self.read_notifications()
            else:
                self.on_readable(fd)
        for child in list(self.children.values()):
            if child.ctl_fd in readable:
                self.read_ctl(child)
            if child.log_fd in readable:
                self.read_log(child)

    def extra_fds(self) -> list[int]:
        """File descriptors observers (the metrics server) want in the wait."""
        fds = []
        for hook in self.hooks:
            fds.extend(getattr(hook, "fds", lambda: [])())
        return fds

    def on_readable(self, fd: int) -> None:
        for hook in self.hooks:
            if fd in getattr(hook, "fds", lambda: [])():
                hook.on_readable(fd)

    def emit(self, name: str, **data: Any) -> None:
        for hook in self.hooks:
            try:
                hook.on_event(name, supervisor=self, **data)
            except Exception:
                logger.exception(f"observer failed on {name}")

    # --- children: messages ------------------------------------------------------------------

    def read_ctl(self, child: ChildHandle) -> bool:
        """Read what the child said; False at end of file."""
        data, alive = _read_available(child.ctl_fd)
        child.ctl_buf += data
        *lines, child.ctl_buf = child.ctl_buf.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            self.on_message(child, msg)
        return alive

    def read_log(self, child: ChildHandle) -> bool:
        data, alive = _read_available(child.log_fd)
        child.log_buf += data
        *lines, child.log_buf = child.log_buf.split(b"\n")
        if (not alive or len(child.log_buf) > logs.MAX_LINE_BYTES) and child.log_buf:
            lines.append(child.log_buf)
            child.log_buf = b""
        context = {k: child.job.get(v) for k, v in (("job", "id"), ("attempt", "attempt"), ("task", "task"))} \
            if child.job else None
        for line in lines:
            logs.emit_child_line(line.decode("utf-8", "replace"), child.pid, context)
        return alive

    def on_message(self, child: ChildHandle, msg: dict) -> None:
        now = time.monotonic()
        child.last_ping = now
        event = msg.get("event")
        if event == "ready":
            child.state = "idle"
            self.boot_failures = 0
        elif event == "busy":
            child.state = "busy"
            child.job = {"id": msg.get("job"), "task": msg.get("task"), "attempt": msg.get("attempt"),
                         "timeout": msg.get("timeout"), "started": now}
            self.emit("job_started", child=child, job=msg)
        elif event == "idle":
            child.state = "idle"
            child.jobs_done = msg.get("jobs_done", child.jobs_done + 1)
            finished = child.job
            child.job = None
            self.emit("job_finished", child=child, job=msg, started=finished)
        elif event == "lost":
            if child.job and child.job.get("id") == msg.get("job"):
                self.kill_child(child, "lost", settle=False)
        elif event == "boot_error":
            child.boot_error = msg.get("error")

    def read_notifications(self) -> None:
        try:
            notes = self.queue.notifications()
        except DatabaseUnavailable as exc:
            self._db_down(exc)
            return
        for channel, payload in notes:
            if channel == db.CANCEL_CHANNEL:
                self.cancel_running(payload)

    def cancel_running(self, job_id: str) -> None:
        for child in self.children.values():
            if child.job and child.job.get("id") == job_id:
                logger.info(f"job {job_id} was cancelled: stopping child {child.pid}")
                self.kill_child(child, "cancelled", settle=False)

    # --- children: spawn, retire, kill, reap -------------------------------------------------------

    def manage_children(self) -> None:
        """Keep the pool at `concurrency` children, never faster than the boot backoff allows."""
        active = [c for c in self.children.values() if not c.retiring and c.kill_reason is None]
        missing = self.concurrency - len(active)
        if missing < 0:
            # fewer wanted (SIGTTOU or a reload): retire idle ones first
            for child in sorted(active, key=lambda c: c.state == "busy")[: -missing]:
                self.retire_child(child)
            return
        for _ in range(missing):
            if time.monotonic() < self.next_spawn_at:
                return
            self.spawn_child()

    def _queue_fds(self) -> list[int]:
        """The supervisor's own database socket: a child closes it, so it can never touch it."""
        try:
            return [self.queue.fileno()] if self.queue is not None and self.queue.connected else []
        except Exception:
            return []

    def spawn_child(self) -> ChildHandle | None:
        ctl_r, ctl_w = os.pipe()
        log_r, log_w = os.pipe()
        inherited = [ctl_r, log_r, self._wake_r, self._wake_w] + self._queue_fds()
        for other in self.children.values():
            inherited += [other.ctl_fd, other.log_fd]
        inherited += self.extra_fds()
        child = Child(self.settings, self.dsn, self.child_prefix, parent_pid=self.pid, parent_id=self.id,
                      ctl_fd=ctl_w, log_fd=log_w, close_fds=inherited)
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (ctl_r, ctl_w, log_r, log_w):
                os.close(fd)
            logger.error(f"cannot fork a child: {exc}")
            self.next_spawn_at = time.monotonic() + 5
            return None
        if pid == 0:  # pragma: no cover - the child's side never returns
            child.run()
        os.close(ctl_w)
        os.close(log_w)
        for fd in (ctl_r, log_r):
            _set_nonblocking(fd)
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
        now = time.monotonic()
        handle = ChildHandle(pid=pid, worker_id=f"{self.child_prefix}{pid}", ctl_fd=ctl_r, log_fd=log_r,
                             spawned=now, last_ping=now)
        self.children[pid] = handle
        self._register(handle)
        logger.debug(f"spawned child {pid}")
        self.emit("child_spawned", child=handle)
        return handle

    def _register(self, child: ChildHandle) -> None:
        if self._db_paused():
            return  # touch_workers registers it later
        try:
            self.queue.register_worker(child.worker_id, "child", child.pid, parent_id=self.id)
            child.registered = True
        except DatabaseUnavailable as exc:
            self._db_down(exc)

    def retire_child(self, child: ChildHandle) -> None:
        """Ask a child to finish its current job and exit (it is replaced if the pool needs it)."""
        if child.retiring:
            return
        child.retiring = True
        _signal(child.pid, GRACEFUL_SIGNAL)

    def kill_child(self, child: ChildHandle, reason: str, code: str | None = None, message: str = "",
                   settle: bool = True, release: bool = False) -> None:
        """Stop an offender: settle its job in the database first, then SIGTERM (SIGKILL after a grace)."""
        if child.kill_reason is not None:
            return
        child.kill_reason = reason
        child.term_sent = time.monotonic()
        # the signal goes first, so that nothing the database does (or fails to do) can spare an
        # offender; a memory hog gets SIGKILL at once, since the memory must come back now
        if reason == "memory_limit":
            _signal(child.pid, signal.SIGKILL)
            child.killed = True
        else:
            _signal(child.pid, signal.SIGTERM)
        job = child.job
        log = logger.bind(job=job["id"], attempt=job.get("attempt"), task=job.get("task")) if job else logger
        if job and settle:
            action = "released" if release else f"killed ({reason})"
            log.warning(f"child {child.pid} {action}: job {job['id']}: {message or reason}")
            # claimable again only once the child is surely dead (SIGKILL after KILL_GRACE):
            # the same job must never run twice at once
            self.settle(PendingOutcome(job["id"], int(job.get("attempt") or 1), child.worker_id, code,
                                       message or reason, reason, release=release, delay=KILL_GRACE + 1))
        elif job:
            log.info(f"stopping child {child.pid}: job {job['id']} {reason}")
        else:
            logger.warning(f"child {child.pid} killed ({reason}): {message or 'idle'}")
        self.emit("child_killed", child=child, reason=reason)

    def murder_children(self) -> None:
        """The watchdog: deadline, memory and silence for each child; SIGKILL after the grace."""
        now = time.monotonic()
        w = self.settings.worker
        limit = w.max_child_rss_mb * MiB
        for child in list(self.children.values()):
            if child.term_sent is not None:
                if not child.killed and now - child.term_sent >= KILL_GRACE:
                    logger.warning(f"child {child.pid} ignored SIGTERM for {KILL_GRACE:g} s: SIGKILL")
                    _signal(child.pid, signal.SIGKILL)
                    child.killed = True
                continue
            if now >= child.rss_due:  # psutil reads /proc (~0.1 ms): twice a tick, not on every wake-up
                child.rss, child.rss_due = _rss(child.pid), now + TICK / 2
            job = child.job
            # before any kill, even when one tick took the child from below 90 % to over the limit
            if child.rss > NEAR_LIMIT * limit and not child.warned_memory:
                child.warned_memory = True
                logger.warning(f"child {child.pid} is near its memory limit: {child.rss / MiB:.0f} MiB of "
                               f"{w.max_child_rss_mb} MiB" + (f" (job {job['id']})" if job else ""))
            if child.rss > limit:
                self.kill_child(child, "memory_limit", "memory_limit",
                                f"the child used {child.rss / MiB:.0f} MiB, more than worker.max_child_rss_mb "
                                f"({w.max_child_rss_mb} MiB)")
                self.memory_report(level="WARNING")
                continue
            if job is not None:
                allowed = job.get("timeout") or w.max_processing_time
                if now - job["started"] > allowed:
                    source = "its timeout param" if job.get("timeout") else "worker.max_processing_time"
                    self.kill_child(child, "timeout", "timeout", f"the job ran longer than {allowed:g} s ({source})")
                    continue
            silent = now - child.last_ping
            if silent > self.heartbeat_timeout and child.state != "booting":
                self.kill_child(child, "unresponsive", "timeout",
                                f"the child stopped responding (silent for {silent:.0f} s)")
            elif child.state == "booting" and silent > max(30.0, self.settings.database.connect_timeout * 2):
                self.kill_child(child, "boot_timeout", None, f"the child did not start within {silent:.0f} s")

    @property
    def heartbeat_timeout(self) -> float:
        return self.settings.worker.stale_after

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self.on_child_exit(child, status)

    def on_child_exit(self, child: ChildHandle, status: int) -> None:
        # what the child said last (its "idle", its last log lines) comes before its death
        while self.read_ctl(child):
            pass
        while self.read_log(child):
            pass
        for fd in (child.ctl_fd, child.log_fd):
            os.close(fd)
        how = _describe_status(status)
        code = os.waitstatus_to_exitcode(status)
        if child.job and child.kill_reason is None:
            # died on its own mid-job: a segfault, the OOM killer, os._exit
            logger.bind(job=child.job["id"], attempt=child.job.get("attempt"), task=child.job.get("task")).error(
                f"child {child.pid} died during job {child.job['id']}: {how}")
            self.settle(PendingOutcome(child.job["id"], int(child.job.get("attempt") or 1), child.worker_id,
                                       "crashed", f"the worker process died ({how})", "crashed"))
            self.emit("child_killed", child=child, reason="crashed")
        elif code == CHILD_BOOT_ERROR or (child.state == "booting" and child.kill_reason is None):
            self.boot_failures += 1
            delay = exponential(0.5, 60.0, self.boot_failures)
            self.next_spawn_at = time.monotonic() + delay
            logger.error(f"child {child.pid} could not start ({child.boot_error or how}); "
                         f"next attempt in {delay:.1f} s")
        elif child.kill_reason is None and not child.retiring and code not in (0, CHILD_ABORTED):
            logger.warning(f"child {child.pid} exited: {how}")
        else:
            logger.debug(f"child {child.pid} exited: {how}")
        self._settle_held(child, how)
        self._cleanup_child(child)
        self.emit("child_exited", child=child, status=how)

    def _settle_held(self, child: ChildHandle, how: str) -> None:
        """Settle what the database says a dead child still holds, beyond the job we knew of.

        A child claims its next job in the statement that completes the last one, and tells us
        a moment later: a kill or a crash in between leaves a job we never heard of.
        """
        held_job = getattr(self.queue, "held_job", None)
        job = self._db_call(lambda: held_job(child.worker_id)) if held_job else None
        if job is None:
            return
        if child.kill_reason is None:
            self.settle(PendingOutcome(job.id, job.attempts, child.worker_id, "crashed",
                                       f"the worker process died ({how})", "crashed"))
        else:  # stopped for another job's sake: this one did nothing wrong
            self.settle(PendingOutcome(job.id, job.attempts, child.worker_id, None,
                                       f"its worker was stopped ({child.kill_reason})", "shutdown", release=True))

    def _cleanup_child(self, child: ChildHandle) -> None:
        from geoworker.storage.workdir import remove_child_workdirs

        try:
            remove_child_workdirs(self.settings.storage.temp_dir, child.pid)  # it logs what it removed
        except OSError as exc:
            logger.warning(f"could not remove child {child.pid}'s work directory: {exc}")
        try:
            self.queue.stop_workers([child.worker_id])
        except DatabaseUnavailable as exc:
            self._db_down(exc)

    def sweep_workdirs(self) -> None:
        from geoworker.storage.workdir import sweep_workdirs

        try:
            # never younger than a job may live, so a live job's directory on another
            # supervisor sharing temp_dir is never swept
            older_than = max(86400.0, 2 * self.settings.worker.max_processing_time)
            removed = sweep_workdirs(self.settings.storage.temp_dir, older_than=older_than)
        except OSError as exc:
            logger.warning(f"temp sweep failed: {exc}")
            return
        if removed:
            logger.info(f"removed {removed} stale work directories from {self.settings.storage.temp_dir}")

    # --- settling jobs (retried while the database is away) ------------------------------------

    def settle(self, outcome: PendingOutcome) -> None:
        if not self._write_outcome(outcome):
            self.pending.append(outcome)

    def _write_outcome(self, o: PendingOutcome) -> bool:
        """True when written (or moot); False to try again later."""
        if self._db_paused():
            return False
        o.tries += 1
        try:
            if o.release:
                self.queue.release(o.job_id, o.holder, f"released: {o.message}; this attempt does not count",
                                   delay=o.delay)
            else:
                job = self.queue.end_attempt(o.job_id, o.attempts, holder=o.holder, code=o.code or "crashed",
                                             message=o.message, reason=o.reason, min_delay=o.delay)
                self.emit("job_settled", job=job, reason=o.reason)
            self._db_up()
            return True
        except (LockLost, JobNotFound) as exc:
            logger.info(f"job {o.job_id}: nothing to settle ({exc})")
            return True
        except DatabaseUnavailable as exc:
            self._db_down(exc)
            return False
        except Exception:
            # anything else (a refused API call, a read-only replica after a failover) must not
            # stop the loop either: keep the outcome and try again later
            logger.exception(f"job {o.job_id}: settling failed; will retry")
            return False

    def retry_pending(self) -> None:
        pending, self.pending = self.pending, []
        for outcome in pending:
            if not self._write_outcome(outcome):
                self.pending.append(outcome)

    # --- chores --------------------------------------------------------------------------------

    def housekeeping(self) -> None:
        now = time.monotonic()
        w = self.settings.worker
        t = self.timers
        if self.pending:
            self.retry_pending()
        if now >= t.touch:
            t.touch = now + min(5.0, w.heartbeat_interval / 2)
            self.touch_workers()
        if now >= t.reap_stale:
            t.reap_stale = now + max(1.0, min(10.0, w.stale_after / 4))
            self.requeue_stale()
        if now >= t.report:
            if t.report:
                self.memory_report()
            t.report = now + w.report_interval
        if self.drain and not self.stopping and now >= t.drain:
            t.drain = now + 0.5
            self.check_drained()
        if now >= t.forget:
            t.forget = now + 3600
            self._db_call(lambda: self.queue.forget_workers(older_than=7 * 86400))
        self.emit("tick")

    def _db_call(self, fn) -> Any:
        """Run a database chore; None (skipped or failed) while the database is away."""
        if self._db_paused():
            return None
        try:
            result = fn()
        except DatabaseUnavailable as exc:
            self._db_down(exc)
            return None
        self._db_up()
        return result

    def _db_paused(self) -> bool:
        return time.monotonic() < self.db_pause_until

    def _db_up(self) -> None:
        if not self.db_ok:
            logger.info("database reachable again")
            self._db_warned = False
        self.db_ok = True
        self._db_backoff.reset()

    def _db_down(self, exc: Exception) -> None:
        """Leave the database alone for a while: a stalled server must not stall the watchdog too."""
        self.db_ok = False
        self.db_pause_until = time.monotonic() + self._db_backoff.next_delay()
        if not self._db_warned:
            logger.error(f"database unavailable, will keep retrying: {exc}")
            self._db_warned = True

    def touch_workers(self) -> None:
        rows = [{"id": self.id, "rss": _rss(self.pid), "current_job": None, "jobs_done": 0}]
        for child in self.children.values():
            if not child.registered:
                self._register(child)
            rows.append({"id": child.worker_id, "rss": child.rss or _rss(child.pid),
                         "current_job": child.job["id"] if child.job else None, "jobs_done": child.jobs_done})
        self._db_call(lambda: self.queue.touch_workers(rows))

    def requeue_stale(self) -> None:
        rescued = self._db_call(lambda: self.queue.requeue_stale(self.settings.worker.stale_after)) or []
        for job in rescued:
            logger.warning(f"rescued job {job.id} from a worker that is gone: now {job.status}"
                           + (f" ({job.last_error})" if job.last_error else ""))
            self.emit("job_rescued", job=job)

    def check_drained(self) -> None:
        summary = self._db_call(self.queue.summary)
        if summary is None:
            return
        busy = any(c.state == "busy" for c in self.children.values())
        if summary["ready"] + summary["scheduled"] + summary["running"] == 0 and not busy and not self.pending:
            logger.info("drained: no queued or running job is left")
            self.begin_stop()

    def memory_report(self, level: str = "INFO") -> None:
        """One line: each child's pid, job and RSS, the pool total, and the system's memory.

        The same numbers (bytes) are bound as `memory`: with logging.json the line is a structured event.
        """
        own = _rss(self.pid)
        parts = [f"supervisor pid {self.pid} rss {own / MiB:.1f} MiB"]
        children, total = [], 0
        for child in sorted(self.children.values(), key=lambda c: c.pid):
            rss = _rss(child.pid)
            total += rss
            job_id = child.job["id"] if child.job else None
            parts.append(f"child pid {child.pid} {f'job {job_id}' if job_id else child.state} rss {rss / MiB:.1f} MiB")
            children.append({"pid": child.pid, "state": child.state, "job": job_id, "rss": rss})
        vm = psutil.virtual_memory()
        limit_mb = self.settings.worker.max_child_rss_mb
        parts.append(f"pool total {total / MiB:.1f} MiB (limit {limit_mb} MiB per child)")
        parts.append(f"system available {vm.available / MiB / 1024:.2f} GiB of {vm.total / MiB / 1024:.2f} GiB "
                     f"({vm.percent:.1f}% used)")
        memory = {"supervisor": {"pid": self.pid, "rss": own}, "children": children, "pool_total": total,
                  "limit_per_child": limit_mb * MiB,
                  "system": {"available": vm.available, "total": vm.total, "percent": vm.percent}}
        logger.bind(memory=memory).log(level, "memory report: " + " | ".join(parts))

    # --- stopping --------------------------------------------------------------------------------

    def finish_stop(self) -> None:
        """After begin_stop: wait for children; past the deadline, release their jobs and kill them."""
        if not self.children:
            self.retry_pending()
            if self.pending and time.monotonic() < self.stop_deadline + PENDING_AT_EXIT:
                return  # the database may be back in a moment; what is left is rescued later anyway
            if self.pending:
                logger.warning(f"exiting with {len(self.pending)} job outcome(s) unwritten; those jobs "
                               "will be rescued by any supervisor after worker.stale_after")
            self.exit_code = 0
            return
        if time.monotonic() < self.stop_deadline:
            return
        for child in self.children.values():
            if child.kill_reason is None:
                self.kill_child(child, "shutdown", None, "the service stopped before the job finished",
                                release=True)

    def _sleep_handling_signals(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                select.select([self._wake_r], [], [], min(left, TICK))
            except InterruptedError:
                pass
            _drain_fd(self._wake_r)
            if any(s in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) for s in self.signals):
                return


# --- small helpers -----------------------------------------------------------------------------


def _set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _read_available(fd: int) -> tuple[bytes, bool]:
    """Everything readable now, and whether the writer may still write (False at EOF)."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return b"".join(chunks), True
        except OSError as exc:
            if exc.errno == errno.EBADF:
                return b"".join(chunks), False
            raise
        if not chunk:
            return b"".join(chunks), False
        chunks.append(chunk)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    return f"exit code {os.WEXITSTATUS(status)}"


def run_service(settings, concurrency: int | None = None, drain: bool = False) -> int:
    """`geoworker run`: logging, then the supervisor in the foreground."""
    logs.setup_service_logging(settings, role="supervisor")
    supervisor = Supervisor(settings, concurrency=concurrency, drain=drain)
    attach_observers(supervisor)
    return supervisor.run()


def attach_observers(supervisor: Supervisor) -> None:
    """Metrics and the like, when they are built and enabled."""
    import importlib

    try:
        metrics = importlib.import_module("geoworker.metrics")
    except ModuleNotFoundError as exc:
        if exc.name != "geoworker.metrics":
            raise
        return
    hook = metrics.for_supervisor(supervisor)
    if hook is not None:
        supervisor.hooks.append(hook)
