"""Fixtures: a real PostgreSQL, one fresh database per test.

The server is GEOWORKER_TEST_DATABASE_URL when set (CI points it at the machine's
PostgreSQL), otherwise the embedded pgserver under var/test-postgres, which is what a
new user has. A migrated template database is built once per session; each test gets
its own copy (CREATE DATABASE ... TEMPLATE, a file copy) and it is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid

import psycopg2
import psycopg2.extensions
import pytest

from geoworker import db as gwdb
from geoworker.jobs import JobQueue, RetryPolicy
from pgtest import admin_exec, default_admin_dsn, dsn_for
from service import Database


@pytest.fixture(scope="session")
def admin_dsn() -> str:
    return default_admin_dsn()


@pytest.fixture(scope="session")
def template_db(admin_dsn):
    name = f"gwtest_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin_exec(admin_dsn, f'CREATE DATABASE "{name}"')
    conn = gwdb.connect(dsn_for(admin_dsn, name))
    try:
        gwdb.migrate(conn)
    finally:
        conn.close()
    yield name
    admin_exec(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_db(admin_dsn):
    """A factory of empty databases (no schema), dropped after the test."""
    made = []

    def make(template: str = "template0") -> str:
        name = f"gwtest_{uuid.uuid4().hex[:12]}"
        admin_exec(admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        made.append(name)
        return dsn_for(admin_dsn, name)

    yield make
    for name in made:
        admin_exec(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(fresh_db, template_db) -> str:
    """A migrated database of this test's own."""
    return fresh_db(template_db)


@pytest.fixture
def queue(dsn):
    q = JobQueue(dsn, worker_id="test-worker", retry=RetryPolicy(base=10, cap=3600))
    yield q
    q.close()


@pytest.fixture
def sql(dsn):
    """Run raw SQL against the test database (test setup and assertions only)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True

    def run(query: str, params=None):
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None

    yield run
    conn.close()


@pytest.fixture
def db(dsn):
    """Plain reads of this test's database, for assertions (tests/service.py: Database)."""
    database = Database(dsn)
    yield database
    database.close()


@pytest.fixture
def cli_env(dsn, tmp_path):
    """Environment for running `geoworker` as a subprocess against this test's database."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PG", "GEOWORKER_")) and k not in ("DATABASE_URL",)}
    env.update({"DATABASE_URL": dsn, "GEOWORKER_LOGGING_FILE": str(tmp_path / "worker.log"),
                "GEOWORKER_STORAGE_ROOT": str(tmp_path / "storage"),
                "GEOWORKER_STORAGE_TEMP_DIR": str(tmp_path / "tmp"),
                "GEOWORKER_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1"})
    return env
