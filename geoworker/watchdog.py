"""The watchdog's decisions: pure functions over what the supervisor knows of a child, and a clock.

The supervisor keeps one ChildWatch per child, fed by the child's messages (each stamped by
the child with its CLOCK_MONOTONIC time, which is system-wide on Linux) and by RSS samples.
`judge()` says whether a child must be stopped and why; `sigkill_due()` says when a child
that was sent SIGTERM gets SIGKILL. Nothing here reads a clock, sends a signal or touches the
database: tests/test_watchdog.py drives it with plain numbers for "now".

Silence is judged by the stamp of the last message the child *sent*, not by when the
supervisor read it: a supervisor that was itself stopped (SIGSTOP, a swapped-out host, a
debugger) finds the pings that waited in the pipes, reads them first, and sees children that
were alive all along.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for an offender
NEAR_LIMIT = 0.9  # warn when a child's RSS passes this share of max_child_rss_mb
MIN_BOOT_TIMEOUT = 30.0


@dataclass
class RunningJob:
    """The job a child said it started."""

    id: str
    task: str | None
    attempt: int
    started: float  # the child's stamp of its "busy"
    timeout: float | None = None  # the job's own timeout param, seconds


@dataclass
class Kill:
    """The supervisor decided to stop the child: why, and how far it got."""

    reason: str
    term_sent: float
    sigkilled: bool = False


@dataclass
class ChildWatch:
    """What the watchdog knows of one child."""

    spawned: float
    last_heard: float  # the child's stamp of the latest message read from it
    state: str = "booting"  # booting, idle, busy
    job: RunningJob | None = None
    rss: int = 0
    warned_memory: bool = False
    kill: Kill | None = None


@dataclass(frozen=True)
class Limits:
    """Args: max_processing_time, silence (worker.stale_after) and boot_timeout in seconds; max_rss in bytes."""

    max_processing_time: float
    max_rss: int
    silence: float
    boot_timeout: float
    kill_grace: float = KILL_GRACE

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        w = settings.worker
        return cls(max_processing_time=w.max_processing_time, max_rss=w.max_child_rss_mb * MiB,
                   silence=w.stale_after, boot_timeout=max(MIN_BOOT_TIMEOUT, 2 * settings.database.connect_timeout))


@dataclass(frozen=True)
class Verdict:
    """Stop the child. reason: the metrics label; code: the job's error_code (None: not the job's fault)."""

    reason: str
    code: str | None
    message: str


def heard(watch: ChildWatch, sent_at: float | None, now: float) -> None:
    """A message arrived; `sent_at` is the child's stamp (None from an old child: use now)."""
    stamp = now if sent_at is None else min(now, sent_at)
    watch.last_heard = max(watch.last_heard, stamp)


def judge(watch: ChildWatch, now: float, limits: Limits) -> Verdict | None:
    """Whether a child must be stopped now: memory, then the job's deadline, then silence, then boot.

    Args:
        watch: what is known of the child (its pipes read just before).
        now: the supervisor's monotonic clock.
        limits: the settings' limits.
    Returns:
        a Verdict, or None to leave it alone (also for a child already being stopped).
    """
    if watch.kill is not None:
        return None
    if watch.rss > limits.max_rss:
        return Verdict("memory_limit", "memory_limit",
                       f"the child used {watch.rss / MiB:.0f} MiB, more than worker.max_child_rss_mb "
                       f"({limits.max_rss / MiB:.0f} MiB)")
    job = watch.job
    if job is not None:
        allowed = job.timeout or limits.max_processing_time
        if now - job.started > allowed:
            source = "its timeout param" if job.timeout else "worker.max_processing_time"
            return Verdict("timeout", "timeout", f"the job ran longer than {allowed:g} s ({source})")
    silent = now - watch.last_heard
    if watch.state == "booting":
        if silent > limits.boot_timeout:
            return Verdict("boot_timeout", None, f"the child did not start within {silent:.0f} s")
        return None
    if silent > limits.silence:
        return Verdict("unresponsive", "timeout", f"the child stopped responding (silent for {silent:.0f} s)")
    return None


def memory_warning_due(watch: ChildWatch, limits: Limits) -> bool:
    """True once per child when its RSS passes NEAR_LIMIT of the limit (always before a memory kill)."""
    return not watch.warned_memory and watch.rss > NEAR_LIMIT * limits.max_rss


def sigkill_due(watch: ChildWatch, now: float, limits: Limits) -> bool:
    """A child sent SIGTERM that is still there after the grace period gets SIGKILL."""
    kill = watch.kill
    return kill is not None and not kill.sigkilled and now - kill.term_sent >= limits.kill_grace


def next_sigkill_in(watch: ChildWatch, now: float, limits: Limits) -> float | None:
    """Seconds until sigkill_due() turns true (so the loop wakes in time), or None."""
    kill = watch.kill
    if kill is None or kill.sigkilled:
        return None
    return max(0.0, kill.term_sent + limits.kill_grace - now)
