"""Connections, the embedded PostgreSQL, migrations and running the named SQL.

This is the only module that imports psycopg2's exception types: `wrap_errors()`
turns a lost or refused connection into DatabaseUnavailable, the one error the rest of
geoworker retries on, and `NamedQueries` prepares again once when a migration changed a
table under its prepared statements. Connections are opened by the process that uses
them (after fork) and never handed to another process.

The SQL itself is in sql/: queries.sql (the queue, run by jobs.py through NamedQueries),
db.sql (what this module runs itself: ping, LISTEN, the migrations' bookkeeping),
schema.sql and migrations/.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import select
import socket
import time
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from geoworker.errors import ConfigError, DatabaseUnavailable, DataRefused, first_line

LISTEN_CHANNEL = "geoworker_jobs"
CANCEL_CHANNEL = "geoworker_cancel"
_LISTEN = {LISTEN_CHANNEL: "listen_jobs", CANCEL_CHANNEL: "listen_cancel"}  # db.sql's statement for each
# serialises `migrate` across hosts that start at the same time
MIGRATE_LOCK_KEY = 0x67656F776B  # "geowk"
# seconds before the server cancels a statement of a child or of an API request: a stalled
# database is retried, never waited on forever (the supervisor, which must never wait, has 5 s)
STATEMENT_TIMEOUT = 30.0
T = TypeVar("T")


@contextlib.contextmanager
def wrap_errors(what: str = "database") -> Iterator[None]:
    """Translate driver errors: "the database is not there" becomes DatabaseUnavailable (retried),
    a value it refused (SQLSTATE class 22: out of range, malformed) becomes DataRefused (one line, not retried)."""
    try:
        yield
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        # (QueryCanceled, raised when statement_timeout fires, is an OperationalError too)
        raise DatabaseUnavailable(f"{what}: {first_line(exc)}") from exc
    except psycopg2.DataError as exc:
        raise DataRefused(f"the database refused a value ({what}): {first_line(exc)}") from exc


class ClientTimeout(psycopg2.OperationalError):
    """The server did not answer in time (a hung server, or a network that swallows packets)."""


_client_timeout: float | None = None


def install_client_timeout(seconds: float) -> None:
    """Give up on any database round trip of this process after `seconds`.

    statement_timeout and TCP keepalives cannot help when the server (or a proxy, or a
    network) accepts the bytes and never answers; a long-running process must not wait
    forever then. psycopg2's wait callback makes every round trip a select() with a
    deadline; a connection that timed out is closed. Process-wide: call it in the
    supervisor and in each child after fork, not in short commands.
    """
    global _client_timeout
    _client_timeout = float(seconds)
    psycopg2.extensions.set_wait_callback(_wait_with_deadline)


def _wait_with_deadline(conn) -> None:
    deadline = time.monotonic() + (_client_timeout or 3600.0)
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        if state == psycopg2.extensions.POLL_READ:
            wanted = ([conn.fileno()], [], [])
        elif state == psycopg2.extensions.POLL_WRITE:
            wanted = ([], [conn.fileno()], [])
        else:
            raise psycopg2.OperationalError(f"unexpected connection state {state}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ClientTimeout(f"no answer from the server within {_client_timeout:g} s")
        select.select(*wanted, left)



def connect(dsn: str, *, application_name: str = "geoworker", connect_timeout: float = 10,
            sslmode: str = "", statement_timeout: float | None = None) -> psycopg2.extensions.connection:
    """Open one autocommit connection (each named query is its own transaction).

    Args:
        dsn: libpq connection string or URL.
        application_name: shows in pg_stat_activity, so operators can tell processes apart.
        connect_timeout: seconds before giving up on an unreachable server.
        sslmode: overrides the DSN's sslmode when set.
        statement_timeout: seconds before the server cancels a statement (reported as
            DatabaseUnavailable, like a lost connection).
    Raises:
        DatabaseUnavailable: the server cannot be reached or refuses us.
    """
    kwargs: dict[str, Any] = {
        "application_name": application_name[:63],
        "connect_timeout": max(1, int(connect_timeout)),
        # notice a dead peer (a restarted server, a cut network) within ~30 s
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        # and give up on data the peer never acknowledges (a partition mid-query), which
        # keepalives alone do not cover
        "tcp_user_timeout": 30000,
    }
    if statement_timeout:
        kwargs["options"] = f"-c statement_timeout={int(statement_timeout * 1000)}"
    if sslmode:
        kwargs["sslmode"] = sslmode
    with wrap_errors("cannot connect to PostgreSQL"):
        conn = psycopg2.connect(dsn, **kwargs)
    conn.autocommit = True
    return conn


def connect_settings(settings, application_name: str = "geoworker"):
    """connect() with the DSN and options of a Settings object (dsn must be resolved)."""
    db = settings.database
    return connect(resolve_dsn(settings), application_name=application_name,
                   connect_timeout=db.connect_timeout, sslmode=db.sslmode)


@contextlib.contextmanager
def transaction(conn) -> Iterator[Any]:
    """An explicit transaction on an autocommit connection; yields a dict cursor."""
    with wrap_errors():
        cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        cur.execute("BEGIN")
    try:
        yield cur
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            cur.execute("ROLLBACK")
        raise
    else:
        with wrap_errors():
            cur.execute("COMMIT")
    finally:
        cur.close()


# --- the embedded server -------------------------------------------------------------


def resolve_dsn(settings) -> str:
    """The configured DSN, or the embedded server's when none is configured at all."""
    if settings.database.dsn:
        return settings.database.dsn
    return embedded_dsn(settings.database.embedded_dir)


