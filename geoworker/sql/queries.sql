-- Every query geoworker runs against its tables, by name. Loaded once by db.load_queries();
-- called from jobs.py only. Each "-- name:" header is followed by a one-line description.
-- A state change and its event are one statement, so they commit (or not) together.
-- A "-- fragment:" is a part two statements share, written once: `{fragment}` in a
-- statement stands for it (db.load_named spells it out, so each is still one statement).

-- name: enqueue_job
-- Insert one job, record its creation, and wake idle workers if it is claimable.
WITH job AS (
    INSERT INTO geo_jobs (task_type, status, priority, params, input, max_attempts, run_at, owner)
    VALUES (%(task_type)s, %(status)s, %(priority)s, %(params)s, %(input)s, %(max_attempts)s,
            coalesce(%(run_at)s, now()), %(owner)s)
    RETURNING *
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id, 'created', 'job created as ' || status, %(actor)s,
           jsonb_build_object('task_type', task_type, 'priority', priority, 'max_attempts', max_attempts)
    FROM job
), wake AS (
    SELECT pg_notify('geoworker_jobs', task_type) FROM job WHERE status = 'queued' AND run_at <= now()
)
SELECT job.* FROM job LEFT JOIN wake ON true;

-- name: enqueue_jobs
-- Insert many queued jobs of one task type in one statement (params as a jsonb array).
WITH job AS (
    INSERT INTO geo_jobs (task_type, status, priority, params, max_attempts, run_at)
    SELECT %(task_type)s, 'queued', %(priority)s, p, %(max_attempts)s, coalesce(%(run_at)s, now())
    FROM jsonb_array_elements(%(params)s) AS p
    RETURNING id, task_type
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker)
    SELECT id, 'created', 'job created as queued', %(actor)s FROM job
), wake AS (
    SELECT pg_notify('geoworker_jobs', %(task_type)s)
    WHERE EXISTS (SELECT 1 FROM job) AND coalesce(%(run_at)s, now()) <= now()
)
SELECT count(*) AS inserted FROM job LEFT JOIN wake ON true;

-- fragment: claim
-- The claim (CTEs next, job, claim_event): lock the best claimable job, mark it the worker's, record it.
next AS (
    SELECT id FROM geo_jobs
    WHERE status = 'queued' AND run_at <= now()
    ORDER BY priority DESC, run_at, created_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), job AS (
    UPDATE geo_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, locked_by = %(worker)s,
        heartbeat_at = now(), started_at = now(), finished_at = NULL,
        progress = 0, progress_message = 'claimed', updated_at = now()
    FROM next WHERE j.id = next.id
    RETURNING j.*
), claim_event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id, 'claimed', 'attempt ' || attempts || ' of ' || max_attempts, %(worker)s,
           jsonb_build_object('attempt', attempts)
    FROM job
)

-- fragment: complete
-- The completion (CTEs done, done_event): the caller's running job succeeds with its outputs, recorded.
done AS (
    UPDATE geo_jobs
    SET status = 'succeeded', progress = 100, progress_message = 'done', outputs = %(outputs)s,
        result = %(result)s, finished_at = now(), locked_by = NULL, error_code = NULL,
        last_error = NULL, updated_at = now()
    WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
    RETURNING *
), done_event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id, 'succeeded',
           'succeeded in ' || to_char(extract(epoch FROM finished_at - started_at), 'FM9999990.000') || ' s',
           %(worker)s, jsonb_build_object('attempt', attempts)
    FROM done
)

-- name: claim_next_job
-- Take the best claimable job (priority, then run_at, then age), skipping rows others hold.
WITH {claim}
SELECT * FROM job;

-- name: heartbeat
-- Prove the worker still holds the job; no row back means the lock is gone.
UPDATE geo_jobs SET heartbeat_at = now()
WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
RETURNING id;

-- name: report_progress
-- Record how far the job is (also a heartbeat); no row back means the lock is gone.
WITH job AS (
    UPDATE geo_jobs
    SET progress = %(progress)s, progress_message = %(message)s, heartbeat_at = now(), updated_at = now()
    WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
    RETURNING id, progress, progress_message
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id, 'progress', progress_message, %(worker)s, jsonb_build_object('progress', progress) FROM job
)
SELECT id FROM job;

