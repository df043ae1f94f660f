"""What every task is made of: its context, its result, and its description in the registry.

A handler takes a TaskContext and returns a TaskResult. It raises geoworker.errors
exceptions for expected failures (bad input is permanent, storage hiccups transient);
anything else becomes internal_error and is retried.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from geoworker.tasks.params import Schema

Progress = Callable[[int, str], None]


class TaskContext:
    """What a handler gets: the job, the settings, a private work directory and a progress callback.

    Args:
        workdir: the job's private directory, or a function that creates it; then it is made
            on first use, so a task that needs no files pays nothing for it (on a disk mounted
            with `discard`, creating and removing a directory costs milliseconds per job).
        storage: the storage backend, for tasks that read an input and store outputs.
        check_lease: raises (a BaseException) once the job may no longer be this worker's (its
            heartbeats failed for about worker.stale_after): called before anything is stored.
    """

    def __init__(self, job: Any, settings: Any, workdir: Path | Callable[[], Path],
                 report: Progress | None = None, storage: Any = None,
                 check_lease: Callable[[], None] | None = None):
        self.job = job  # geoworker.jobs.Job
        self.settings = settings  # geoworker.config.Settings
        self._workdir = workdir
        self.report = report or (lambda percent, message: None)
        self.storage = storage  # geoworker.storage.Backend, when the task needs files
        self.check_lease = check_lease or (lambda: None)

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
    """What a job stores when it succeeds: output references by kind, and a result document."""

    outputs: Any = None
    result: Any = None


class Producer(Protocol):
    """Turn one input file into output files in out_dir: the work of a file task, without queue or storage.

    Returns {"outputs": {kind: file name or None}, ...summary}: what `geoworker process` prints
    and what the task stores as the job's result.
    """

    def __call__(self, src: Path, out_dir: Path, params: Mapping[str, Any], settings: Any,
                 progress: Progress | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Task:
    """One task type in the registry.

    Attributes:
        name: the job's task_type.
        handler: runs one job.
        params: the schema its parameters are checked against when the job is submitted.
        needs_input: the job carries an input file (`submit FILE`, an upload).
        outputs: the output kinds a successful job stores.
        produce: the file-to-files work itself (file tasks only): `geoworker process` runs it.
        debug: registered only when worker.debug_tasks is on.
    """

    name: str
    handler: Callable[[TaskContext], TaskResult]
    params: Schema
    description: str
    needs_input: bool = False
    outputs: tuple[str, ...] = field(default=())
    produce: Producer | None = None
    debug: bool = False
