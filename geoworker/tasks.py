"""The task registry: task_type -> handler, and the debug tasks that prove the watchdog.

A handler takes a TaskContext and returns a TaskResult. It raises geoworker.errors
exceptions for expected failures (bad input is permanent, storage hiccups transient);
anything else becomes internal_error and is retried.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from loguru import logger

from geoworker.errors import BadParams, InvalidInput, TransientError, UnknownTask


class TaskContext:
    """What a handler gets: the job, the settings, a private work directory and a progress callback.

    Args:
        workdir: the job's private directory, or a function that creates it; then it is made
            on first use, so a task that needs no files pays nothing for it (on a disk mounted
            with `discard`, creating and removing a directory costs milliseconds per job).
    """

    def __init__(self, job: Any, settings: Any, workdir: Path | Callable[[], Path],
                 report: Callable[[int, str], None] | None = None, storage: Any = None):
        self.job = job  # geoworker.jobs.Job
        self.settings = settings  # geoworker.config.Settings
        self._workdir = workdir
        self.report = report or (lambda percent, message: None)
        self.storage = storage  # geoworker.storage backend, when the task needs files

    @property
    def workdir(self) -> Path:
        if callable(self._workdir):
            self._workdir = self._workdir()
        return self._workdir

    @property
    def params(self) -> Mapping[str, Any]:
        return self.job.params or {}

    def progress(self, percent: int, message: str) -> None:
        self.report(percent, message)


@dataclass
class TaskResult:
    outputs: Any = None
    result: Any = None


@dataclass(frozen=True)
class Task:
    name: str
    handler: Callable[[TaskContext], TaskResult]
    needs_input: bool = False
    debug: bool = False
    description: str = ""


_REGISTRY: dict[str, Task] = {}


def task(name: str, *, needs_input: bool = False, debug: bool = False):
    """Register a handler under a task type."""

    def register(fn: Callable[[TaskContext], TaskResult]):
        _REGISTRY[name] = Task(name, fn, needs_input, debug, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return register


def available(settings) -> dict[str, Task]:
    """The tasks this worker runs: debug tasks only when worker.debug_tasks is on."""
    _load_builtin_tasks()
    return {name: t for name, t in _REGISTRY.items() if settings.worker.debug_tasks or not t.debug}


def get(name: str, settings) -> Task:
    tasks = available(settings)
    if name in tasks:
        return tasks[name]
    if name in _REGISTRY:
        raise UnknownTask(f"task {name!r} is a debug task and worker.debug_tasks is off on this worker")
    raise UnknownTask(f"unknown task {name!r} (known: {', '.join(sorted(tasks))})")


def _load_builtin_tasks() -> None:
    # the raster tasks live beside the pipeline; importing registers them
    import importlib

    try:
        importlib.import_module("geoworker.raster_tasks")
    except ModuleNotFoundError as exc:
        if exc.name != "geoworker.raster_tasks":
            raise


# --- debug tasks: registered always, runnable only with worker.debug_tasks = true ---------


def _number(params: Mapping[str, Any], key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadParams(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise BadParams(f"{key} must be a number, got {value!r}") from None
    if number < 0:
        raise BadParams(f"{key} must not be negative, got {value!r}")
    return number


def _sleep(seconds: float) -> None:
    # short steps, so that a signal's handler (Shutdown on SIGTERM) runs within a quarter second
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.25))


@task("debug.noop", debug=True)
def debug_noop(ctx: TaskContext) -> TaskResult:
    """Do nothing and succeed (queue throughput, wake-up latency); `lines` logs that many numbered lines."""
    lines = int(_number(ctx.params, "lines", 0))  # the log-under-load test counts them
    for n in range(1, lines + 1):
        logger.info(f"debug.noop line {n} of {lines}")
    return TaskResult(result={"pid": os.getpid(), "lines": lines})


@task("debug.sleep", debug=True)
def debug_sleep(ctx: TaskContext) -> TaskResult:
    """Sleep `seconds` (default 1), then succeed (timeouts, kills, graceful stops)."""
    seconds = _number(ctx.params, "seconds", 1.0)
    (ctx.workdir / "sleeping").touch()  # a long job with files on disk, as a real one has
    ctx.progress(1, f"sleeping {seconds:g} s")
    _sleep(seconds)
    return TaskResult(result={"slept": seconds, "pid": os.getpid()})


@task("debug.allocate", debug=True)
def debug_allocate(ctx: TaskContext) -> TaskResult:
    """Allocate and touch `mb` MiB, hold it `seconds`, then succeed (the memory watchdog)."""
    mb = _number(ctx.params, "mb", 100)
    seconds = _number(ctx.params, "seconds", 5)
    step = 16 * 1024 * 1024
    held = []
    for _ in range(int(mb * 1024 * 1024) // step):
        block = bytearray(step)
        block[::4096] = b"\1" * len(block[::4096])  # touch every page so RSS really grows
        held.append(block)
    ctx.progress(50, f"holding {mb:g} MiB")
    _sleep(seconds)
    return TaskResult(result={"allocated_mb": mb})


@task("debug.crash", debug=True)
def debug_crash(ctx: TaskContext) -> TaskResult:
    """Die at once like a segfault would (`signal`, default: exit code 70 with no cleanup)."""
    sig = ctx.params.get("signal")
    if sig:
        os.kill(os.getpid(), getattr(signal, str(sig), signal.SIGSEGV))
    os._exit(70)


@task("debug.fail", debug=True)
def debug_fail(ctx: TaskContext) -> TaskResult:
    """Raise an error: permanent (bad input, no retry) or transient (retried with backoff)."""
    permanent = ctx.params.get("permanent", False)
    if permanent in (True, "true", "1", 1, "yes"):
        raise InvalidInput(ctx.params.get("message", "debug.fail asked for a permanent failure"))
    raise TransientError(ctx.params.get("message", "debug.fail asked for a transient failure"))
