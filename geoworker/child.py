"""One worker process: connect after fork, claim, heartbeat, run, finish, repeat.

The child talks to its supervisor over two pipes: `ctl` (one JSON message per line:
ready, busy, idle, ping, lost, fenced, boot_error) and its fd 2, where its log records and any
C library's stderr go (see logs.py). It owns nothing the supervisor opened: its own
database connection is made here, after fork.

Fencing: a child that cannot get a heartbeat confirmed for (about) worker.stale_after stops
working on its job by itself before another host may rescue it, and stores nothing for it
afterwards (lease.py says when, keeper.py keeps the lease and heartbeats it; `_check_lease`
and the ping thread here stop the job). It tells its supervisor ("fenced"), which settles the
attempt once the database answers, and exits.

Signals, as the supervisor uses them:
  SIGUSR1  finish the current job, then exit (graceful stop, reload, recycle)
  SIGTERM  stop now: the job's outcome was already written by the supervisor
  SIGINT   ignored: Ctrl-C reaches the whole process group; the supervisor decides
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from loguru import logger

from geoworker import db, logs, tasks
from geoworker.backoff import Backoff
from geoworker.db import STATEMENT_TIMEOUT
from geoworker.errors import DatabaseUnavailable, GeoworkerError, LockLost, describe
from geoworker.jobs import Job
from geoworker.keeper import PING_INTERVAL, JobKeeper
from geoworker.lease import lease_clock
from geoworker.queue import Queue, open_queue
from geoworker.storage import open_backend
from geoworker.storage.workdir import job_workdirs

CHILD_OK = 0
CHILD_CRASHED = 1
CHILD_BOOT_ERROR = 3
CHILD_ABORTED = 4
GRACEFUL_SIGNAL = signal.SIGUSR1
PR_SET_PDEATHSIG = 1
FENCE_CHECK = 0.25  # seconds between two looks at the job's lease (lease.MIN_MARGIN is twice this)


class _WaitInterrupted(BaseException):
    """SIGUSR1 arrived while the child was only waiting for work: stop waiting at once."""


class Shutdown(BaseException):
    """The supervisor asked this child to stop now.

    A BaseException, so that `except Exception` in task code cannot swallow it.
    """


class Fenced(Shutdown):
    """The job's lease ran out (no heartbeat confirmed for about stale_after): stop working on it now."""


