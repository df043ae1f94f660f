-- 0003: tell listeners (the API's live stream for the dashboard) when a job's status or progress
-- changes, and when the worker table changes. Triggers rather than pg_notify() in each named
-- query: every path that moves a job (claim, complete, fail, cancel, retry, rescue, upload) is
-- covered, including ones written later. The payload stays tiny (id, status, progress, owner):
-- NOTIFY's queue is shared by the whole server, and listeners fetch anything larger themselves.
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
