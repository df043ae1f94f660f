-- geoworker schema: the truth. A fresh database gets this file in one transaction;
-- an existing one gets the numbered files in migrations/. tests/test_schema.py proves
-- that both roads end at the same schema.

CREATE TABLE geo_jobs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_type        text        NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('pending', 'queued', 'running', 'succeeded', 'failed', 'cancelled')),
    priority         integer     NOT NULL DEFAULT 0,
    params           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    input            jsonb,
    outputs          jsonb,
    result           jsonb,
    progress         smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    progress_message text,
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    heartbeat_at     timestamptz,
    started_at       timestamptz,
    finished_at      timestamptz,
    error_code       text
                     CHECK (error_code IN ('invalid_input', 'too_large', 'unsupported', 'timeout',
                                           'memory_limit', 'crashed', 'storage_error',
                                           'internal_error', 'cancelled')),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    owner            text,
    -- a running job always names its worker; nothing else does
    CONSTRAINT geo_jobs_running_locked CHECK ((status = 'running') = (locked_by IS NOT NULL))
);
-- Vacuum early: dead entries at the head of the claim index are what slow claims down; the
-- server's default (20 % of the table) lets a million-row queue pile up 200,000 of them.
ALTER TABLE geo_jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                          autovacuum_analyze_scale_factor = 0.02);

-- Serves claim_next_job: the queued rows only, in claim order, so the claim stays an
-- index range scan however many finished jobs the table holds.
CREATE INDEX geo_jobs_claim_idx ON geo_jobs (priority DESC, run_at, created_at)
    WHERE status = 'queued';
-- Serves the stale-job reaper and the watchdog's lookups of running jobs.
CREATE INDEX geo_jobs_running_idx ON geo_jobs (heartbeat_at)
    WHERE status = 'running';
-- Serves `geoworker list` and the API's per-owner listing.
CREATE INDEX geo_jobs_status_created_idx ON geo_jobs (status, created_at DESC);
CREATE INDEX geo_jobs_owner_created_idx ON geo_jobs (owner, created_at DESC);
-- Serves stats over recently finished jobs.
CREATE INDEX geo_jobs_finished_idx ON geo_jobs (finished_at)
    WHERE finished_at IS NOT NULL;

CREATE TABLE geo_job_events (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id  uuid        NOT NULL REFERENCES geo_jobs (id) ON DELETE CASCADE,
    at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind    text        NOT NULL,
    message text,
    worker  text,
    data    jsonb
);
CREATE INDEX geo_job_events_job_idx ON geo_job_events (job_id, id);

CREATE TABLE geo_workers (
    id          text PRIMARY KEY,
    host        text        NOT NULL,
    pid         integer     NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('supervisor', 'child', 'remote')),
    parent_id   text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    stopped_at  timestamptz,
    rss         bigint,
    jobs_done   integer     NOT NULL DEFAULT 0,
    current_job uuid
);
CREATE INDEX geo_workers_last_seen_idx ON geo_workers (last_seen) WHERE stopped_at IS NULL;



-- Live changes for listeners (the API's stream for the dashboard): a job's status or progress,
-- and the worker table. The payload stays tiny (id, status, progress, owner).
CREATE FUNCTION geo_jobs_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('geoworker_job_changes', json_build_object(
        'id', NEW.id, 'status', NEW.status, 'progress', NEW.progress, 'owner', NEW.owner)::text);
    RETURN NULL;
END
$$;
-- `UPDATE OF status, progress`: heartbeats, which set neither, do not even fire it
CREATE TRIGGER geo_jobs_notify_update AFTER UPDATE OF status, progress ON geo_jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress)
    EXECUTE FUNCTION geo_jobs_notify_change();

-- Inserts per statement: a bulk insert (enqueue_jobs, a benchmark's backlog) sends one
-- {"bulk": true} instead of a notification per row, and listeners read what they show again.
CREATE FUNCTION geo_jobs_notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n bigint := (SELECT count(*) FROM (SELECT 1 FROM new_jobs LIMIT 101) AS head);
BEGIN
    IF n > 100 THEN
        PERFORM pg_notify('geoworker_job_changes', '{"bulk": true}');
    ELSE
        PERFORM pg_notify('geoworker_job_changes', json_build_object(
            'id', id, 'status', status, 'progress', progress, 'owner', owner)::text)
        FROM new_jobs;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER geo_jobs_notify_insert AFTER INSERT ON geo_jobs
    REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION geo_jobs_notify_insert();

-- One notification per statement, without a payload: listeners read the (small) table again.
CREATE FUNCTION geo_workers_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('geoworker_worker_changes', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER geo_workers_notify_change AFTER INSERT OR UPDATE OR DELETE ON geo_workers
    FOR EACH STATEMENT EXECUTE FUNCTION geo_workers_notify_change();