class Child:
    """The state of one child. Built in the supervisor before fork; touches nothing process-wide there."""

    def __init__(self, settings, dsn: str, worker_id_prefix: str, parent_pid: int, parent_id: str,
                 ctl_fd: int, log_fd: int, close_fds: list[int]):
        self.settings = settings
        self.dsn = dsn
        self.prefix = worker_id_prefix
        self.parent_pid = parent_pid
        self.parent_id = parent_id
        self.ctl_fd = ctl_fd
        self.log_fd = log_fd
        self.close_fds = close_fds
        self.worker_id = ""
        self.queue: Queue | None = None
        self.stopping = False
        self.jobs_done = 0
        self._ctl_lock = threading.Lock()
        self._storage = None
        self.keeper = JobKeeper(settings, self.send)  # the held job's heartbeats, lease and fence
        self._next: Job | None = None  # claimed together with the last completion
        self._next_sent = 0.0  # when the call that claimed it was sent (its lease starts there)
        self._waiting = False  # in _idle_wait's wait, where SIGUSR1 may interrupt (nothing is half-done there)

    # --- life --------------------------------------------------------------------------

    def run(self) -> NoReturn:
        """The child's whole life, after fork. Never returns."""
        code = CHILD_CRASHED
        try:
            self.init_process()
            code = self.boot()
            if code == CHILD_OK:
                self.loop()
                code = CHILD_OK
        except Shutdown:
            code = CHILD_ABORTED
        except BaseException:
            logger.exception("child crashed")
            code = CHILD_CRASHED
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            except Exception:
                pass
            # os._exit: never run the parent's atexit handlers or close its inherited connections
            os._exit(code)

    def init_process(self) -> None:
        """Everything process-wide, done here and not before fork."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for sig in (signal.SIGCHLD, signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(GRACEFUL_SIGNAL, self._on_graceful)
        _die_with_parent()
        if os.getppid() != self.parent_pid:  # the parent died between fork and prctl
            os._exit(CHILD_BOOT_ERROR)
        for fd in self.close_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        os.umask(0o077)  # work files are private
        # everything written to fd 1 or 2 (by us or by GDAL) goes to the supervisor's log
        os.dup2(self.log_fd, 2)
        os.dup2(self.log_fd, 1)
        self.worker_id = f"{self.prefix}{os.getpid()}"
        db.install_client_timeout(STATEMENT_TIMEOUT + 5)  # a silent server is retried like a lost one
        logs.setup_child_logging(2, self.settings.logging.level)
        # two threads, so that a database call stuck in a reconnect never silences the pings
        for target, name in ((self._ping_loop, "ping"), (self.keeper.heartbeat_loop, "heartbeat")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def boot(self) -> int:
        """Connect and subscribe; a child that cannot must not make the supervisor fork-loop."""
        s = self.settings
        # on the database, or on the API (queue.mode = "http"): the child only knows the Queue interface
        self.queue = open_queue(s, self.worker_id, f"geoworker-child-{os.getpid()}", dsn=self.dsn,
                                statement_timeout=STATEMENT_TIMEOUT)
        self.keeper.queue = self.queue
        try:
            self.queue.ping()
            if s.database.listen:
                self.queue.listen()
        except DatabaseUnavailable as exc:
            self.send("boot_error", error=str(exc))
            logger.error(f"child cannot start: {exc}")
            return CHILD_BOOT_ERROR
        self.send("ready", worker=self.worker_id)
        logger.debug(f"child {self.worker_id} ready")
        return CHILD_OK

    def loop(self) -> None:
        s = self.settings.worker
        backoff = Backoff(first=0.5, cap=min(30.0, s.poll_interval * 4))
        while not self.stopping and self.jobs_done < s.max_jobs_per_child:
            self._check_parent()
            try:
                if self._next is not None:
                    job, sent, self._next = self._next, self._next_sent, None
                else:
                    sent = lease_clock()  # the claim's now() is no earlier: the lease starts here
                    job = self.queue.claim()
                backoff.reset()
            except DatabaseUnavailable as exc:
                delay = backoff.next_delay()
                logger.warning(f"database unavailable, retrying in {delay:.1f} s: {exc}")
                self._sleep(delay)
                continue
            if job is None:
                self._idle_wait(s.poll_interval)
                continue
            self.run_job(job, claimed=sent)
        if self._next is not None:  # claimed with the last completion, then told to stop
            self._finish(lambda: self.queue.release(self._next.id, self.worker_id, "the worker is stopping"))
        if self.jobs_done >= s.max_jobs_per_child:
            logger.info(f"recycling after {self.jobs_done} jobs (worker.max_jobs_per_child)")

    def _idle_wait(self, poll_interval: float) -> None:
        """Wait for a NOTIFY (or the poll interval), in slices so a stop request is noticed within 1 s."""
        deadline = time.monotonic() + poll_interval
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            self._check_parent()
            if self.settings.database.listen:
                try:
                    try:
                        self._waiting = True
                        if self.stopping or self.queue.wait(min(left, 1.0)):
                            return
                    finally:
                        self._waiting = False
                except DatabaseUnavailable:
                    return  # the claim that follows reconnects, with its own backoff
                except _WaitInterrupted:
                    return  # a graceful stop while idle: leave now, not at the end of the slice
            else:
                self._sleep(min(left, 1.0))

    # --- one job -----------------------------------------------------------------------

    def run_job(self, job: Job, claimed: float | None = None) -> None:
        """Run one job to its outcome.

        Args:
            claimed: when the call that claimed it was sent (lease_clock(); default now): its lease starts there.
        """
        self.keeper.hold(job, claimed)
        timeout = _timeout_param(job)
        self.send("busy", job=job.id, task=job.task_type, attempt=job.attempts, max_attempts=job.max_attempts,
                  timeout=timeout)
        started = time.monotonic()
        outcome, error_code, timings, retried = "failed", None, None, False
        # the work directory is created when the task first asks for it, and removed at the end
        with logger.contextualize(job=job.id, attempt=job.attempts, task=job.task_type), \
                job_workdirs(self.settings.storage.temp_dir, job.id) as workdir:
            logger.info(f"job {job.id} started: {job.task_type} (attempt {job.attempts} of {job.max_attempts})")
            try:
                task = tasks.get(job.task_type, self.settings)
                ctx = tasks.TaskContext(job=job, settings=self.settings, workdir=workdir, report=self._progress,
                                        storage=self.storage() if task.needs_input else None,
                                        check_lease=self._check_lease)
                with self.keeper.working_on(job):
                    result = task.handler(ctx)
                if self._finish(lambda: self._complete(job, result)):
                    outcome = "succeeded"
                    timings = (result.result or {}).get("timings") if isinstance(result.result, dict) else None
                    logger.info(f"job {job.id} completed in {time.monotonic() - started:.3f} s")
                else:
                    outcome = "discarded"
            except (Shutdown, KeyboardInterrupt):
                raise
            except Exception as exc:
                error_code, message, permanent = describe(exc)
                if not isinstance(exc, GeoworkerError):
                    logger.opt(exception=exc).error(f"job {job.id} failed unexpectedly: {message}")
                else:
                    logger.warning(f"job {job.id} failed ({error_code}{', permanent' if permanent else ''}): {message}")
                ended: list[Job] = []
                done = self._finish(lambda: ended.append(self.queue.fail(job, error_code, message, permanent=permanent)))
                outcome = "failed" if done else "discarded"
                retried = bool(ended) and ended[-1].status == "queued"  # for the metrics: retry or failed for good
            finally:
                self.keeper.drop()
        self.jobs_done += 1
        self.send("idle", job=job.id, task=job.task_type, outcome=outcome, error_code=error_code, retried=retried,
                  duration=round(time.monotonic() - started, 6), timings=timings, jobs_done=self.jobs_done)

    def _complete(self, job: Job, result) -> None:
        """Record success; a worker that will go on claims its next job in the same statement."""
        go_on = not self.stopping and self.jobs_done + 1 < self.settings.worker.max_jobs_per_child
        if not go_on:
            self.queue.complete(job.id, result.outputs, result.result)
            return
        sent = lease_clock()
        completed, self._next = self.queue.complete_and_claim(job.id, result.outputs, result.result)
        self._next_sent = sent
        if not completed:
            raise LockLost(f"job {job.id}: complete refused, {self.worker_id} no longer holds it")

    def storage(self):
        """The storage backend, opened once per child (after fork: it holds HTTP sessions)."""
        if self._storage is None:
            self._storage = open_backend(self.settings)
        return self._storage

    def _finish(self, write) -> bool:
        """Write the job's outcome, retrying while the database is away; False if the lock was lost."""
        backoff = Backoff(first=0.5, cap=10.0)
        while True:
            try:
                write()
                return True
            except LockLost as exc:
                logger.warning(f"result discarded: {exc}")
                return False
            except DatabaseUnavailable as exc:
                delay = backoff.next_delay()
                logger.warning(f"cannot record the job's outcome yet, retrying in {delay:.1f} s: {exc}")
                self._check_parent()
                # a plain sleep, even when stopping: the outcome must be written, and the
                # supervisor's graceful timeout bounds how long we keep trying
                time.sleep(delay)

    def _progress(self, percent: int, message: str) -> None:
        job = self.keeper.current
        if job is None:
            return
        sent = lease_clock()
        try:
            still_ours = self.queue.progress(job.id, percent, message)
        except DatabaseUnavailable as exc:
            logger.warning(f"progress not recorded: {exc}")
            return
        self.keeper.confirmed(job, sent, still_ours)

    # --- the ping thread: liveness for the supervisor, and the fence --------------------------

    def _ping_loop(self) -> None:
        """Tell the supervisor every second that this process is alive, and watch the job's lease.

        No database involved: a heartbeat stuck in a partition (up to the client timeout) must
        not delay the fence.
        """
        next_ping = time.monotonic() + PING_INTERVAL
        while True:
            time.sleep(FENCE_CHECK)
            if os.getppid() != self.parent_pid:
                os._exit(CHILD_ABORTED)
            if (job := self.keeper.spent()) is not None and self.keeper.fence(job):
                os.kill(os.getpid(), signal.SIGTERM)  # the main thread raises Fenced (see _on_term)
            if (now := time.monotonic()) >= next_ping:
                next_ping = now + PING_INTERVAL
                job = self.keeper.current
                self.send("ping", job=job.id if job else None)

    def _check_lease(self) -> None:
        """Raise Fenced if the running job's lease has run out: called before anything is stored."""
        if (job := self.keeper.spent()) is not None:
            self.keeper.fence(job)
            raise Fenced()

    # --- plumbing ------------------------------------------------------------------------

    def send(self, event: str, **data: Any) -> None:
        """One message to the supervisor, stamped with when it was sent (CLOCK_MONOTONIC is system-wide):
        the watchdog judges a child by what it sent, not by when a stalled supervisor got round to reading it."""
        line = (json.dumps({"event": event, "at": time.monotonic(), **data}, default=str) + "\n").encode()
        with self._ctl_lock:
            try:
                os.write(self.ctl_fd, line)
            except BrokenPipeError:
                os._exit(CHILD_ABORTED)  # the supervisor is gone

    def _check_parent(self) -> None:
        if os.getppid() != self.parent_pid:
            raise Shutdown()

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.5))

    def _on_term(self, signum, frame) -> None:
        self.stopping = True
        raise Fenced() if self.keeper.fenced_now() else Shutdown()

    def _on_graceful(self, signum, frame) -> None:
        self.stopping = True
        if self._waiting:
            raise _WaitInterrupted()


def _timeout_param(job: Job) -> float | None:
    value = (job.params or {}).get("timeout")
    if isinstance(value, bool):
        return None
    try:
        value = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return value if value and value > 0 else None


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL us when the supervisor dies (Linux); the getppid checks cover the rest."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
