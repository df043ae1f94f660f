"""schema.sql is the truth; the migrations must arrive at exactly the same schema."""

from __future__ import annotations

import re

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


def _blocks(file: str) -> list[tuple[str, str, str]]:
    """(kind, name, description line) of every `-- name:` and `-- fragment:` block of sql/<file>."""
    text = (db.resources.files("geoworker.sql") / file).read_text()
    found = re.findall(r"^-- (name|fragment): (\w+)\n(.*)$", text, re.MULTILINE)
    assert len(found) == text.count("\n-- name: ") + text.count("\n-- fragment: ")
    return found


@pytest.mark.parametrize("file", ["queries.sql", "db.sql"])
def test_every_named_block_has_a_one_line_description(file):
    blocks = _blocks(file)
    assert len([b for b in blocks if b[0] == "name"]) == len(db.load_named(file))
    for kind, name, description in blocks:
        assert description.startswith("-- ") and len(description) > 10, f"{kind} {name} lacks a one-line description"


def test_each_fragment_is_spelled_out_where_it_is_used():
    fragments = [name for kind, name, _ in _blocks("queries.sql") if kind == "fragment"]
    queries = db.load_queries()
    assert fragments == ["claim", "complete"]
    assert not any(re.search(r"\{\w+\}", sql) for sql in queries.values()), "a {fragment} was left unexpanded"
    # complete_and_claim is complete_job's CTEs, then claim_next_job's, word for word
    claim = queries["claim_next_job"].removeprefix("WITH ").removesuffix("\nSELECT * FROM job")
    complete = queries["complete_job"].removeprefix("WITH ").removesuffix("\nSELECT * FROM done")
    assert claim.startswith("next AS (") and complete.startswith("done AS (")
    assert queries["complete_and_claim"].startswith(f"WITH {complete}, {claim}\n")


def test_every_statement_db_py_runs_runs(fresh_db):
    conn = db.connect(fresh_db())
    params = {"database_exists": {"name": "postgres"}, "lock_migrations": {"key": db.MIGRATE_LOCK_KEY},
              "record_migration": {"version": 1, "name": "test", "checksum": "x"}}
    skipped = {"create_geoworker_database"}  # a database on the shared server; embedded start-up runs it
    ran = []
    with db.transaction(conn) as cur:  # in file order: the migrations table is made before it is read
        for name in db.load_statements():
            if name not in skipped:
                db.execute(cur, name, params.get(name))
                ran.append((name, cur.fetchall() if cur.description else None))
    results = dict(ran)
    assert results["ping"] == [{"?column?": 1}]
    assert results["migrations_table_exists"] == [{"present": True}]
    assert results["schema_version"] == [{"version": None}]
    assert set(results) | skipped == set(db.load_statements())
    assert db.schema_version(conn) == 1
    conn.close()


def test_every_named_query_parses(dsn):
    conn = db.connect(dsn)
    with conn.cursor() as cur:
        for name, query in db.load_queries().items():
            # PREPARE parses and plans the statement without running it
            cur.execute(f"PREPARE q_{name} AS " + db.positional(query)[0])
    conn.close()
