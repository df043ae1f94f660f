"""The queue over HTTP, for workers that cannot reach the database (queue.mode = "http").

`HttpJobQueue` implements geoworker.queue.Queue in full, with the same exceptions as
`JobQueue`, so the child's and the supervisor's retry and backoff paths work unchanged:

    connection refused, timeout, 5xx            -> ApiUnavailable (a DatabaseUnavailable: retried)
    401/403                                     -> WorkerRefused (an ApiUnavailable; check() at a
                                                   supervisor's start makes it a ConfigError)
    404 on a job's route                        -> JobNotFound (elsewhere: ApiUnavailable, wrong base_url)
    409 on complete/fail/release                -> LockLost (the API recorded the refusal)
    409 on heartbeat/progress                   -> False (the job is no longer ours)
    other 4xx, a body JSON cannot carry (NaN)   -> ApiRequestRefused (a bug or a version mismatch)

Waking up: there is no LISTEN over HTTP, so `claim()` long-polls the API for up to
worker.poll_interval seconds (the API answers the moment a NOTIFY says a job arrived),
and `wait()` returns at once so that an idle child goes straight back to claiming. With
database.listen = false the claim does not wait and the child polls every poll_interval.

The supervisor's chores over HTTP: register/touch/stop workers, the job a dead child still
held and the queue summary (--drain) are API calls; `requeue_stale` and `forget_workers` do nothing here, because
the API process runs the stale-job reaper itself (it has the database); the cancel
channel does not exist, and a cancelled running job is noticed by its child's next
heartbeat (refused), which makes the supervisor stop it.
"""

from __future__ import annotations

import json as _json
import threading
import time
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote

import requests

from geoworker.api.wire import (
    MAX_CLAIM_WAIT,
    WORKER_HEADER,
    WORKER_SCHEME,
    job_from_wire,
)
from geoworker.masking import strip_url_secrets
from geoworker.db import hostname
from geoworker.errors import (
    ConfigError,
    DatabaseUnavailable,
    GeoworkerError,
    JobNotFound,
    LockLost,
    first_line,
)
from geoworker.jobs import Job

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0


class ApiUnavailable(DatabaseUnavailable):
    """The API cannot be reached or cannot serve now; retried like a database outage."""


class WorkerRefused(ApiUnavailable):
    """The API refused this worker's token (401/403): retried, because an operator can fix it live."""


class ApiRequestRefused(GeoworkerError):
    """The API refused a request as malformed (a bug, or a client and server of different versions)."""


