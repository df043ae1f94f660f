"""The pool of children: spawn, read, judge, kill, reap. The supervisor's loop drives it.

One ChildHandle per child: its two pipes (pipes.py), what the watchdog knows of it
(watchdog.ChildWatch) and the supervisor's bookkeeping. Each turn of the loop the pool reaps
the dead (settling a job the child held: settlement.py), reads every child's pipes and lets
watchdog.judge() decide who must go, then refills itself to `concurrency`, never faster than
the boot backoff allows (a child that cannot even connect must not make the supervisor
fork-loop).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from typing import Callable

from loguru import logger

from geoworker import logs, settlement, watchdog
from geoworker.backoff import exponential
from geoworker.breaker import Breaker
from geoworker.child import CHILD_ABORTED, CHILD_BOOT_ERROR, GRACEFUL_SIGNAL, Child
from geoworker.errors import DatabaseUnavailable
from geoworker.memreport import memory_report, rss
from geoworker.pipes import LineReader, set_nonblocking
from geoworker.queue import Queue
from geoworker.storage.workdir import remove_child_workdirs
from geoworker.watchdog import ChildWatch, Kill, RunningJob

RSS_SAMPLE_EVERY = 0.5  # seconds: psutil reads /proc (~0.1 ms), twice a tick, not on every wake-up


@dataclass
class ChildHandle:
    """One child: its pipes, what the watchdog knows of it, and the supervisor's bookkeeping."""

    pid: int
    worker_id: str
    ctl: LineReader
    log: LineReader
    watch: ChildWatch
    retiring: bool = False
    registered: bool = False
    jobs_done: int = 0
    rss_due: float = 0.0  # when murder_children next samples its RSS
    boot_error: str | None = None

    @property
    def state(self) -> str:
        return self.watch.state

    @property
    def rss(self) -> int:
        return self.watch.rss



@dataclass(frozen=True)
class Identity:
    """Who the children work for: the supervisor's id and pid, their worker-id prefix, the DSN they connect to."""

    supervisor_id: str
    pid: int
    prefix: str
    dsn: str


