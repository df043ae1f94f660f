"""The psutil memory report sysadmins grep for: each child's RSS, the pool, the system, on one line."""

from __future__ import annotations

from typing import Any, Iterable

import psutil

MiB = 1024 * 1024


def rss(pid: int) -> int:
    """A process's resident memory in bytes (0 once it is gone)."""
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0


def memory_report(own_pid: int, children: Iterable[tuple[int, str, str | None]],
                  limit_mb: int) -> tuple[str, dict[str, Any]]:
    """The report line and the same numbers as data (bytes), for logging.json.

    Args:
        own_pid: the supervisor's pid.
        children: (pid, state, current job id or None) of each child.
        limit_mb: worker.max_child_rss_mb.
    Returns:
        ("memory report: supervisor pid ... | child pid ... | pool total ... | system available ...", memory).
    """
    own = rss(own_pid)
    parts = [f"supervisor pid {own_pid} rss {own / MiB:.1f} MiB"]
    listed, total = [], 0
    for pid, state, job_id in sorted(children):
        used = rss(pid)
        total += used
        parts.append(f"child pid {pid} {f'job {job_id}' if job_id else state} rss {used / MiB:.1f} MiB")
        listed.append({"pid": pid, "state": state, "job": job_id, "rss": used})
    vm = psutil.virtual_memory()
    parts.append(f"pool total {total / MiB:.1f} MiB (limit {limit_mb} MiB per child)")
    parts.append(f"system available {vm.available / MiB / 1024:.2f} GiB of {vm.total / MiB / 1024:.2f} GiB "
                 f"({vm.percent:.1f}% used)")
    memory = {"supervisor": {"pid": own_pid, "rss": own}, "children": listed, "pool_total": total,
              "limit_per_child": limit_mb * MiB,
              "system": {"available": vm.available, "total": vm.total, "percent": vm.percent}}
    return "memory report: " + " | ".join(parts), memory
