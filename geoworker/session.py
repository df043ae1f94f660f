"""One process's connection to the queue's database, kept usable for as long as the process lives.

Opened when first needed, dropped when a statement finds it lost (or a silent server made
the client give up on it) and opened again by the next call, which also subscribes it again
to the channels it listened to. Named statements (sql/queries.sql, through
db.NamedQueries) run on it under one lock: a child's heartbeat thread shares it with its
main thread. jobs.JobQueue says what the statements mean; this module only keeps the line open.
"""

from __future__ import annotations

import select
import threading
from typing import Any, Mapping, Sequence

from geoworker import db


class Session:
    """A lazily opened, self-healing connection with named statements and LISTEN channels.

    Args:
        dsn: where the database is.
        application_name, connect_timeout, sslmode, statement_timeout: as db.connect takes them.
        prepare: PREPARE each named statement once per connection (False for PgBouncer in
            transaction mode before 1.21).
    """

    def __init__(self, dsn: str, *, application_name: str = "geoworker", connect_timeout: float = 10,
                 sslmode: str = "", statement_timeout: float | None = None, prepare: bool = True):
        self.dsn = dsn
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.sslmode = sslmode
        self.statement_timeout = statement_timeout
        self._conn = None
        self.channels: list[str] = []
        self.lock = threading.RLock()
        self.queries = db.NamedQueries(prepare, lock=self.lock)

    @property
    def conn(self):
        """The connection, opened (and subscribed to the channels again) if there is none."""
        with self.lock:
            if self._conn is None or self._conn.closed:
                conn = db.connect(self.dsn, application_name=self.application_name,
                                  connect_timeout=self.connect_timeout, sslmode=self.sslmode,
                                  statement_timeout=self.statement_timeout)
                if self.channels:  # a new session must subscribe again
                    db.listen(conn, self.channels)
                self._conn = conn
            return self._conn

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def fileno(self) -> int | None:
        """The socket while connected (for select() beside other fds); never connects."""
        return self._conn.fileno() if self.connected else None

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def run(self, name: str, params: Mapping[str, Any] | None = None, cursor=None) -> list[dict]:
        """Run one named statement (on `cursor`, inside its transaction, if given); a lost
        connection is dropped (reopened by the next call) and reported as DatabaseUnavailable."""
        try:
            with self.lock, db.wrap_errors(f"query {name}"):
                if cursor is not None:
                    return self.queries.execute(cursor, name, params or {})
                return self.queries.run(self.conn, name, params or {})
        except Exception as exc:
            if isinstance(exc.__cause__, db.ClientTimeout) and self._conn is not None:
                self._conn.close()  # mid-conversation with a silent server: this session is unusable
            self._drop_if_closed()
            raise

    def listen(self, channels: Sequence[str]) -> None:
        """Subscribe to NOTIFY channels, and again after every reconnect."""
        new = [c for c in channels if c not in self.channels]
        with self.lock:
            db.listen(self.conn, new)
        self.channels.extend(new)

    def notifications(self) -> list[tuple[str, str]]:
        """Read what has arrived, without blocking; returns (channel, payload) pairs."""
        with self.lock:
            conn = self.conn
            try:
                with db.wrap_errors("notifications"):
                    conn.poll()
            except Exception:
                self._drop_if_closed()
                raise
            got = [(n.channel, n.payload) for n in conn.notifies]
            conn.notifies.clear()
        return got

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """Block until a notification arrives or timeout passes; returns (channel, payload) pairs."""
        conn = self.conn
        if not conn.notifies:
            try:
                readable, _, _ = select.select([conn], [], [], max(0.0, timeout))
            except (OSError, ValueError):  # the socket went away under us
                readable = [conn]
            if not readable:
                return []
        return self.notifications()

    def _drop_if_closed(self) -> None:
        if self._conn is not None and self._conn.closed:
            self._conn = None
