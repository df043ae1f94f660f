"""What the API process holds between requests: database connections, a NOTIFY listener, the rescuer.

Requests run in a thread pool; each borrows a JobQueue (one connection each) from a small
pool for the length of the request, with its identity (the actor written to events, or
the worker's lock id) set for that request. The listener thread (one connection per process)
turns NOTIFY into wake-ups for long-polling claims and into the live stream's job and worker
changes (api.stream); the rescuer thread (geoworker.rescue, as every supervisor runs it)
rescues stale jobs, because remote workers (queue.mode = "http") cannot: the API is the
only part of their fleet with the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue as stdqueue
import threading
from typing import Any, Callable, Iterator

from loguru import logger

from geoworker import db
from geoworker.backoff import Backoff
from geoworker.db import STATEMENT_TIMEOUT
from geoworker.errors import ConfigError, DatabaseUnavailable
from geoworker.jobs import JobQueue
from geoworker.rescue import RescueThread, Rescuer

POOL_SIZE = 8  # connections; requests beyond that wait for one (the thread pool has 40 threads)
POOL_WAIT = 10.0  # seconds a request waits for a connection before answering 503


class QueuePool:
    """JobQueues lent to one request at a time; at most `size` exist."""

    def __init__(self, settings, dsn: str, size: int = POOL_SIZE):
        self.settings = settings
        self.dsn = dsn
        self._idle: stdqueue.LifoQueue[JobQueue] = stdqueue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    def _new(self) -> JobQueue:
        return JobQueue.from_settings(self.settings, "api", f"geoworker-api-{os.getpid()}", dsn=self.dsn,
                                      statement_timeout=STATEMENT_TIMEOUT)

    @contextlib.contextmanager
    def lease(self, actor: str) -> Iterator[JobQueue]:
        """A queue acting as `actor` (written to events and, for workers, to locked_by)."""
        if not self._slots.acquire(timeout=POOL_WAIT):
            raise DatabaseUnavailable(f"no database connection free within {POOL_WAIT:g} s")
        try:
            try:
                queue = self._idle.get_nowait()
            except stdqueue.Empty:
                queue = self._new()
            queue.worker_id = actor
            try:
                yield queue
            finally:
                self._idle.put(queue)
        finally:
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except stdqueue.Empty:
                return


Notes = list[tuple[str, str]]
CHANNELS = (db.LISTEN_CHANNEL, db.JOB_CHANGES_CHANNEL, db.WORKER_CHANGES_CHANNEL)


class Notifier:
    """A thread LISTENing for the process: new claimable jobs wake long-polling claims, and every
    notification goes to the subscribers (the live stream) on the event loop.

    A subscriber's `on_notes(notes)` gets each batch; `on_gap()` is called after the listening
    connection was lost and is back: whatever was sent meanwhile is gone, so show state afresh.
    """

    def __init__(self, settings, dsn: str, channels: tuple[str, ...] = CHANNELS):
        self.settings = settings
        self.dsn = dsn
        self.channels = channels
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscribers: list[tuple[Callable[[Notes], None], Callable[[], None]]] = []

    def subscribe(self, on_notes: Callable[[Notes], None], on_gap: Callable[[], None]) -> None:
        """Both run on the event loop; subscribe before start()."""
        self._subscribers.append((on_notes, on_gap))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="api-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def current(self) -> asyncio.Event | None:
        """The event the next wake-up sets: take it *before* trying to claim, so none is missed."""
        return self._event

    async def wait(self, event: asyncio.Event | None, timeout: float) -> None:
        if event is None:
            await asyncio.sleep(timeout)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _fire(self) -> None:  # on the event loop
        old, self._event = self._event, asyncio.Event()
        if old is not None:
            old.set()

    def _deliver(self, notes: Notes, gap: bool) -> None:  # on the event loop
        if any(channel == db.LISTEN_CHANNEL for channel, _ in notes):
            self._fire()
        for on_notes, on_gap in self._subscribers:
            try:
                if gap:
                    on_gap()
                if notes:
                    on_notes(notes)
            except Exception:  # one broken subscriber must not stop the claims' wake-ups
                logger.exception("a notification subscriber failed")

    def _run(self) -> None:
        queue = JobQueue.from_settings(self.settings, "api-listen", f"geoworker-api-listen-{os.getpid()}",
                                       dsn=self.dsn, statement_timeout=STATEMENT_TIMEOUT)
        backoff = Backoff(first=1.0, cap=30.0)
        listening = lost = False
        while not self._stop.is_set():
            try:
                if not listening:  # once: after a reconnect the queue subscribes again by itself
                    queue.listen(*self.channels)
                    listening = True
                notes = queue.wait(1.0)
                backoff.reset()
            except DatabaseUnavailable as exc:
                lost = True
                delay = backoff.next_delay()
                logger.warning(f"job notifications unavailable, retrying in {delay:.0f} s: {exc}")
                self._stop.wait(delay)
                continue
            if (notes or lost) and self._loop is not None:
                self._loop.call_soon_threadsafe(self._deliver, notes, lost)
            lost = False
        queue.close()


class ApiState:
    """Everything a request handler reaches through `request.app.state.api`."""

    def __init__(self, settings, dsn: str | None = None):
        self.settings = settings
        self.dsn = dsn if dsn is not None else db.resolve_dsn(settings)
        self.pool = QueuePool(settings, self.dsn)
        self.notifier = Notifier(settings, self.dsn)
        # remote workers (queue.mode = "http") cannot rescue: the API, which has the database, does
        self.rescuer = RescueThread(Rescuer(settings.worker.stale_after), self._rescuer_queue)
        # jobs with an upload streaming in; touched on the event loop only (see api.files)
        self.uploading: set[str] = set()
        self._backend: Any = None
        self._backend_guard = threading.Lock()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.check_database()
        self.notifier.start(loop)
        self.rescuer.start()

    def stop(self) -> None:
        self.notifier.stop()
        self.rescuer.stop()
        self.pool.close()
        if self._backend is not None:
            self._backend.close()

    def _rescuer_queue(self) -> JobQueue:
        return JobQueue.from_settings(self.settings, f"api-reaper:{db.hostname()}:{os.getpid()}",
                                      f"geoworker-api-reaper-{os.getpid()}", dsn=self.dsn,
                                      statement_timeout=STATEMENT_TIMEOUT)

    def check_database(self) -> None:
        """At start: keep an embedded database current, refuse an old schema, tolerate an outage."""
        try:
            with self.pool.lease("api") as queue:
                queue.check()  # an embedded server's schema is ours to keep current
        except DatabaseUnavailable as exc:
            logger.error(f"database unavailable at start; /health says so until it is back: {exc}")

    def health(self) -> dict[str, Any]:
        """Is the database reachable, and is its schema the one this code needs?"""
        checks: dict[str, Any] = {}
        try:
            with self.pool.lease("api-health") as queue:
                version = db.schema_version(queue.conn)
            checks["database"] = {"ok": True, "message": "database connection successful"}
            expected = db.latest_version()
            current = version is not None and version >= expected
            checks["schema"] = {"ok": current, "version": version, "expected": expected,
                                "message": "schema is current" if current else "run `geoworker migrate`"}
        except DatabaseUnavailable:
            checks["database"] = {"ok": False, "message": "database unavailable"}
            checks["schema"] = {"ok": False, "message": "unknown: the database is unavailable"}
        except ConfigError as exc:
            checks["database"] = {"ok": False, "message": str(exc)}
        return checks

    def backend(self):
        """The storage backend, opened once (boto3 clients are thread-safe; the local one is stateless)."""
        with self._backend_guard:
            if self._backend is None:
                from geoworker.storage import open_backend

                self._backend = open_backend(self.settings)
            return self._backend
