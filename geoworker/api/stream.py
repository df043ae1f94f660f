"""The live stream: `GET /api/stream`, Server-Sent Events of job and worker changes for the dashboard.

One LISTENing connection per API process (state.Notifier) feeds the Broadcaster, which hands
each change to the streams allowed to see it: a job's change goes to its owner's streams and
to operators'. The worker board and the overview (operators only, on request) are read once
per process when something changed, at most every WORKERS_EVERY / OVERVIEW_EVERY seconds,
and pushed to every operator stream that asked: no client polls the database.

`Authorization: Bearer <JWT>` as on every user route (the dashboard reads the stream with
fetch(), so the token never sits in a URL). `?topics=jobs,workers,overview` (default: jobs);
a user's stream carries their own jobs only, whatever topics it asks for. Events:

    hello     {"sub", "operator", "topics"}: the stream is open; a client (re)reads what it shows
    job       {"id", "status", "progress"} (+ "owner" for operators): a job the viewer may see moved
    resync    {"reason"}: changes may have been missed (the listener reconnected, a bulk insert,
              a client too slow to keep up): read what is shown again
    workers   GET /api/workers' document (operators, topic "workers")
    overview  GET /api/overview's document (operators, topic "overview")
    expired   {"message"}: the token has expired; the stream ends, and reconnecting is a 401
    bye       {"message"}: the API is shutting down; reconnect (another process, or this one back)

A comment line every KEEPALIVE seconds keeps proxies from closing an idle stream. The stream is
not in the OpenAPI document: a response that never ends cannot be fuzzed.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from loguru import logger

from geoworker import db
from geoworker.api.auth import Viewer, current_viewer
from geoworker.api.errors import ApiError
from geoworker.api.ops import overview_doc, workers_doc
from geoworker.errors import DatabaseUnavailable

router = APIRouter(tags=["stream"])
TOPICS = ("jobs", "workers", "overview")
OPERATOR_TOPICS = frozenset({"workers", "overview"})
KEEPALIVE = 15.0  # seconds between comment lines on an idle stream
RETRY_MS = 2000  # the reconnect delay an EventSource would use; the dashboard reads it too
QUEUE_SIZE = 500  # events waiting for one slow client before it is told to resync instead
WORKERS_EVERY = 1.0  # seconds: at most one worker board read per process in that time
OVERVIEW_EVERY = 5.0
CLOSE = object()


@dataclass(eq=False)
class Subscriber:
    """One open stream."""

    viewer: Viewer
    topics: frozenset[str]
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))

    def offer(self, item: Any) -> None:
        """Queue an event; a client that fell this far behind gets one resync instead of the backlog."""
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(("resync", {"reason": "too many changes at once"}))


@dataclass(eq=False)
class Feed:
    """A document read from the database when something changed, no more often than `every` seconds."""

    topic: str
    read: Callable[[], dict]
    every: float
    dirty: asyncio.Event = field(default_factory=asyncio.Event)


class Broadcaster:
    """Fans the process's notifications out to its open streams (runs on the event loop)."""

    def __init__(self, state):
        self.state = state
        self.subscribers: set[Subscriber] = set()
        self.feeds = {f.topic: f for f in (Feed("workers", lambda: workers_doc(state), WORKERS_EVERY),
                                           Feed("overview", lambda: overview_doc(state), OVERVIEW_EVERY))}
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False
        state.notifier.subscribe(self.on_notes, self.on_gap)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [self._loop.create_task(self._feed_loop(f)) for f in self.feeds.values()]

    async def stop(self) -> None:
        self.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def close_threadsafe(self) -> None:
        """close(), from a signal handler or another thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        """End every open stream (the server is shutting down: it need not wait for them)."""
        self.closing = True
        for sub in list(self.subscribers):
            sub.offer(("bye", {"message": "the API is shutting down"}))
            sub.offer(CLOSE)

    def subscribe(self, viewer: Viewer, topics: frozenset[str]) -> Subscriber:
        allowed = topics if viewer.operator else topics - OPERATOR_TOPICS
        sub = Subscriber(viewer, allowed or frozenset({"jobs"}))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    # --- from the Notifier ------------------------------------------------------------------

    def on_notes(self, notes: list[tuple[str, str]]) -> None:
        for channel, payload in notes:
            if channel == db.JOB_CHANGES_CHANNEL:
                self._job_changed(payload)
            elif channel == db.WORKER_CHANGES_CHANNEL:
                self.feeds["workers"].dirty.set()

    def on_gap(self) -> None:
        self._resync("the API's database listener reconnected")

    def _job_changed(self, payload: str) -> None:
        try:
            change = json.loads(payload)
        except ValueError:
            return
        if change.get("bulk"):
            self._resync("many jobs were created at once")
            return
        if not isinstance(change.get("id"), str):
            return
        owner = change.get("owner")
        plain = {"id": change["id"], "status": change.get("status"), "progress": change.get("progress")}
        for sub in self.subscribers:
            if "jobs" in sub.topics and sub.viewer.may_see(owner):
                sub.offer(("job", {**plain, "owner": owner} if sub.viewer.operator else plain))
        self.feeds["workers"].dirty.set()  # a claim or a finish changes what a worker runs
        self.feeds["overview"].dirty.set()

    def _resync(self, reason: str) -> None:
        for sub in self.subscribers:
            sub.offer(("resync", {"reason": reason}))
        for feed in self.feeds.values():
            feed.dirty.set()

    # --- feeds ---------------------------------------------------------------------------

    def _wanted(self, topic: str) -> list[Subscriber]:
        return [s for s in self.subscribers if topic in s.topics]

    async def _feed_loop(self, feed: Feed) -> None:
        warned = False
        while True:
            await feed.dirty.wait()
            feed.dirty.clear()
            if not self._wanted(feed.topic):
                continue
            try:
                doc = await run_in_threadpool(feed.read)
                warned = False
            except DatabaseUnavailable as exc:
                if not warned:
                    logger.warning(f"live {feed.topic}: database unavailable, will try again: {exc}")
                    warned = True
                feed.dirty.set()
            except Exception:
                logger.exception(f"live {feed.topic} failed")
            else:
                for sub in self._wanted(feed.topic):
                    sub.offer((feed.topic, doc))
            await asyncio.sleep(feed.every)


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


async def events(broadcaster: Broadcaster, viewer: Viewer, topics: frozenset[str],
                 clock: Callable[[], float] = time.time) -> AsyncIterator[str]:
    """The text of one stream, until the token expires, the server closes or the client leaves."""
    # subscribed here, not before: only a started generator is sure to run its `finally`
    sub = broadcaster.subscribe(viewer, topics)
    try:
        yield f"retry: {RETRY_MS}\n" + sse("hello", {"sub": sub.viewer.sub, "operator": sub.viewer.operator,
                                                     "topics": sorted(sub.topics)})
        while True:
            left = sub.viewer.expires - clock() if sub.viewer.expires else KEEPALIVE
            if left <= 0:
                yield sse("expired", {"message": "the token has expired"})
                return
            try:
                item = await asyncio.wait_for(sub.queue.get(), timeout=min(KEEPALIVE, left))
            except asyncio.TimeoutError:
                yield ": keepalive\n\n"
                continue
            if item is CLOSE:
                return
            yield sse(*item)
    finally:
        broadcaster.unsubscribe(sub)


def parse_topics(raw: str) -> frozenset[str]:
    return frozenset(t for t in raw.split(",") if t in TOPICS) or frozenset({"jobs"})


@router.get("/api/stream", include_in_schema=False)
async def stream(request: Request, viewer: Viewer = Depends(current_viewer),
                 topics: str = Query("jobs", max_length=100)):
    broadcaster: Broadcaster = request.app.state.stream
    if broadcaster.closing:
        raise ApiError(503, "the API is shutting down; reconnect", headers={"Retry-After": "1"})
    return StreamingResponse(events(broadcaster, viewer, parse_topics(topics)), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

