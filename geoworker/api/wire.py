"""The wire format shared by the API and its HTTP client (geoworker.remote); no web framework here.

JSON on the wire is camelCase (the platform's convention); geoworker's own names are
snake_case. Only the top-level keys of a job are renamed: nested documents (params,
outputs, result) are data and travel as they are stored.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import fields
from typing import Any, Mapping

from geoworker.casing import camel, snake
from geoworker.jobs import Job

WORKER_HEADER = "X-Geoworker-Worker"
WORKER_SCHEME = "Worker"
# what a worker id may look like: geoworker's own are host:tag:pid and host:pid:tag
WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
MAX_CLAIM_WAIT = 30.0

_TIMESTAMPS = {f.name for f in fields(Job) if "datetime" in str(f.type)}
_JOB_FIELDS = {f.name for f in fields(Job)}


def job_to_wire(job: Job) -> dict[str, Any]:
    """Every field of the job, camelCase keys, timestamps as ISO 8601 (the worker routes' job)."""
    return {camel(k): v for k, v in job.to_dict().items()}


def job_from_wire(doc: Mapping[str, Any]) -> Job:
    """The inverse of job_to_wire; unknown keys are ignored (a newer server may send more)."""
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = snake(key)
        if name not in _JOB_FIELDS:
            continue
        if name in _TIMESTAMPS and isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        values[name] = value
    return Job(**values)
