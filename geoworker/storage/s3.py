"""The s3 backend: boto3 against AWS or any S3-compatible endpoint (MinIO, Ceph, R2, moto).

Keys: `<prefix>/jobs/<job id>/input/<name>` and `<prefix>/jobs/<job id>/output/<name>`.
Inputs `s3://bucket/key` are read only from the configured bucket: the worker's
credentials must not let a job read whatever else they can see. Uploads go through
boto3's managed transfer (multipart above MULTIPART_THRESHOLD); downloads stream with
the size cap. Its settings are the [storage.s3] table (S3Settings). Credentials come from
storage.s3.access_key_id / secret_access_key when set, else from boto3's standard chain
(AWS_ACCESS_KEY_ID, ~/.aws, instance roles). boto3 is imported when a backend is opened:
config imports this module (through storage.registry) for S3Settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

from loguru import logger

from geoworker.errors import ConfigError, InvalidInput, PermanentStorageError, StorageError
from geoworker.storage.base import Backend, FetchedFile, output_names
from geoworker.storage.checks import check_content_type
from geoworker.storage.content_types import content_type_for
from geoworker.storage.names import checked_job_id, safe_filename
from geoworker.storage.stream import CHUNK, sha256_file, too_large, write_capped

if TYPE_CHECKING:
    from geoworker.storage.urls import TransferPolicy

MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNKSIZE = 16 << 20
# answers that mean "this object is gone or not yours": retrying cannot help
PERMANENT_CODES = {"NoSuchKey", "404", "NotFound", "AccessDenied", "403", "Forbidden", "InvalidObjectState"}


def parse_s3_url(url: str) -> tuple[str, str]:
    u = urlsplit(url)
    key = unquote(u.path.lstrip("/"))
    if u.scheme.lower() != "s3" or not u.netloc or not key:
        raise InvalidInput(f"not an s3://bucket/key URL: {url[:200]!r}")
    return u.netloc, key


@dataclass(frozen=True)
class S3Settings:
    """[storage.s3]: the bucket and how to reach it."""

    endpoint_url: str = ""  # empty: AWS itself
    bucket: str = ""
    prefix: str = ""
    region: str = ""
    access_key_id: str = field(default="", metadata={"secret": True})
    secret_access_key: str = field(default="", metadata={"secret": True})
    # these sat in [storage] itself (GEOWORKER_STORAGE_BUCKET, ...) before [storage.s3] existed;
    # config still reads them there, with a warning naming the new spelling
    DEPRECATED_FLAT_KEYS: ClassVar[tuple[str, ...]] = (
        "endpoint_url", "bucket", "prefix", "region", "access_key_id", "secret_access_key")


class S3Backend(Backend):
    name = "s3"
    url_schemes = ("s3",)

    @classmethod
    def check_input_url(cls, settings, url: str) -> None:
        bucket, _key = parse_s3_url(url)
        configured = settings.storage.s3.bucket
        if bucket != configured:
            raise InvalidInput(f"s3 inputs must be in the configured bucket {configured!r}, not {bucket!r}")

    def __init__(self, settings, *, transfer: TransferPolicy | None = None,
                 unsafe_allow_endpoints: Iterable[tuple[str, int]] = (),
                 multipart_threshold: int = MULTIPART_THRESHOLD, multipart_chunksize: int = MULTIPART_CHUNKSIZE):
        super().__init__(settings, transfer=transfer, unsafe_allow_endpoints=unsafe_allow_endpoints)
        s = self.s3 = settings.storage.s3
        if not s.bucket:
            raise ConfigError("storage.s3.bucket: required when storage.backend = \"s3\"")
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        session = boto3.session.Session(aws_access_key_id=s.access_key_id or None,
                                        aws_secret_access_key=s.secret_access_key or None,
                                        region_name=s.region or None)
        config = Config(connect_timeout=self.transfer.connect_timeout, read_timeout=self.transfer.read_timeout,
                        retries={"max_attempts": self.transfer.attempts, "mode": "standard"},
                        signature_version="s3v4",
                        # custom endpoints (MinIO, Ceph, an IP address) rarely do virtual-hosted buckets
                        s3={"addressing_style": "path" if s.endpoint_url else "auto"})
        self.client = session.client("s3", endpoint_url=s.endpoint_url or None, config=config)
        self.transfer_config = TransferConfig(multipart_threshold=multipart_threshold,
                                              multipart_chunksize=multipart_chunksize, max_concurrency=4)
        self.bucket = s.bucket

    def close(self) -> None:
        super().close()
        self.client.close()

    def key(self, job_id: str, part: str, name: str) -> str:
        prefix = self.s3.prefix.strip("/")
        return "/".join(p for p in (prefix, "jobs", checked_job_id(job_id), part, safe_filename(name)) if p)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --- inputs ----------------------------------------------------------------------

    def _fetch_own_url(self, ref: Mapping[str, Any], dest_dir: Path) -> FetchedFile:
        self.check_input_url(self.settings, str(ref["url"]))
        bucket, key = parse_s3_url(str(ref["url"]))
        source = f"s3://{bucket}/{key}"
        try:
            obj = self.client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise self._error("reading", source, exc) from None
        body = obj["Body"]
        try:
            length = obj.get("ContentLength")
            if length is not None and length > self.storage.max_file_size:
                raise too_large(self.storage.max_file_size, length)
            content_type = obj.get("ContentType")
            if self.storage.validate_headers and not ref.get("sidecar"):
                check_content_type(content_type, source=source)
            dest = dest_dir / safe_filename(ref.get("name") or key.rpartition("/")[2])
            size, digest = write_capped(self._chunks(body, source), dest, self.storage.max_file_size)
        finally:
            body.close()
        return FetchedFile(dest, size, digest, content_type, source)

    def read_range(self, reference: str, offset: int, length: int) -> bytes:
        bucket, key = parse_s3_url(reference)
        if bucket != self.bucket:
            raise PermanentStorageError(f"{reference}: not in the configured bucket")
        try:
            obj = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}")
            return obj["Body"].read()
        except Exception as exc:
            raise self._error("reading", reference, exc) from None

    def _chunks(self, body, source: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        try:
            yield from body.iter_chunks(CHUNK)
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"reading {source} broke off: {type(exc).__name__}") from None

    def _error(self, doing: str, source: str, exc: Exception) -> Exception:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            what = f"{doing} {source}: {code or status} {err.get('Message', '')}".rstrip()
            if code in PERMANENT_CODES:
                return PermanentStorageError(what)
            return StorageError(what)  # 5xx, throttling, wrong credentials (an operator can fix those)
        if isinstance(exc, BotoCoreError):
            return StorageError(f"{doing} {source}: {exc}")
        return exc

    def import_file(self, job_id: str, path: str | os.PathLike) -> dict[str, Any]:
        path = Path(path)
        size = path.stat().st_size
        if size > self.storage.max_file_size:
            raise too_large(self.storage.max_file_size, size)
        digest = sha256_file(path)
        key = self.key(job_id, "input", path.name)
        self._upload(path, key)
        return {"backend": "s3", "url": self.url(key), "name": safe_filename(path.name), "size": size,
                "sha256": digest}

    def import_sidecar(self, job_id: str, path: Path, name: str) -> dict[str, Any]:
        size = path.stat().st_size
        if size > self.storage.max_file_size:
            raise too_large(self.storage.max_file_size, size)
        key = self.key(job_id, "input", name)
        self._upload(path, key)
        return {"url": self.url(key), "name": safe_filename(name), "size": size, "sha256": sha256_file(path)}

    def discard_file(self, entry: Mapping[str, Any]) -> None:
        """Delete one object import_file or import_sidecar stored: only in this backend's bucket,
        under `<prefix>/jobs/<id>/input/`."""
        url = str(entry.get("url"))
        try:
            bucket, key = parse_s3_url(url)
        except InvalidInput:
            return
        prefix = "/".join(p for p in (self.s3.prefix.strip("/"), "jobs") if p) + "/"
        parts = key[len(prefix):].split("/") if key.startswith(prefix) else []
        if bucket != self.bucket or len(parts) != 3 or parts[1] != "input":
            return
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
            logger.info("discarded {}", url)
        except Exception as exc:  # an object left behind costs storage, not correctness
            logger.warning("could not discard {}: {}", url, exc)

    # --- outputs ---------------------------------------------------------------------

    def _upload(self, path: Path, key: str) -> None:
        from boto3.exceptions import S3UploadFailedError

        try:
            self.client.upload_file(str(path), self.bucket, key, Config=self.transfer_config,
                                    ExtraArgs={"ContentType": content_type_for(path)})
        except S3UploadFailedError as exc:
            raise StorageError(f"uploading {self.url(key)}: {exc}") from None
        except Exception as exc:
            raise self._error("uploading", self.url(key), exc) from None
        logger.debug("uploaded {} to {}", path.name, self.url(key))

    def store_outputs(self, job, files: Mapping[str, Path]) -> dict[str, str]:
        stored = {}
        for kind, name in output_names(files).items():
            key = self.key(job.id, "output", name)
            if Path(files[kind]).is_dir():  # a tree of files (tiles/{z}/{x}/{y}): one object each, under name/
                for path in sorted(p for p in Path(files[kind]).rglob("*") if p.is_file()):
                    self._upload(path, f"{key}/{path.relative_to(files[kind]).as_posix()}")
                stored[kind] = self.url(key) + "/"
                continue
            self._upload(Path(files[kind]), key)
            stored[kind] = self.url(key)
        return stored

    def presign(self, reference: str) -> str | None:
        """A GET URL for an s3:// output reference (None for any other kind of reference)."""
        try:
            bucket, key = parse_s3_url(reference)
        except InvalidInput:
            return None
        return self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                  ExpiresIn=self.storage.presign_expiry)
