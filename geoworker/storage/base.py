"""What every backend shares: reading a job's input reference and fetching it, and the
interface the CLI, the API and the health check use instead of asking which backend it is.

A backend decides where outputs go (`store_outputs`); inputs are fetched by what the
reference says, so a job on the local backend can still take an https:// input.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from geoworker.errors import InvalidInput, PermanentStorageError
from geoworker.storage.checks import check_content_type
from geoworker.storage.names import safe_filename, sidecar_name
from geoworker.storage.stream import file_chunks, too_large, write_capped
from geoworker.storage.workdir import create_workdir, remove_workdir

if TYPE_CHECKING:
    from geoworker.storage.urls import TransferPolicy, UrlTransfer


MAX_SIDECARS = 8  # a TIFF's world file, .prj, .aux.xml, .msk, .ovr and their spellings


@dataclass(frozen=True)
class FetchedFile:
    """An input copied into a job's work directory."""

    path: Path
    size: int
    sha256: str
    content_type: str | None
    source: str  # where it came from, without secrets: a path, s3://bucket/key, or a URL without its query
    sidecars: tuple[Path, ...] = ()  # world file, .aux.xml, .msk, .ovr fetched beside it (GDAL reads them)


class UnsupportedOperation(PermanentStorageError):
    """This backend cannot do that."""


def input_reference(job) -> dict[str, Any]:
    """The job's input as a dict: {"url": ...} or {"path": ...} (a bare string is read as either)."""
    ref = getattr(job, "input", None)
    if isinstance(ref, str) and ref:
        return {"url": ref} if "://" in ref else {"path": ref}
    if isinstance(ref, Mapping) and (ref.get("url") or ref.get("path")):
        return dict(ref)
    raise InvalidInput("the job has no input (expected input.url or input.path)")


