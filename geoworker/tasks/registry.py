"""The task registry: task_type -> Task. Adding a task is one module and one line here.

    TASKS = _index(raster.TASKS, maps.TASKS, debug.TASKS)      <- add your module's TASKS

`get()` is what a child runs and what a submission is checked against; `validate_params()`
checks a job's parameters against the task's own schema when the job is submitted (CLI and
API alike), so a mistake is refused there, naming the key, rather than failing later as a job.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from geoworker.errors import UnknownTask
from geoworker.tasks import debug, maps, raster
from geoworker.tasks.base import Task


def _index(*families: Iterable[Task]) -> dict[str, Task]:
    tasks: dict[str, Task] = {}
    for family in families:
        for task in family:
            if task.name in tasks:
                raise RuntimeError(f"task {task.name!r} is registered twice")  # a programming error
            tasks[task.name] = task
    return tasks


TASKS: dict[str, Task] = _index(raster.TASKS, maps.TASKS, debug.TASKS)


def register(task: Task) -> Task:
    """Add a task at run time (a benchmark's or a test's own; before the supervisor forks)."""
    TASKS[task.name] = task
    return task


def available(settings) -> dict[str, Task]:
    """The tasks this worker runs: debug tasks only when worker.debug_tasks is on."""
    return {name: t for name, t in TASKS.items() if settings.worker.debug_tasks or not t.debug}


def get(name: str, settings) -> Task:
    """The task called `name`; UnknownTask (permanent, `unsupported`) if this worker does not run it."""
    tasks = available(settings)
    if name in tasks:
        return tasks[name]
    if name in TASKS:
        raise UnknownTask(f"task {name!r} is a debug task and worker.debug_tasks is off on this worker")
    raise UnknownTask(f"unknown task {name!r} (known: {', '.join(sorted(tasks))})")


def validate_params(task: Task, params: Mapping[str, Any] | None, settings) -> dict[str, Any]:
    """The job's parameters checked by the task's schema; snake_case keys. BadParams names the key."""
    return task.params.validate(params, settings)