@lru_cache(maxsize=None)
def embedded_dsn(directory: str) -> str:
    """Start (or reuse) the embedded PostgreSQL in `directory` and return its DSN.

    pgserver ships PostgreSQL binaries in a wheel; it listens on a Unix socket only, and
    under root runs the server as a dedicated system user. The server keeps running after
    this process exits (cleanup_mode=None), so the next command reuses it in milliseconds.
    """
    path = Path(directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"database.embedded_dir: cannot create {path.parent}: {exc.strerror}") from None
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # platformdirs complains when XDG_RUNTIME_DIR is unset (root shells, supervisord); /tmp is fine
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    try:
        import pgserver  # here: only a process without a configured database needs it
    except ImportError:  # pragma: no cover - it is a runtime dependency
        raise ConfigError("no database configured and pgserver is not installed: set DATABASE_URL") from None
    try:
        server = pgserver.get_server(path, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {path}: {first_line(exc)} "
            f"(see {path / 'log'}; or set DATABASE_URL)") from exc
    _ensure_geoworker_database(server.get_uri())
    return server.get_uri("geoworker")


def _ensure_geoworker_database(uri: str) -> None:
    conn = connect(uri, application_name="geoworker-setup")
    try:
        with conn.cursor() as cur:
            execute(cur, "database_exists", {"name": "geoworker"})
            if cur.fetchone() is None:
                with contextlib.suppress(psycopg2.errors.DuplicateDatabase):  # another process was quicker
                    execute(cur, "create_geoworker_database")
    finally:
        conn.close()


# --- named SQL -----------------------------------------------------------------------


_HEADER = re.compile(r"^-- (name|fragment): (\w+)\s*$", re.MULTILINE)
_USE = re.compile(r"\{(\w+)\}")


@lru_cache(maxsize=None)
def load_named(file: str) -> dict[str, str]:
    """A file of sql/ as {name: sql}; each block runs from its `-- name:` line to the next header.

    A `-- fragment:` block is written once and used by several statements as `{fragment}`:
    the statements come back with it spelled out, so each is still one whole statement.
    """
    parts = _HEADER.split(_sql_text(file))
    fragments: dict[str, str] = {}
    named: dict[str, str] = {}
    for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3]):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        (fragments if kind == "fragment" else named)[name] = "\n".join(lines).strip().rstrip(";")
    return {name: _USE.sub(lambda m: fragments.get(m.group(1), m.group(0)), sql) for name, sql in named.items()}


def load_queries() -> dict[str, str]:
    """queries.sql: the queue's statements, run through NamedQueries."""
    return load_named("queries.sql")


def load_statements() -> dict[str, str]:
    """db.sql: the statements this module runs itself."""
    return load_named("db.sql")


def execute(cur, name: str, params: Mapping[str, Any] | None = None) -> None:
    """Run one of db.sql's statements on a cursor (driver errors are the caller's to wrap)."""
    cur.execute(load_statements()[name], params)


def ping(conn) -> None:
    """One round trip; DatabaseUnavailable if the server is not there."""
    with wrap_errors("ping"), conn.cursor() as cur:
        execute(cur, "ping")


def listen(conn, channels: Iterable[str]) -> None:
    """Subscribe a session to NOTIFY channels (LISTEN_CHANNEL, CANCEL_CHANNEL)."""
    with wrap_errors("listen"), conn.cursor() as cur:
        for channel in channels:
            execute(cur, _LISTEN[channel])


