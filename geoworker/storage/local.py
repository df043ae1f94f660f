"""The local backend: a directory tree `<root>/jobs/<job id>/{input,output}/`.

Every file lands under its final name by rename from a temporary name in the same
directory (after an fsync), so a killed attempt never leaves a half-written file where
a reader would take it for a finished one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from loguru import logger

from geoworker.errors import InvalidInput, InvalidState, PermanentStorageError
from geoworker.storage.base import Backend, local_input_path, output_names
from geoworker.storage.names import checked_job_id, safe_filename
from geoworker.storage.stream import file_chunks, too_large, write_capped


class LocalBackend(Backend):
    name = "local"

    @classmethod
    def local_directories(cls, settings) -> dict[str, str]:
        return {"storage.root": settings.storage.root}

    @property
    def root(self) -> Path:
        return Path(self.storage.root)

    def job_dir(self, job_id: str, part: str) -> Path:
        """<root>/jobs/<job id>/<part>, created if missing."""
        path = self.root / "jobs" / checked_job_id(job_id) / part
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_file(self, job_id: str, name: str) -> Path | None:
        """<root>/jobs/<job id>/output/<name> if it is a file; None for a malformed id or name."""
        try:
            job_dir = checked_job_id(job_id)
        except ValueError:
            return None
        if not name or safe_filename(name, default="") != name:
            return None
        path = self.root / "jobs" / job_dir / "output" / name
        return path if path.is_file() else None

    def receive_input(self, job_id: str, name: str, chunks: Iterable[bytes], *, max_size: int | None = None,
                      content_type: str | None = None) -> dict[str, Any]:
        """Store a stream as the job's input (for `submit` and the API's signed uploads).

        Args:
            job_id: the job it belongs to.
            name: the user's file name (sanitised here).
            chunks: the bytes; stopped with TooLarge past max_size (default max_file_size).
            content_type: the declared type, kept in the reference and checked at fetch.
        Returns:
            the input reference {"backend": "local", "path", "name", "size", "sha256"[, "content_type"]}.
        """
        limit = min(max_size or sys.maxsize, self.storage.max_file_size)
        safe = safe_filename(name)
        dest = self.job_dir(job_id, "input") / safe
        try:
            size, digest = write_capped(chunks, dest, limit, durable=True, replace=False)
        except FileExistsError:
            raise InvalidState(f"job {job_id} already has its input {safe}; nothing was stored") from None
        ref = {"backend": "local", "path": str(dest.resolve()), "name": safe, "size": size, "sha256": digest}
        if content_type:
            ref["content_type"] = content_type
        logger.info("stored input {} ({} bytes) for job {}", safe, size, job_id)
        return ref

    def discard_file(self, entry: Mapping[str, Any]) -> None:
        # only a file under the root
        with contextlib.suppress(OSError, InvalidInput):
            os.unlink(local_input_path(self.root, entry.get("path")))

    def import_file(self, job_id: str, path: str | os.PathLike) -> dict[str, Any]:
        path = Path(path)
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise InvalidInput(f"{path.name}: cannot read: {exc.strerror}") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size > self.storage.max_file_size:
                raise too_large(self.storage.max_file_size, size)
            return self.receive_input(job_id, path.name, file_chunks(fh))

    def read_range(self, reference: str, offset: int, length: int) -> bytes:
        path = Path(reference).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise PermanentStorageError("the output lies outside the storage root")
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read(length)
        except FileNotFoundError:
            raise PermanentStorageError(f"the output {path.name} does not exist (any more)") from None

    def import_sidecar(self, job_id: str, path: Path, name: str) -> dict[str, Any]:
        with open(path, "rb") as fh:
            dest = self.job_dir(job_id, "input") / safe_filename(name)
            size, digest = write_capped(file_chunks(fh), dest, self.storage.max_file_size, durable=True)
        return {"path": str(dest.resolve()), "name": dest.name, "size": size, "sha256": digest}

    def store_outputs(self, job, files: Mapping[str, Path]) -> dict[str, str]:
        out_dir = self.job_dir(job.id, "output")
        stored: dict[str, str] = {}
        for kind, name in output_names(files).items():
            if Path(files[kind]).is_dir():  # a tree of files (tiles/{z}/{x}/{y}): in place at once, by rename
                _replace_tree(Path(files[kind]), out_dir / name)
            else:
                with open(files[kind], "rb") as fh:
                    write_capped(file_chunks(fh), out_dir / name, sys.maxsize, durable=True)
            stored[kind] = str((out_dir / name).resolve())
        _fsync_dir(out_dir)
        return stored


def _replace_tree(src: Path, dest: Path) -> None:
    """Copy a directory tree to dest, replacing what was there; readers never see half of it."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    # the renames are durable only once the directory itself is on disk
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