-- name: complete_job
-- Mark the caller's running job succeeded with its outputs; acts only if the caller still holds it.
WITH {complete}
SELECT * FROM done;

-- name: complete_and_claim
-- complete_job, then claim_next_job, in one statement: a busy worker commits once per job, not twice.
WITH {complete}, {claim}
SELECT (SELECT count(*) FROM done) AS completed, job.* FROM (SELECT 1) AS one LEFT JOIN job ON true;

-- name: fail_attempt
-- End the caller's running attempt: fail for good (permanent, or attempts spent) or queue a retry at run_at.
WITH job AS (
    UPDATE geo_jobs AS j
    SET status = CASE WHEN %(permanent)s OR j.attempts >= j.max_attempts THEN 'failed' ELSE 'queued' END,
        run_at = CASE WHEN %(permanent)s OR j.attempts >= j.max_attempts THEN j.run_at
                      ELSE now() + make_interval(secs => %(delay)s) END,
        finished_at = CASE WHEN %(permanent)s OR j.attempts >= j.max_attempts THEN now() END,
        progress = CASE WHEN %(permanent)s OR j.attempts >= j.max_attempts THEN j.progress ELSE 0 END,
        progress_message = CASE WHEN %(permanent)s OR j.attempts >= j.max_attempts THEN 'failed'
                                ELSE 'waiting to retry' END,
        locked_by = NULL, error_code = %(code)s, last_error = %(code)s || ': ' || %(message)s,
        updated_at = now()
    WHERE j.id = %(id)s AND j.status = 'running' AND j.locked_by = %(worker)s
    RETURNING j.*
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id,
           CASE WHEN status = 'failed' THEN 'failed' ELSE 'retry_scheduled' END,
           last_error || CASE WHEN status = 'failed' THEN ''
                              ELSE ' (retry ' || (attempts + 1) || ' of ' || max_attempts || ' in '
                                   || to_char(%(delay)s::numeric, 'FM9999990.0') || ' s)' END,
           %(actor)s,
           jsonb_build_object('error_code', error_code, 'attempt', attempts, 'reason', %(reason)s::text,
                              'permanent', %(permanent)s, 'run_at', run_at, 'worker', %(worker)s::text)
    FROM job
), wake AS (
    SELECT pg_notify('geoworker_jobs', task_type) FROM job WHERE status = 'queued' AND run_at <= now()
)
SELECT job.* FROM job LEFT JOIN wake ON true;

-- name: release_job
-- Give a running job back to the queue at once without counting the attempt (graceful shutdown).
WITH job AS (
    UPDATE geo_jobs
    SET status = 'queued', attempts = greatest(attempts - 1, 0),
        run_at = now() + make_interval(secs => %(delay)s), locked_by = NULL,
        progress = 0, progress_message = 'released', updated_at = now()
    WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
    RETURNING *
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id, 'released', %(message)s, %(actor)s, jsonb_build_object('worker', %(worker)s::text) FROM job
), wake AS (
    SELECT pg_notify('geoworker_jobs', task_type) FROM job WHERE run_at <= now()
)
SELECT job.* FROM job LEFT JOIN wake ON true;

-- name: held_job
-- The running job a worker holds, if any: the API hands it over again when a claim's answer was lost.
SELECT * FROM geo_jobs
WHERE status = 'running' AND locked_by = %(worker)s
ORDER BY started_at
LIMIT 1;

-- name: find_stale_jobs
-- Running jobs with a heartbeat older than stale_after whose worker is gone or not working on them; locks them.
-- "Not working on it" catches a claim that committed while its reply was lost (a dropped connection):
-- the worker lives on, but never learned it holds the job.
SELECT j.id, j.attempts, j.max_attempts, j.locked_by, j.heartbeat_at
FROM geo_jobs AS j
WHERE j.status = 'running'
  AND j.heartbeat_at < now() - make_interval(secs => %(stale_after)s)
  AND NOT EXISTS (
      SELECT 1 FROM geo_workers AS w
      WHERE w.id = j.locked_by AND w.stopped_at IS NULL AND w.current_job = j.id
        AND w.last_seen > now() - make_interval(secs => %(stale_after)s))
ORDER BY j.heartbeat_at
LIMIT %(limit)s
FOR UPDATE OF j SKIP LOCKED;