class NamedQueries:
    """queries.sql run by name on a connection, each statement PREPAREd once per session.

    Parsing and planning the claim and complete CTEs cost more than running them
    (bench/queue_ops.py measured 0.60x of a plain SKIP LOCKED loop without preparing, about
    0.8x with). prepare=False sends the text each time: PgBouncer in transaction mode
    (before 1.21) cannot keep session-level prepared statements.

    Args:
        prepare: PREPARE each statement once per session.
        lock: held while the prepared statements are forgotten (a child's heartbeat thread
            shares the connection).
    """

    def __init__(self, prepare: bool = True, lock: Any = None):
        self.prepare = prepare
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._session = None  # the connection whose prepared statements _prepared lists
        self._prepared: set[str] = set()

    def run(self, conn, name: str, params: Mapping[str, Any]) -> list[dict]:
        """A named query as its own transaction (the connection autocommits), rows as dicts."""
        def attempt() -> list[dict]:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                return self.execute(cur, name, params)

        return self.replanned(conn, attempt)

    def execute(self, cur, name: str, params: Mapping[str, Any]) -> list[dict]:
        """A named query on `cur`, inside the caller's transaction if it has one: no retry here
        (the transaction is spoiled; run it whole again through replanned())."""
        if not self.prepare:
            cur.execute(load_queries()[name], params)
        else:
            if cur.connection is not self._session:
                self._session, self._prepared = cur.connection, set()
            sql, names = prepared_form(name)
            if name not in self._prepared:
                cur.execute(f"PREPARE gw_{name} AS {sql}")
                self._prepared.add(name)
            args = ", ".join(["%s"] * len(names))
            cur.execute(f"EXECUTE gw_{name}" + (f"({args})" if names else ""), [params[n] for n in names])
        return list(cur.fetchall()) if cur.description else []

    def replanned(self, conn, attempt: Callable[[], T]) -> T:
        """attempt(), and once more after forgetting every prepared statement if it failed with
        "cached plan must not change result type": a migration altered a table under them. The
        statement failed whole (its transaction rolled back), so running it again is safe."""
        try:
            return attempt()
        except psycopg2.errors.FeatureNotSupported:
            if not self.prepare:
                raise
            self.forget(conn)
            return attempt()

    def forget(self, conn) -> None:
        """DEALLOCATE ALL on `conn`: every statement is prepared again on its next use."""
        with self._lock, wrap_errors("deallocate"), conn.cursor() as cur:
            execute(cur, "deallocate_all")
            self._prepared = set()


_PARAM = re.compile(r"%\((\w+)\)s")


@lru_cache(maxsize=None)
def prepared_form(name: str) -> tuple[str, tuple[str, ...]]:
    """A named query as positional SQL for PREPARE ($1..$n), and its parameter names in order."""
    return positional(load_queries()[name])


def positional(query: str) -> tuple[str, tuple[str, ...]]:
    names: list[str] = []

    def number(match: re.Match) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return _PARAM.sub(number, query), tuple(names)


def _sql_text(name: str) -> str:
    return resources.files("geoworker.sql").joinpath(name).read_text(encoding="utf-8")


# --- migrations ----------------------------------------------------------------------


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations as (version, name, sql), in order."""
    folder = resources.files("geoworker.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


def schema_version(conn) -> int | None:
    """The highest applied migration, or None if geoworker's schema is not installed."""
    with wrap_errors(), conn.cursor() as cur:
        execute(cur, "migrations_table_exists")
        if not cur.fetchone()[0]:
            return None
        execute(cur, "schema_version")
        return cur.fetchone()[0]


def migrate(conn, *, use_schema: bool = True) -> list[str]:
    """Bring the schema up to date; safe to run any number of times, from many hosts at once.

    A database without geoworker's tables gets schema.sql (the truth) in one go and all
    migrations recorded as applied; an older one gets the missing migrations in order.

    Args:
        conn: an autocommit connection.
        use_schema: False applies the migrations one by one even on an empty database
            (the schema test compares both roads).
    Returns:
        What was applied, e.g. ["schema.sql (0001..0003)"] or ["0002_add_x"], or [].
    """
    applied: list[str] = []
    with transaction(conn) as cur, wrap_errors():
        execute(cur, "lock_migrations", {"key": MIGRATE_LOCK_KEY})
        execute(cur, "create_migrations_table")
        execute(cur, "applied_migrations")
        done = {row["version"] for row in cur.fetchall()}
        todo = [m for m in migrations() if m[0] not in done]
        if not todo:
            return applied
        if use_schema and not done:
            cur.execute(_sql_text("schema.sql"))
            applied.append(f"schema.sql ({todo[0][0]:04d}..{todo[-1][0]:04d})")
        else:
            for version, name, sql in todo:
                cur.execute(sql)
                applied.append(f"{version:04d}_{name}")
        for version, name, sql in todo:
            execute(cur, "record_migration", {"version": version, "name": name,
                                              "checksum": hashlib.sha256(sql.encode()).hexdigest()[:16]})
    return applied


def require_schema(conn) -> None:
    """Refuse to run against a database whose schema is missing or behind this code."""
    version = schema_version(conn)
    if version is None:
        raise ConfigError("the database has no geoworker schema: run `geoworker migrate`")
    if version < latest_version():
        raise ConfigError(
            f"the database schema is at version {version}, this geoworker needs {latest_version()}: "
            "run `geoworker migrate`")


def hostname() -> str:
    return socket.gethostname()


def process_identity(kind: str) -> str:
    """A worker id unique per process start: host, pid and a random tag."""
    return f"{hostname()}:{os.getpid()}:{os.urandom(3).hex()}:{kind}"