class Backend(abc.ABC):
    """Base of the backends in storage.registry (local, s3, http)."""

    name: ClassVar[str] = "base"
    # URL schemes of inputs this backend reads itself (s3://); every backend fetches https://
    url_schemes: ClassVar[tuple[str, ...]] = ()
    # None when inputs may come from a local file (`geoworker submit FILE`) or an API upload;
    # otherwise why not, as the end of a sentence
    refuses_local_inputs: ClassVar[str | None] = None

    def __init__(self, settings, *, transfer: TransferPolicy | None = None,
                 unsafe_allow_endpoints: Iterable[tuple[str, int]] = ()):
        # storage.urls here, not at the top: it pulls requests and urllib3, and the registry
        # (which config imports) imports every backend module
        from geoworker.storage.urls import TransferPolicy, UrlPolicy

        self.settings = settings
        self.storage = settings.storage
        self.policy = UrlPolicy.from_settings(settings, unsafe_allow_endpoints)
        self.transfer = transfer or TransferPolicy()
        self._urls: UrlTransfer | None = None

    @property
    def urls(self) -> UrlTransfer:
        if self._urls is None:
            from geoworker.storage.urls import UrlTransfer  # see __init__

            self._urls = UrlTransfer(self.policy, self.transfer)
        return self._urls

    # --- what callers ask of the backend class, before opening one --------------------

    @classmethod
    def check_input_url(cls, settings, url: str) -> None:
        """Refuse an input URL of one of url_schemes that this backend would not read (InvalidInput).

        Called before a job is made of the URL (`geoworker submit URL`); https:// URLs are
        UrlPolicy's to check, not the backend's.
        """

    @classmethod
    def local_directories(cls, settings) -> dict[str, str]:
        """{setting: directory} this backend keeps files in on this host (the File_System health check)."""
        return {}

    def close(self) -> None:
        if self._urls is not None:
            self._urls.close()
            self._urls = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- inputs ----------------------------------------------------------------------

    def fetch(self, job, dest_dir: Path) -> FetchedFile:
        """Copy the job's input into dest_dir (created 0700), capped at max_file_size, hashing it on the way."""
        ref = input_reference(job)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fetched = self._fetch_one(ref, dest_dir)
        sidecars = ref.get("sidecars") or []
        if not sidecars:
            return fetched
        budget, got = self.storage.max_file_size, []
        for entry in sidecars[:MAX_SIDECARS]:
            if not isinstance(entry, Mapping) or safe_filename(entry.get("name"), default="") != entry.get("name"):
                raise InvalidInput("the job's input lists a malformed sidecar file")
            one = self._fetch_one({**entry, "sidecar": True}, dest_dir)  # not a TIFF: no type check
            budget -= one.size
            if budget < 0:
                raise InvalidInput(f"the input's sidecar files hold more than storage.max_file_size "
                                   f"({self.storage.max_file_size} bytes) together")
            got.append(one.path)
        return dataclasses.replace(fetched, sidecars=tuple(got))

    def _fetch_one(self, ref: Mapping[str, Any], dest_dir: Path) -> FetchedFile:
        if ref.get("url"):
            url = str(ref["url"])
            scheme = urlsplit(url).scheme.lower()
            if scheme in ("http", "https"):
                return self._fetch_url(ref, dest_dir)
            if scheme in self.url_schemes:
                return self._fetch_own_url(ref, dest_dir)
            raise InvalidInput(f"input URLs must be https://, not {scheme}:// (storage.backend = {self.name!r} "
                               f"on this worker reads no {scheme}:// inputs)")
        return self._fetch_local(ref, dest_dir)

    def _fetch_url(self, ref: Mapping[str, Any], dest_dir: Path) -> FetchedFile:
        got = self.urls.download(str(ref["url"]), dest_dir, self.storage.max_file_size, name=ref.get("name"),
                                 check_type=self.storage.validate_headers and not ref.get("sidecar"))
        return FetchedFile(got.path, got.size, got.sha256, got.content_type, got.url)

    def _fetch_own_url(self, ref: Mapping[str, Any], dest_dir: Path) -> FetchedFile:
        """An input URL of one of url_schemes; a backend that lists schemes reads them here."""
        raise NotImplementedError(f"{type(self).__name__} lists url_schemes but cannot read them")

    def _fetch_local(self, ref: Mapping[str, Any], dest_dir: Path) -> FetchedFile:
        """A file under storage.root (what `geoworker submit FILE` and the API's uploads store)."""
        path = local_input_path(self.storage.root, ref.get("path"))
        declared = ref.get("content_type")
        if self.storage.validate_headers:
            check_content_type(declared)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise InvalidInput(f"the input file {path.name} does not exist (any more)") from None
        except IsADirectoryError:
            raise InvalidInput(f"the input {path.name} is a directory, not a file") from None
        except PermissionError:
            raise PermanentStorageError(f"the input file {path.name} is not readable by the worker") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if size > self.storage.max_file_size:
                raise too_large(self.storage.max_file_size, size)
            dest = dest_dir / safe_filename(ref.get("name") or path.name)
            size, digest = write_capped(file_chunks(fh), dest, self.storage.max_file_size)
        return FetchedFile(dest, size, digest, declared, str(path))

    # --- outputs ---------------------------------------------------------------------

    @abc.abstractmethod
    def store_outputs(self, job, files: Mapping[str, Path]) -> dict[str, str]:
        """Store each output file; returns {kind: reference}. Each backend has its own."""

    def presign(self, reference: str) -> str | None:
        """A time-limited download URL for an output reference, where the backend can make one."""
        return None

    def read_range(self, reference: str, offset: int, length: int) -> bytes:
        """`length` bytes of a stored output from `offset` (fewer at its end): the API reads tiles out of
        a PMTiles archive this way, without copying the archive out of storage.

        Raises:
            UnsupportedOperation: this backend cannot read its outputs back.
            StorageError: the read failed (transient), PermanentStorageError: the object is gone.
        """
        raise UnsupportedOperation(f"storage.backend = {self.name!r} cannot read its outputs back")

    def output_file(self, job_id: str, name: str) -> Path | None:
        """The local file of a job's output `name`, for a backend whose outputs the API serves itself; else None."""
        return None

    # --- inputs from this host: `geoworker submit FILE`, the API's signed uploads ----------

    def import_file(self, job_id: str, path: str | os.PathLike) -> dict[str, Any]:
        """Copy a local file in as a job's input (`geoworker submit FILE`); returns the input reference."""
        raise UnsupportedOperation(f"storage.backend = {self.name!r} cannot take a local file as input: "
                                   f"{self.refuses_local_inputs or 'it does not store inputs'}")

    def receive_input(self, job_id: str, name: str, chunks: Iterable[bytes] | Iterator[bytes], *,
                      max_size: int | None = None, content_type: str | None = None) -> dict[str, Any]:
        """Store a stream as the job's input (the API's signed uploads); returns the input reference.

        This default writes a private temporary copy (storage.temp_dir, mode 0700) and hands
        it to import_file; a backend that can write the stream where it keeps inputs overrides it.

        Args:
            job_id: the job it belongs to.
            name: the user's file name (sanitised here).
            chunks: the bytes; stopped with TooLarge past max_size (default max_file_size).
            content_type: the declared type, kept in the reference and checked at fetch.
        """
        limit = min(max_size or sys.maxsize, self.storage.max_file_size)
        workdir = create_workdir(self.storage.temp_dir, job_id)
        try:
            path = workdir / safe_filename(name)
            write_capped(chunks, path, limit)
            ref = self.import_file(job_id, path)
        finally:
            remove_workdir(workdir)
        if content_type:
            ref["content_type"] = content_type
        return ref

    def import_sidecars(self, job_id: str, ref: dict[str, Any], original: str,
                        sidecars: Sequence[Path]) -> dict[str, Any]:
        """Store the files GDAL reads beside a TIFF (world file, .aux.xml, .msk, .ovr) next to its stored
        input, renamed as the input was (names.sidecar_name); returns the input reference with them.

        Args:
            ref: what import_file returned for the TIFF.
            original: the TIFF's name as the user had it.
            sidecars: the local files.
        """
        if len(sidecars) > MAX_SIDECARS:
            raise InvalidInput(f"{original} comes with {len(sidecars)} sidecar files; at most {MAX_SIDECARS} are taken")
        stored = []
        for path in sorted(sidecars, key=lambda p: Path(p).name):
            name = sidecar_name(original, str(ref.get("name") or original), Path(path).name)
            stored.append(self.import_sidecar(job_id, Path(path), name))
        return {**ref, "sidecars": stored}

    def import_sidecar(self, job_id: str, path: Path, name: str) -> dict[str, Any]:
        """Store one sidecar file as `name` beside the job's input; returns its reference."""
        raise UnsupportedOperation(f"storage.backend = {self.name!r} cannot take sidecar files")

    def discard_input(self, ref: Mapping[str, Any]) -> None:
        """Remove an input and its sidecars, stored by receive_input or import_file, whose job went
        away meanwhile (cancelled during its upload): each through discard_file."""
        sidecars = ref.get("sidecars") or []
        for entry in [ref, *(s for s in sidecars[:MAX_SIDECARS] if isinstance(s, Mapping))]:
            self.discard_file(entry)

    def discard_file(self, entry: Mapping[str, Any]) -> None:
        """Remove one stored input file (the input or a sidecar) by its reference; default: leave it.

        A reference is data: remove only what lies where this backend keeps inputs."""


def local_input_path(root: str | os.PathLike, raw: Any) -> Path:
    """The real path of a local input reference, refused unless it lies under the storage root.

    Relative paths are relative to the root; symlinks are resolved before the check.
    """
    if not isinstance(raw, str) or not raw or "\x00" in raw:
        raise InvalidInput("the job's input path is missing or malformed")
    base = Path(root).resolve()
    path = Path(raw)
    real = (path if path.is_absolute() else base / path).resolve()
    if not real.is_relative_to(base):
        raise InvalidInput(f"the input {safe_filename(path.name)} is outside the storage root; "
                           "submit it with `geoworker submit FILE`, which copies it in")
    return real


def output_names(files: Mapping[str, Path]) -> dict[str, str]:
    """A safe, distinct file name for each output kind."""
    names: dict[str, str] = {}
    for kind, path in files.items():
        name = safe_filename(Path(path).name, default=f"{safe_filename(kind, 'output')}.bin")
        if name in names.values():
            name = f"{safe_filename(kind, 'output')}_{name}"
        names[kind] = name
    return names
