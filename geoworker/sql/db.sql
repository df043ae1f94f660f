-- The statements db.py runs itself, by name: a session's housekeeping, the embedded
-- server's first start, and the migrations' bookkeeping. Loaded once by
-- db.load_statements(); called from db.py only (the job queries are in queries.sql).
-- Each "-- name:" header is followed by a one-line description.

-- name: ping
-- The cheapest round trip: the server is there and answers.
SELECT 1;

-- name: listen_jobs
-- Wake this session when a job becomes claimable (pg_notify('geoworker_jobs') in queries.sql).
LISTEN geoworker_jobs;

-- name: listen_job_changes
-- Subscribe to job status and progress changes (the dashboard's live stream; migration 0003's trigger).
LISTEN geoworker_job_changes;

-- name: listen_worker_changes
-- Subscribe to changes of the worker table (the dashboard's worker board).
LISTEN geoworker_worker_changes;

-- name: listen_cancel
-- Wake this session when a running job is cancelled (pg_notify('geoworker_cancel') in queries.sql).
LISTEN geoworker_cancel;

-- name: deallocate_all
-- Forget this session's prepared statements (a migration changed a table under them).
DEALLOCATE ALL;

-- name: database_exists
-- Whether a database of this name exists (the embedded server's first start).
SELECT 1 FROM pg_database WHERE datname = %(name)s;

-- name: create_geoworker_database
-- The embedded server's database (pgserver starts with only postgres).
CREATE DATABASE geoworker;

-- name: lock_migrations
-- Serialise `migrate` across hosts that start at once; held until the transaction ends.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: create_migrations_table
-- The table of applied migrations, on a database that has none yet.
CREATE TABLE IF NOT EXISTS geo_schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
-- Whether geoworker's schema is installed at all: its migrations table exists.
SELECT to_regclass('geo_schema_migrations') IS NOT NULL AS present;

-- name: applied_migrations
-- The version of every migration applied so far.
SELECT version FROM geo_schema_migrations;

-- name: schema_version
-- The highest migration applied (NULL when none is).
SELECT max(version) AS version FROM geo_schema_migrations;

-- name: record_migration
-- Record one migration as applied, with a checksum of its text.
INSERT INTO geo_schema_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);
