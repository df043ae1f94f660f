"""The http backend: the platform issues signed URLs, the worker GETs the input and PUTs the outputs.

The job's input reference carries them:

    {"url": "<signed GET URL of the input>",
     "name": "site.tif",                      (optional: the user's file name)
     "content_type": "image/tiff",            (optional: what the user declared)
     "outputs": {"png": "<signed PUT URL>", "thumbnail": ..., "worldfile": ..., ...}}

Each output kind with a PUT URL is uploaded there; a kind without one is not uploaded
(the task lists it in result.not_uploaded). The stored reference of an output is its
URL without the query string, i.e. without the signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from geoworker.masking import strip_url_secrets
from geoworker.errors import PermanentStorageError
from geoworker.storage.base import Backend, input_reference
from geoworker.storage.content_types import content_type_for
from geoworker.storage.names import LEGACY_OUTPUT_KINDS


def without_query(url: str) -> str:
    u = urlsplit(url)
    return urlunsplit((u.scheme, u.netloc.rpartition("@")[2], u.path, "", ""))


class HttpBackend(Backend):
    name = "http"
    refuses_local_inputs = "its inputs come from the platform's signed URLs"

    def read_range(self, reference: str, offset: int, length: int) -> bytes:
        """A ranged GET of the output's URL (without the PUT's signature: the platform's storage
        must allow it), checked by the same URL rules as inputs."""
        return self.urls.get_range(reference, offset, length)

    def store_outputs(self, job, files: Mapping[str, Path]) -> dict[str, str]:
        targets = input_reference(job).get("outputs")
        if not isinstance(targets, Mapping) or not targets:
            raise PermanentStorageError("the job carries no upload URLs for its outputs (input.outputs)")
        stored: dict[str, str] = {}
        for kind, path in files.items():
            if Path(path).is_dir():
                logger.warning("job {}: output {} is a directory, which signed PUT URLs cannot take; not uploaded",
                               job.id, kind)
                continue
            url = targets.get(kind) or targets.get(LEGACY_OUTPUT_KINDS.get(kind, ""))
            if not isinstance(url, str) or not url:
                logger.warning("job {}: no upload URL for output {}; not uploaded", job.id, kind)
                continue
            self.urls.upload(url, Path(path), content_type_for(Path(path)))
            logger.debug("job {}: uploaded {} to {}", job.id, kind, strip_url_secrets(url))
            stored[kind] = without_query(url)
        return stored