-- name: refuse_stale_result
-- Record that a worker which no longer holds the job tried to finish it.
INSERT INTO geo_job_events (job_id, kind, message, worker, data)
SELECT id, 'result_discarded',
       %(operation)s || ' refused: worker ' || %(worker)s || ' no longer holds this job (status '
       || status || coalesce(', locked by ' || locked_by, '') || ')',
       %(worker)s, jsonb_build_object('operation', %(operation)s::text, 'status', status, 'locked_by', locked_by)
FROM geo_jobs WHERE id = %(id)s
RETURNING job_id;

-- name: cancel_job
-- Cancel a job that has not finished; a running one is then killed by its supervisor (NOTIFY).
WITH old AS (
    SELECT id, status AS previous_status, locked_by AS previous_worker
    FROM geo_jobs WHERE id = %(id)s FOR UPDATE
), job AS (
    UPDATE geo_jobs AS j
    SET status = 'cancelled', error_code = 'cancelled', last_error = 'cancelled: ' || %(reason)s,
        finished_at = now(), locked_by = NULL, progress_message = 'cancelled', updated_at = now()
    FROM old WHERE j.id = old.id AND old.previous_status IN ('pending', 'queued', 'running')
    RETURNING j.*, old.previous_status, old.previous_worker
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id, 'cancelled', 'cancelled while ' || previous_status || ': ' || %(reason)s, %(actor)s,
           jsonb_build_object('previous_status', previous_status, 'worker', previous_worker)
    FROM job
), wake AS (
    SELECT pg_notify('geoworker_cancel', id::text) FROM job WHERE previous_status = 'running'
)
SELECT job.* FROM job LEFT JOIN wake ON true;

-- name: retry_job
-- Put a failed or cancelled job back in the queue with a fresh set of attempts.
WITH job AS (
    UPDATE geo_jobs
    SET status = 'queued', run_at = now(), attempts = 0, error_code = NULL, last_error = NULL,
        finished_at = NULL, progress = 0, progress_message = NULL, updated_at = now()
    WHERE id = %(id)s AND status IN ('failed', 'cancelled')
    RETURNING *
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker)
    SELECT id, 'retried', 'queued again by hand', %(actor)s FROM job
), wake AS (
    SELECT pg_notify('geoworker_jobs', task_type) FROM job
)
SELECT job.* FROM job LEFT JOIN wake ON true;

-- name: queue_pending_job
-- Move a pending job (its input just arrived) to the queue, storing where the input is.
WITH job AS (
    UPDATE geo_jobs SET status = 'queued', input = %(input)s, run_at = now(), updated_at = now()
    WHERE id = %(id)s AND status = 'pending'
    RETURNING *
), event AS (
    INSERT INTO geo_job_events (job_id, kind, message, worker, data)
    SELECT id, 'queued', 'input received; job queued', %(actor)s, %(data)s FROM job
), wake AS (
    SELECT pg_notify('geoworker_jobs', task_type) FROM job
)
SELECT job.* FROM job LEFT JOIN wake ON true;

-- name: add_event
-- Append a free-form event to a job's history.
INSERT INTO geo_job_events (job_id, kind, message, worker, data)
VALUES (%(id)s, %(kind)s, %(message)s, %(worker)s, %(data)s)
RETURNING id;

-- name: get_job
-- One job by id (optionally only if it belongs to owner).
SELECT * FROM geo_jobs WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner = %(owner)s);

-- name: list_jobs
-- The newest jobs, optionally of one status, one task and one owner, a page at a time.
SELECT * FROM geo_jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(owner)s::text IS NULL OR owner = %(owner)s)
  AND (%(task)s::text IS NULL OR task_type = %(task)s)
ORDER BY created_at DESC, id
LIMIT %(limit)s OFFSET %(offset)s;

-- name: job_events
-- A job's history in order.
SELECT at, kind, message, worker, data FROM geo_job_events WHERE job_id = %(id)s ORDER BY id;

-- name: count_by_status
-- How many jobs are in each status.
SELECT status, count(*) AS n FROM geo_jobs GROUP BY status;

-- name: queue_summary
-- What an idle/drain check and the metrics need: claimable, waiting, running, oldest claimable age.
SELECT count(*) FILTER (WHERE status = 'queued' AND run_at <= now()) AS ready,
       count(*) FILTER (WHERE status = 'queued' AND run_at > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'running') AS running,
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'queued' AND run_at <= now())), 0)
           AS oldest_ready_age
