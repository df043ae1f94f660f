"""The debug tasks, for drills: they prove the watchdog, retries and rescue on a real running pool.

Registered always, runnable only where worker.debug_tasks = true. Their schemas are open:
a drill may carry any extra keys (a note, a tag), which are kept with the job.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Callable, Mapping

from loguru import logger

from geoworker.errors import BadParams, InvalidInput, TransientError
from geoworker.tasks.base import Task, TaskContext, TaskResult
from geoworker.tasks.params import COMMON, Param, Schema, text

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


def debug_noop(ctx: TaskContext) -> TaskResult:
    """Do nothing and succeed (queue throughput, wake-up latency); `lines` logs that many numbered lines."""
    lines = int(_number(ctx.params, "lines", 0))  # the log-under-load test counts them
    for n in range(1, lines + 1):
        logger.info(f"debug.noop line {n} of {lines}")
    return TaskResult(result={"pid": os.getpid(), "lines": lines})


def debug_sleep(ctx: TaskContext) -> TaskResult:
    """Sleep `seconds` (default 1), then succeed (timeouts, kills, graceful stops)."""
    seconds = _number(ctx.params, "seconds", 1.0)
    (ctx.workdir / "sleeping").touch()  # a long job with files on disk, as a real one has
    ctx.progress(1, f"sleeping {seconds:g} s")
    _sleep(seconds)
    return TaskResult(result={"slept": seconds, "pid": os.getpid()})


def debug_write(ctx: TaskContext) -> TaskResult:
    """Work `seconds`, then store one output (attempt.json: who wrote it, when) as file tasks do (fencing drills)."""
    from geoworker.tasks.files import job_backend, store_files  # late: a storage backend, only for this one

    seconds = _number(ctx.params, "seconds", 1.0)
    ctx.progress(1, f"working {seconds:g} s")
    _sleep(seconds)
    out = ctx.workdir / "out"
    out.mkdir(exist_ok=True)
    record = out / "attempt.json"
    record.write_text(json.dumps({"job": ctx.job.id, "attempt": ctx.job.attempts, "pid": os.getpid(),
                                  "written_at": time.time()}))
    with job_backend(ctx) as backend:
        outputs, checksums = store_files(ctx, backend, {"record": record})
    return TaskResult(outputs=outputs, result={"pid": os.getpid(), "sha256": {"outputs": checksums}})


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


def debug_crash(ctx: TaskContext) -> TaskResult:
    """Die at once like a segfault would (`signal`, default: exit code 70 with no cleanup)."""
    sig = ctx.params.get("signal")
    if sig:
        os.kill(os.getpid(), getattr(signal, str(sig), signal.SIGSEGV))
    os._exit(70)


def debug_fail(ctx: TaskContext) -> TaskResult:
    """Raise an error: permanent (bad input, no retry) or transient (retried with backoff)."""
    permanent = ctx.params.get("permanent", False)
    if permanent in (True, "true", "1", 1, "yes"):
        raise InvalidInput(ctx.params.get("message", "debug.fail asked for a permanent failure"))
    raise TransientError(ctx.params.get("message", "debug.fail asked for a transient failure"))


def _seconds_like(name: str) -> Callable[[Any, Any], Any]:
    def check(value: Any, settings: Any) -> Any:
        return _number({name: value}, name, 0.0)

    return check


def _schema(*params: Param) -> Schema:
    return COMMON + Schema(params, open=True)


def _debug(name: str, handler, *params: Param) -> Task:
    return Task(name, handler, _schema(*params), (handler.__doc__ or "").strip().splitlines()[0], debug=True)


TASKS = (
    _debug("debug.noop", debug_noop, Param("lines", "number", "log this many numbered lines", _seconds_like("lines"))),
    _debug("debug.sleep", debug_sleep, Param("seconds", "number", "how long to sleep", _seconds_like("seconds"),
                                             default=1.0, main=True)),
    _debug("debug.write", debug_write, Param("seconds", "number", "how long to work before storing the output",
                                             _seconds_like("seconds"), default=1.0, main=True)),
    _debug("debug.allocate", debug_allocate,
           Param("mb", "number", "MiB to allocate and touch", _seconds_like("mb"), default=100, main=True),
           Param("seconds", "number", "how long to hold it", _seconds_like("seconds"), default=5)),
    _debug("debug.crash", debug_crash, Param("signal", "string", "die by this signal (SIGSEGV, SIGKILL, ...)",
                                             text("signal", 20))),
    _debug("debug.fail", debug_fail,
           Param("permanent", "boolean", "fail for good instead of being retried", lambda v, s: v),
           Param("message", "string", "the error message", text("message"))),
)
