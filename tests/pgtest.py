"""The test PostgreSQL: which server, and plain admin statements on it (conftest's fixtures build on these)."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg2
import psycopg2.extensions

from geoworker import db as gwdb

ROOT = Path(__file__).resolve().parent.parent


def default_admin_dsn() -> str:
    url = os.environ.get("GEOWORKER_TEST_DATABASE_URL")
    if url:
        return url
    return gwdb.embedded_dsn(str(ROOT / "var" / "test-postgres"))


def dsn_for(admin: str, dbname: str) -> str:
    return psycopg2.extensions.make_dsn(admin, dbname=dbname)


def admin_exec(admin: str, sql: str) -> None:
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()