FROM geo_jobs WHERE status IN ('queued', 'running');

-- name: throughput
-- Jobs finished per status over the last window.
SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'cancelled') AS cancelled
FROM geo_jobs WHERE finished_at > now() - make_interval(secs => %(window)s);

-- name: durations_by_task
-- Duration percentiles (seconds, last attempt) of jobs that succeeded in the window, by task.
SELECT task_type, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) AS p95,
       max(extract(epoch FROM finished_at - started_at)) AS max
FROM geo_jobs
WHERE status = 'succeeded' AND finished_at > now() - make_interval(secs => %(window)s)
GROUP BY task_type ORDER BY task_type;

-- name: failure_reasons
-- Error codes of jobs that failed for good in the window.
SELECT error_code, count(*) AS n FROM geo_jobs
WHERE status = 'failed' AND finished_at > now() - make_interval(secs => %(window)s)
GROUP BY error_code ORDER BY n DESC;

-- name: finished_per_minute
-- Jobs that ended succeeded or failed in each of the last N minutes, this one included (oldest first).
SELECT m.minute,
       count(j.id) FILTER (WHERE j.status = 'succeeded') AS succeeded,
       count(j.id) FILTER (WHERE j.status = 'failed') AS failed
FROM generate_series(date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1),
                     date_trunc('minute', now()), interval '1 minute') AS m(minute)
LEFT JOIN geo_jobs AS j
       ON j.finished_at >= m.minute AND j.finished_at < m.minute + interval '1 minute'
      AND j.status IN ('succeeded', 'failed')
GROUP BY m.minute ORDER BY m.minute;

-- name: recent_failures
-- The jobs that failed for good most recently, with their error.
SELECT id, task_type, error_code, last_error, attempts, finished_at, owner
FROM geo_jobs
WHERE status = 'failed' AND finished_at IS NOT NULL
ORDER BY finished_at DESC
LIMIT %(limit)s;

-- name: worker_board
-- Live processes with the running job each holds (locked_by is the truth; current_job lags a touch).
SELECT w.id, w.host, w.pid, w.kind, w.parent_id, w.started_at, w.last_seen, w.rss, w.jobs_done,
       j.id AS job_id, j.task_type AS job_task, j.progress AS job_progress,
       j.progress_message AS job_message, j.started_at AS job_started_at
FROM geo_workers AS w
LEFT JOIN LATERAL (
    SELECT id, task_type, progress, progress_message, started_at FROM geo_jobs
    WHERE status = 'running' AND locked_by = w.id
    ORDER BY started_at LIMIT 1
) AS j ON true
WHERE w.stopped_at IS NULL AND w.last_seen > now() - make_interval(secs => %(window)s)
ORDER BY w.host, w.kind DESC, w.started_at, w.id;

-- name: register_worker
-- Announce a process (supervisor, child or remote worker) that may hold jobs.
INSERT INTO geo_workers (id, host, pid, kind, parent_id)
VALUES (%(id)s, %(host)s, %(pid)s, %(kind)s, %(parent_id)s)
ON CONFLICT (id) DO UPDATE SET last_seen = now(), stopped_at = NULL;

-- name: touch_workers
-- Mark processes as alive now, with their memory, current job and jobs done.
UPDATE geo_workers AS w
SET last_seen = now(), rss = v.rss, current_job = v.current_job, jobs_done = v.jobs_done
FROM jsonb_to_recordset(%(workers)s) AS v(id text, rss bigint, current_job uuid, jobs_done integer)
WHERE w.id = v.id;

-- name: stop_workers
-- Mark processes as gone (clean exit or reaped), so the reaper need not wait for stale_after.
UPDATE geo_workers SET stopped_at = now(), current_job = NULL
WHERE id = ANY(%(ids)s) AND stopped_at IS NULL;

-- name: live_workers
-- Processes seen within the window, newest supervisors first.
SELECT id, host, pid, kind, parent_id, started_at, last_seen, rss, jobs_done, current_job
FROM geo_workers
WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => %(window)s)
ORDER BY host, kind DESC, started_at;

-- name: forget_workers
-- Delete worker rows that stopped (or vanished) long ago.
DELETE FROM geo_workers
WHERE coalesce(stopped_at, last_seen) < now() - make_interval(secs => %(older_than)s);
