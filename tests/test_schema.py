"""schema.sql is the truth; the migrations must arrive at exactly the same schema."""

from __future__ import annotations

import pytest

from geoworker import db
from geoworker.errors import ConfigError

SNAPSHOT = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, ordinal_position
        FROM information_schema.columns WHERE table_schema = 'public' AND table_name LIKE 'geo\\_%'
        ORDER BY table_name, ordinal_position""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY tablename, indexname""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
    "storage": """
        SELECT relname, reloptions FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'geo\\_%' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2""",
}


def snapshot(dsn: str) -> dict[str, list]:
    conn = db.connect(dsn)
    try:
        with conn.cursor() as cur:
            out = {}
            for name, query in SNAPSHOT.items():
                cur.execute(query)
                out[name] = cur.fetchall()
            return out
    finally:
        conn.close()


def test_migrations_and_schema_sql_build_the_same_schema(fresh_db):
    from_schema, from_migrations = fresh_db(), fresh_db()
    for dsn, use_schema in ((from_schema, True), (from_migrations, False)):
        conn = db.connect(dsn)
        applied = db.migrate(conn, use_schema=use_schema)
        assert applied, "nothing was applied to an empty database"
        assert db.schema_version(conn) == db.latest_version()
        conn.close()
    a, b = snapshot(from_schema), snapshot(from_migrations)
    assert a["columns"], "the snapshot saw no tables"
    assert any(options for _, options in a["storage"]), "the snapshot saw no storage parameters"
    for part in SNAPSHOT:
        assert a[part] == b[part], f"schema.sql and the migrations differ in {part}"


def test_migrate_is_idempotent_and_require_schema_checks_it(fresh_db):
    dsn = fresh_db()
    conn = db.connect(dsn)
    with pytest.raises(ConfigError, match="geoworker migrate"):
        db.require_schema(conn)
    assert db.migrate(conn) != []
    assert db.migrate(conn) == []
    db.require_schema(conn)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM geo_schema_migrations")
        cur.execute("INSERT INTO geo_schema_migrations VALUES (0, 'older', 'x')")
    with pytest.raises(ConfigError, match="version 0"):
        db.require_schema(conn)
    conn.close()


def test_every_named_query_has_a_description_and_parses(dsn):
    text = (db.resources.files("geoworker.sql") / "queries.sql").read_text()
    blocks = text.split("-- name: ")[1:]
    assert len(blocks) == len(db.load_queries())
    for block in blocks:
        name, description = block.splitlines()[:2]
        assert description.startswith("-- ") and len(description) > 10, f"{name} lacks a one-line description"
    conn = db.connect(dsn)
    with conn.cursor() as cur:
        for name, query in db.load_queries().items():
            # PREPARE parses and plans the statement without running it
            cur.execute(f"PREPARE q_{name} AS " + db.positional(query)[0])
    conn.close()