class Pool:
    """The children of one supervisor.

    Args:
        settings: replaced by the supervisor on reload (new children get the new ones).
        identity: see Identity.
        breaker, settler: the supervisor's (database calls and job outcomes go through them).
        emit: the supervisor's observer hook.
        private_fds: the supervisor's own descriptors, which a new child closes.
        clock: monotonic seconds.
    """

    def __init__(self, settings, identity: Identity, breaker: Breaker, settler: settlement.Settler,
                 emit: Callable[..., None], private_fds: Callable[[], list[int]], clock: Callable[[], float]):
        self.settings = settings
        self.identity = identity
        self.breaker = breaker
        self.settler = settler
        self.emit = emit
        self.private_fds = private_fds
        self.clock = clock
        self.queue: Queue | None = None
        self.children: dict[int, ChildHandle] = {}
        self.boot_failures = 0
        self.next_spawn_at = 0.0

    @property
    def limits(self) -> watchdog.Limits:
        return watchdog.Limits.from_settings(self.settings)

    def fds(self) -> list[int]:
        return [fd for c in self.children.values() for fd in (c.ctl.fd, c.log.fd)]

    # --- what children say ----------------------------------------------------------------

    def read_child(self, child: ChildHandle) -> bool:
        """Read what the child said and logged; False once both pipes reached end of file."""
        for line in child.ctl.read_lines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            self.on_message(child, msg)
        job = child.watch.job
        context = {"job": job.id, "attempt": job.attempt, "task": job.task} if job else None
        for line in child.log.read_lines():
            logs.emit_child_line(line.decode("utf-8", "replace"), child.pid, context)
        return child.ctl.open or child.log.open

    def on_message(self, child: ChildHandle, msg: dict) -> None:
        now, w = self.clock(), child.watch
        sent = msg.get("at") if isinstance(msg.get("at"), (int, float)) else None
        watchdog.heard(w, sent, now)
        event = msg.get("event")
        if event == "ready":
            w.state = "idle"
            self.boot_failures = 0
        elif event == "busy":
            w.state = "busy"
            w.job = RunningJob(str(msg.get("job")), msg.get("task"), int(msg.get("attempt") or 1),
                               started=min(now, sent if sent is not None else now), timeout=msg.get("timeout"))
            self.emit("job_started", child=child, job=msg)
        elif event == "idle":
            w.state, finished, w.job = "idle", w.job, None
            child.jobs_done = msg.get("jobs_done", child.jobs_done + 1)
            self.emit("job_finished", child=child, job=msg, started=finished)
        elif event == "lost":
            if w.job and w.job.id == msg.get("job"):
                self.kill_child(child, "lost", settle=False)
        elif event == "fenced":  # it stopped working on the job by itself (child.py): end that attempt
            if w.job and w.job.id == msg.get("job"):
                self.kill_child(child, "fenced", "crashed",
                                f"the worker could not reach the database for {msg.get('silent', 0):.0f} s "
                                f"(worker.stale_after is {msg.get('stale_after', 0):g} s) and stopped the job")
        elif event == "boot_error":
            child.boot_error = msg.get("error")

    def cancel_running(self, job_id: str) -> None:
        for child in self.children.values():
            if child.watch.job and child.watch.job.id == job_id:
                logger.info(f"job {job_id} was cancelled: stopping child {child.pid}")
                self.kill_child(child, "cancelled", settle=False)

    # --- spawn, retire, kill, reap ------------------------------------------------------------

    def manage_children(self, concurrency: int) -> None:
        """Keep the pool at `concurrency` children, never faster than the boot backoff allows."""
        active = [c for c in self.children.values() if not c.retiring and c.watch.kill is None]
        missing = concurrency - len(active)
        if missing < 0:
            # fewer wanted (SIGTTOU or a reload): retire idle ones first
            for child in sorted(active, key=lambda c: c.state == "busy")[: -missing]:
                self.retire_child(child)
            return
        for _ in range(missing):
            if self.clock() < self.next_spawn_at:
                return
            self.spawn_child()

    def spawn_child(self) -> ChildHandle | None:
        ctl_r, ctl_w = os.pipe()
        log_r, log_w = os.pipe()
        # the child closes what is the supervisor's own: other children's pipes, the wake-up pipe,
        # the supervisor's database socket (so it can never touch it) and the observers' sockets
        inherited = [ctl_r, log_r] + self.fds() + self.private_fds()
        queue_fd = self.queue.wakeup_fd() if self.queue is not None else None
        inherited += [queue_fd] if queue_fd is not None else []
        me = self.identity
        child = Child(self.settings, me.dsn, me.prefix, parent_pid=me.pid, parent_id=me.supervisor_id,
                      ctl_fd=ctl_w, log_fd=log_w, close_fds=inherited)
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (ctl_r, ctl_w, log_r, log_w):
                os.close(fd)
            logger.error(f"cannot fork a child: {exc}")
            self.next_spawn_at = self.clock() + 5
            return None
        if pid == 0:  # pragma: no cover - the child's side never returns
            child.run()
        os.close(ctl_w)
        os.close(log_w)
        for fd in (ctl_r, log_r):
            set_nonblocking(fd)
        now = self.clock()
        handle = ChildHandle(pid, f"{me.prefix}{pid}", LineReader(ctl_r),
                             LineReader(log_r, max_line=logs.MAX_LINE_BYTES), ChildWatch(spawned=now, last_heard=now))
        self.children[pid] = handle
        self.register(handle)
        logger.debug(f"spawned child {pid}")
        self.emit("child_spawned", child=handle)
        return handle

    def register(self, child: ChildHandle) -> None:
        if self.breaker.paused():
            return  # touch_workers registers it later
        try:
            self.queue.register_worker(child.worker_id, "child", child.pid, parent_id=self.identity.supervisor_id)
            child.registered = True
        except DatabaseUnavailable as exc:
            self.breaker.down(exc)

    def memory_report(self, level: str = "INFO") -> None:
        """One line (memreport.py); with logging.json the numbers are bound as `memory` too."""
        children = [(c.pid, c.state, c.watch.job.id if c.watch.job else None) for c in self.children.values()]
        line, memory = memory_report(self.identity.pid, children, self.settings.worker.max_child_rss_mb)
        logger.bind(memory=memory).log(level, line)

    def presence(self) -> list[dict]:
        """Each child's row for geo_workers (registering any the database missed): what stats and the rescuer read."""
        rows = []
        for child in self.children.values():
            if not child.registered:
                self.register(child)
            job = child.watch.job
            rows.append({"id": child.worker_id, "rss": child.rss or rss(child.pid),
                         "current_job": job.id if job else None, "jobs_done": child.jobs_done})
        return rows

    def retire_child(self, child: ChildHandle) -> None:
        """Ask a child to finish its current job and exit (it is replaced if the pool needs it)."""
        if child.retiring:
            return
        child.retiring = True
        send_signal(child.pid, GRACEFUL_SIGNAL)

    def kill_child(self, child: ChildHandle, reason: str, code: str | None = None, message: str = "",
                   settle: bool = True, release: bool = False) -> None:
        """Stop a child: signal it first (SIGTERM, SIGKILL after the grace), then settle its job."""
        w = child.watch
        if w.kill is not None:
            return
        w.kill = Kill(reason, self.clock())
        if reason == "memory_limit":  # the memory must come back now
            send_signal(child.pid, signal.SIGKILL)
            w.kill.sigkilled = True
        else:
            send_signal(child.pid, signal.SIGTERM)
        job = w.job
        log = logger.bind(job=job.id, attempt=job.attempt, task=job.task) if job else logger
        if job and settle:
            log.warning(f"child {child.pid} {'released' if release else f'killed ({reason})'}: "
                        f"job {job.id}: {message or reason}")
            self.settler.settle(settlement.for_kill(job, child.worker_id, reason, code, message, release))
        elif job:
            log.info(f"stopping child {child.pid}: job {job.id} {reason}")
        else:
            logger.warning(f"child {child.pid} killed ({reason}): {message or 'idle'}")
        self.emit("child_killed", child=child, reason=reason)

    def murder_children(self) -> None:
        """The watchdog: each child's pipes are read first, then it is judged (watchdog.judge)."""
        limits = self.limits
        for child in list(self.children.values()):
            self.read_child(child)  # what waited in the pipe comes first: a stall must not look like silence
            now, w = self.clock(), child.watch
            if w.kill is not None:
                if watchdog.sigkill_due(w, now, limits):
                    logger.warning(f"child {child.pid} ignored SIGTERM for {limits.kill_grace:g} s: SIGKILL")
                    send_signal(child.pid, signal.SIGKILL)
                    w.kill.sigkilled = True
                continue
            if now >= child.rss_due:  # psutil reads /proc (~0.1 ms): twice a tick, not on every wake-up
                w.rss, child.rss_due = rss(child.pid), now + RSS_SAMPLE_EVERY
            if watchdog.memory_warning_due(w, limits):
                w.warned_memory = True
                logger.warning(f"child {child.pid} is near its memory limit: {w.rss / watchdog.MiB:.0f} MiB of "
                               f"{self.settings.worker.max_child_rss_mb} MiB" + (f" (job {w.job.id})" if w.job else ""))
            verdict = watchdog.judge(w, now, limits)
            if verdict is not None:
                self.kill_child(child, verdict.reason, verdict.code, verdict.message)
                if verdict.reason == "memory_limit":
                    self.memory_report(level="WARNING")

    def reap_children(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None:
                self.on_child_exit(child, status)

    def on_child_exit(self, child: ChildHandle, status: int) -> None:
        while self.read_child(child):  # what the child said last (its "idle", its last lines) comes first
            pass
        child.ctl.close()
        child.log.close()
        how, code = describe_status(status), os.waitstatus_to_exitcode(status)
        w = child.watch
        kill_reason = w.kill.reason if w.kill else None
        if w.job and kill_reason is None:  # died on its own mid-job: a segfault, the OOM killer, os._exit
            logger.bind(job=w.job.id, attempt=w.job.attempt, task=w.job.task).error(
                f"child {child.pid} died during job {w.job.id}: {how}")
            self.settler.settle(settlement.for_crash(w.job, child.worker_id, how))
            self.emit("child_killed", child=child, reason="crashed")
        elif code == CHILD_BOOT_ERROR or (w.state == "booting" and kill_reason is None):
            self.boot_failures += 1
            delay = exponential(0.5, 60.0, self.boot_failures)
            self.next_spawn_at = self.clock() + delay
            logger.error(f"child {child.pid} could not start ({child.boot_error or how}); "
                         f"next attempt in {delay:.1f} s")
        elif kill_reason is None and not child.retiring and code not in (0, CHILD_ABORTED):
            logger.warning(f"child {child.pid} exited: {how}")
        else:
            logger.debug(f"child {child.pid} exited: {how}")
        # a busy child claims its next job in the statement that completes the last, and tells us
        # a moment later: a kill or a crash in between leaves a job we never heard of
        held = self.breaker.call(lambda: self.queue.held_job(child.worker_id))
        if held is not None:
            self.settler.settle(settlement.for_held(held.id, held.attempts, child.worker_id, kill_reason, how))
        self.cleanup_child(child)
        self.emit("child_exited", child=child, status=how)

    def cleanup_child(self, child: ChildHandle) -> None:
        try:
            remove_child_workdirs(self.settings.storage.temp_dir, child.pid)  # it logs what it removed
        except OSError as exc:
            logger.warning(f"could not remove child {child.pid}'s work directory: {exc}")
        self.breaker.call(lambda: self.queue.stop_workers([child.worker_id]))


def send_signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    return f"exit code {os.WEXITSTATUS(status)}"