class HttpJobQueue:
    """The queue seen from one remote process, through the API's worker routes.

    Args:
        base_url: the API (api.base_url, API_BASE_URL), e.g. https://geo.example.org.
        token: api.worker_token (WORKER_AUTH_TOKEN).
        worker_id: sent as X-Geoworker-Worker: what this process holds its jobs under.
        claim_wait: seconds a claim may long-poll (0: answer at once).
    """

    def __init__(self, base_url: str, token: str, worker_id: str = "cli", claim_wait: float = 0.0,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.worker_id = worker_id
        self.claim_wait = max(0.0, min(MAX_CLAIM_WAIT, claim_wait))
        self.timeout = (connect_timeout, read_timeout)
        self._local = threading.local()  # a session per thread: the child's heartbeat thread has its own

    @classmethod
    def from_settings(cls, settings, worker_id: str = "cli") -> "HttpJobQueue":
        wait = settings.worker.poll_interval if settings.database.listen else 0.0
        # the retry backoff is the API's (its settings.retry), applied when it ends an attempt
        return cls(settings.api.base_url, settings.api.worker_token, worker_id, claim_wait=wait,
                   connect_timeout=settings.database.connect_timeout)

    # --- transport ------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # no proxy or .netrc surprises on a worker host
        return session

    @property
    def where(self) -> str:
        return strip_url_secrets(self.base_url)

    def _call(self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
              read_timeout: float | None = None, job_route: bool = False) -> requests.Response:
        headers = {"Authorization": f"{WORKER_SCHEME} {self.token}", WORKER_HEADER: self.worker_id}
        data = None
        if json is not None:
            try:  # as jobs.py stores it: anything else becomes a string, NaN is refused
                data = _json.dumps(json, default=str, allow_nan=False).encode()
            except ValueError as exc:
                raise ApiRequestRefused(f"cannot send {path.rsplit('/', 1)[-1]}: {exc}") from None
            headers["Content-Type"] = "application/json"
        timeout = (self.timeout[0], read_timeout or self.timeout[1])
        try:
            response = self.session.request(method, self.base_url + path, data=data, params=params, headers=headers,
                                            timeout=timeout, allow_redirects=False)
        except requests.RequestException as exc:
            self._drop_session()
            raise ApiUnavailable(f"API {self.where}: {type(exc).__name__}: {first_line(exc)}") from None
        status = response.status_code
        if status >= 500:
            raise ApiUnavailable(f"API {self.where}: {method} {path} answered {status}: {_message(response)}")
        if status in (401, 403):
            raise WorkerRefused(f"API {self.where} refused this worker ({status}: {_message(response)}); "
                                "check api.worker_token (WORKER_AUTH_TOKEN)")
        if status == 404:
            if job_route:
                raise JobNotFound(_message(response))
            raise ApiUnavailable(f"API {self.where}: {method} {path} answered 404: is api.base_url "
                                 "(API_BASE_URL) a geoworker API?")
        return response

    def _expect(self, response: requests.Response, *ok: int) -> requests.Response:
        if response.status_code not in ok:
            raise ApiRequestRefused(f"API {self.where}: {response.request.method} answered "
                                    f"{response.status_code}: {_message(response)}")
        return response

    def _drop_session(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _job_call(self, job_id: str, operation: str, body: Any = None) -> requests.Response:
        path = f"/api/internal/geo-jobs/{quote(str(job_id), safe='')}/{operation}"
        return self._call("PATCH", path, json=body, job_route=True)

    # --- connection -------------------------------------------------------------------------

    def close(self) -> None:
        self._drop_session()

    def ping(self) -> None:
        """Reach the API and prove the token (ApiUnavailable otherwise, as a child's boot expects)."""
        self._expect(self._call("GET", "/api/internal/ping"), 200)

    def check(self) -> None:
        """ping() for a supervisor's start: a refused token is a configuration error, not an outage."""
        try:
            self.ping()
        except WorkerRefused as exc:
            raise ConfigError(str(exc)) from None

    def listen(self, *channels: str) -> None:
        """No LISTEN over HTTP: claims long-poll instead."""

    def wakeup_fd(self) -> int | None:
        """Nothing to select() on: the supervisor's loop waits on its children and signals only."""
        return None

    def notifications(self) -> list[tuple[str, str]]:
        return []

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """With long-polling claims, "go and claim" at once; otherwise sleep like a poll."""
        if self.claim_wait > 0:
            return [("claim", "")]
        time.sleep(max(0.0, timeout))
        return []

    # --- consuming --------------------------------------------------------------------------

    def claim(self, wait: float | None = None) -> Job | None:
        """The next job; the API holds the request up to `wait` s (default claim_wait) for one to come."""
        wait = self.claim_wait if wait is None else wait
        response = self._call("POST", "/api/internal/geo-jobs/claim", params={"wait": wait},
                              read_timeout=self.timeout[1] + wait)
        if response.status_code == 204:
            return None
        return job_from_wire(self._expect(response, 200).json())

    def held_job(self, worker_id: str | None = None) -> Job | None:
        worker = quote(worker_id or self.worker_id, safe="")
        response = self._call("GET", f"/api/internal/workers/{worker}/job")
        if response.status_code == 204:
            return None
        return job_from_wire(self._expect(response, 200).json())

    def heartbeat(self, job_id: str) -> bool:
        response = self._job_call(job_id, "heartbeat")
        return self._expect(response, 200, 409).status_code == 200

    def progress(self, job_id: str, percent: int, message: str | None = None) -> bool:
        body = {"progress": max(0, min(100, int(percent))), "message": _clip(message, 2000)}
        response = self._job_call(job_id, "progress", body)
        return self._expect(response, 200, 409).status_code == 200

    def complete(self, job_id: str, outputs: Any = None, result: Any = None) -> Job:
        return self._job_or_lock_lost(self._job_call(job_id, "complete", {"outputs": outputs, "result": result}))

    def complete_and_claim(self, job_id: str, outputs: Any = None, result: Any = None) -> tuple[bool, Job | None]:
        """Two calls over HTTP (complete, then a claim that does not wait); LockLost is a refusal, as in JobQueue."""
        try:
            self.complete(job_id, outputs, result)
            completed = True
        except LockLost:
            completed = False
        return completed, self.claim(wait=0.0)

    def fail(self, job: Job, code: str, message: str, *, permanent: bool, reason: str = "error") -> Job:
        return self.end_attempt(job.id, job.attempts, holder=self.worker_id, code=code, message=message,
                                permanent=permanent, reason=reason)

    def end_attempt(self, job_id: str, attempts: int, *, holder: str, code: str, message: str,
                    permanent: bool = False, reason: str = "error", min_delay: float = 0.0) -> Job:
        body = {"errorCode": code, "message": _clip(" ".join(str(message).split()), 2000) or code,
                "permanent": bool(permanent), "reason": reason, "holder": holder, "attempts": int(attempts),
                "minDelay": float(min_delay)}
        return self._job_or_lock_lost(self._job_call(job_id, "fail", body))

    def release(self, job_id: str, holder: str, message: str, delay: float = 0.0) -> Job:
        body = {"holder": holder, "message": _clip(message, 2000), "delay": float(delay)}
        return self._job_or_lock_lost(self._job_call(job_id, "release", body))

    def _job_or_lock_lost(self, response: requests.Response) -> Job:
        if response.status_code == 409:
            raise LockLost(_message(response))
        return job_from_wire(self._expect(response, 200).json())

    # --- the supervisor's chores ---------------------------------------------------------------

    def register_worker(self, worker_id: str, kind: str, pid: int, parent_id: str | None = None,
                        host: str | None = None) -> None:
        body = {"id": worker_id, "kind": kind, "pid": pid, "host": host or hostname(), "parentId": parent_id}
        self._expect(self._call("POST", "/api/internal/workers", json=body), 200)

    def touch_workers(self, workers: Iterable[Mapping[str, Any]]) -> None:
        batch = [{"id": w["id"], "rss": w.get("rss"), "currentJob": w.get("current_job"),
                  "jobsDone": w.get("jobs_done", 0)} for w in workers]
        if batch:
            self._expect(self._call("PATCH", "/api/internal/workers", json={"workers": batch}), 200)

    def stop_workers(self, ids: Sequence[str]) -> None:
        if ids:
            self._expect(self._call("POST", "/api/internal/workers/stop", json={"ids": list(ids)}), 200)

    def forget_workers(self, older_than: float = 86400.0) -> None:
        """The API's reaper does this."""

    def requeue_stale(self, stale_after: float, limit: int = 100) -> list[Job]:
        """The API process rescues stale jobs (it has the database); nothing to do here."""
        return []

    def count_by_status(self) -> dict[str, int]:
        """Fleet-wide job counts are the API host's to export; a remote supervisor reports none."""
        return {}

    def summary(self) -> dict[str, Any]:
        doc = self._expect(self._call("GET", "/api/internal/queue/summary"), 200).json()
        return {"ready": int(doc["ready"]), "scheduled": int(doc["scheduled"]), "running": int(doc["running"]),
                "oldest_ready_age": float(doc["oldestReadyAge"])}


def _message(response: requests.Response) -> str:
    try:
        doc = response.json()
        text = doc.get("message") if isinstance(doc, dict) else None
    except ValueError:
        text = None
    return _clip(text or response.text or response.reason or "", 500) or f"HTTP {response.status_code}"


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    return str(text).replace("\x00", "")[:limit]

