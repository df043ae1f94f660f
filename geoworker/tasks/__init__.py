"""Tasks: what a job does, by its task_type (docs/ARCHITECTURE.md, "Adding a task").

    base.py      TaskContext, TaskResult, Task, Producer
    params.py    Param, Schema: a task's parameters, checked at submit time
    files.py     file_task(): input in, producer, outputs stored, checksums
    raster.py    geotiff_to_png, geotiff_info
    maps.py      geotiff_to_cog, geotiff_to_tiles
    debug.py     debug.noop/sleep/allocate/crash/fail (worker.debug_tasks)
    registry.py  TASKS, get(), available(), validate_params(), register()
"""

from geoworker.tasks.base import Task, TaskContext, TaskResult
from geoworker.tasks.registry import available, get, register, validate_params

__all__ = ["Task", "TaskContext", "TaskResult", "available", "get", "register", "validate_params"]
