"""Per-job private work directories under storage.temp_dir, and their cleanup.

A child makes `geojob_<job id>_<pid>` (mode 0700) before a job and removes it after,
whatever happened. The pid in the name lets the supervisor remove what a child that
died (SIGKILL, OOM killer) left behind without knowing which job it was running, and
the start-up sweep removes what a crashed supervisor left. Every function here only
ever deletes entries named `geojob_*`, so a wrong temp_dir cannot become `rm -rf /`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from loguru import logger

from geoworker.errors import StorageError

PREFIX = "geojob_"


def create_workdir(temp_dir: str | os.PathLike, job_id: str) -> Path:
    """Create the job's private directory `<temp_dir>/geojob_<job_id>_<pid>`, mode 0700.

    Args:
        temp_dir: storage.temp_dir (created, mode 0700, if missing).
        job_id: the job's id (characters other than [A-Za-z0-9-] are replaced).
    Returns:
        the new, empty directory.
    Raises:
        StorageError: the directory cannot be created or is not private to this user.
    """
    base = Path(temp_dir)
    path = base / f"{PREFIX}{_id_part(job_id)}_{os.getpid()}"
    old_umask = os.umask(0o077)
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # the same job again in this process, or something planted there
            remove_workdir(path)
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise StorageError(f"work directory {path} is not a directory owned by this user")
        os.chmod(path, 0o700)
    except OSError as exc:
        raise StorageError(f"cannot create the work directory under {base}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    return path


@contextmanager
def job_workdirs(temp_dir: str | os.PathLike, job_id: str) -> Iterator[Callable[[], Path]]:
    """For one job run: a function that creates its work directory when the task asks for it
    (create_workdir), and on exit the removal of every directory it made, whatever happened."""
    made: list[Path] = []

    def make() -> Path:
        made.append(create_workdir(temp_dir, job_id))
        return made[-1]

    try:
        yield make
    finally:
        for path in made:
            remove_workdir(path)


def remove_workdir(path: str | os.PathLike) -> bool:
    """Remove one work directory and everything in it; never raises for a missing one.

    Args:
        path: a directory made by create_workdir.
    Returns:
        True if something was removed.
    Raises:
        ValueError: the path is not a geojob_* entry (a bug: refuse rather than delete it).
    """
    path = Path(path)
    if not path.name.startswith(PREFIX):
        raise ValueError(f"refusing to remove {path}: not a geoworker work directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    try:
        if stat.S_ISDIR(st.st_mode):
            _rmtree(path)
        else:  # a symlink or file planted under our name: remove the entry, never its target
            os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("could not remove work directory {}: {}", path, exc)
        return False
    return True


def remove_child_workdirs(temp_dir: str | os.PathLike, pid: int) -> int:
    """Remove every work directory of process `pid` (called when that child has died).

    Returns:
        how many directories were removed.
    """
    suffix = f"_{int(pid)}"
    removed = 0
    for entry in _entries(temp_dir):
        if entry.name.endswith(suffix) and _pid_of(entry.name) == int(pid):
            removed += remove_workdir(entry)
    if removed:
        logger.info("removed {} work director{} left by pid {}", removed, "y" if removed == 1 else "ies", pid)
    return removed


def sweep_workdirs(temp_dir: str | os.PathLike, older_than: float = 86400) -> int:
    """Remove work directories last modified more than `older_than` seconds ago (start-up sweep).

    Pass an age longer than worker.max_processing_time, so that no live job's directory qualifies.

    Returns:
        how many entries were removed.
    """
    cutoff = time.time() - older_than
    removed = 0
    for entry in _entries(temp_dir):
        try:
            if os.lstat(entry).st_mtime < cutoff:
                removed += remove_workdir(entry)
        except FileNotFoundError:
            continue
    if removed:
        logger.info("swept {} stale work director{} from {}", removed, "y" if removed == 1 else "ies", temp_dir)
    return removed


def _id_part(job_id: str) -> str:
    # no underscores: the pid is whatever follows the last one
    return re.sub(r"[^A-Za-z0-9-]", "-", str(job_id))[:64] or "job"


def _pid_of(name: str) -> int | None:
    tail = name.rpartition("_")[2]
    return int(tail) if tail.isdigit() else None


def _entries(temp_dir: str | os.PathLike) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(temp_dir) if e.name.startswith(PREFIX)]
    except FileNotFoundError:
        return []


def _rmtree(path: Path) -> None:
    def retry_writable(func, target, _exc):
        # a read-only directory inside (a tool that chmods its output) blocks unlink: open it up
        parent = os.path.dirname(target)
        try:
            os.chmod(parent, 0o700)
            if not os.path.islink(target) and os.path.isdir(target):
                os.chmod(target, 0o700)
        except OSError:
            pass
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry_writable)
    else:  # Python 3.10 and 3.11
        shutil.rmtree(path, onerror=lambda func, target, exc: retry_writable(func, target, exc[1]))
