"""Benchmark: the service (`geoworker run`) beside a bare psycopg2 loop, pgqueuer and procrastinate.

    .venv/bin/python bench/service.py [--dsn postgresql://postgres@127.0.0.1:5432/postgres]
                                      [--jobs 5000] [--rounds 3] [--submissions 120] [--kills 10]
                                      [--pgq-recovery-reps 2] [--proc-watch 45] [--json out.json]

Run it with geoworker's own interpreter. pgqueuer and procrastinate live in the benchmark's own
virtualenv, bench/.venv-peers (never geoworker dependencies); the script creates it on first use
with the pins in PEER_REQUIREMENTS, or by hand:

    python3 -m venv bench/.venv-peers && bench/.venv-peers/bin/pip install \\
        pgqueuer==1.6.0 'typer<0.29' procrastinate==3.10.0 'psycopg[binary]' asyncpg

(pgqueuer 1.6.0's `pgq run` fails with typer 0.29, hence the typer pin.)

Every system gets a fresh database of its own on the same server for every phase (created
through --dsn, dropped at the end, also on error or Ctrl-C), and runs as its own command-line
worker, as an operator would start it:

  geoworker   `geoworker run --concurrency 2` (`--drain` for the throughput run): a supervisor
              and 2 forked children; debug_tasks on, everything else at its default (LISTEN on,
              INFO logging to a file and to stderr, which goes to a file).
  bare loop   2 processes of a 30-line psycopg2 loop (this file, `_bare`): claim with
              UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1), COMMIT, run,
              UPDATE ... SET status = 'done', COMMIT; LISTEN/NOTIFY when idle. No history, no
              logging, no watchdog: the floor.
  pgqueuer    `pgq run service:pgq_factory --batch-size 1 --max-concurrent-tasks 2`
              (`--mode drain` for throughput): one asyncio process, asyncpg, LISTEN/NOTIFY on.
  procrastinate `procrastinate --app service.proc_app worker --concurrency 2 --listen-notify`
              (`--one-shot` for throughput): one asyncio process, psycopg 3.

Phases:

1. Noop throughput: --jobs noop jobs queued first (geoworker through JobQueue.enqueue_many),
   then the worker started and timed from start to exit (it exits once the queue is empty).
   "steady" is the rate between the 10th and the 90th percentile of the completion times
   the database recorded (geo_jobs.finished_at, the bare loop's done_at, pgqueuer_log's
   'successful' rows, procrastinate_events 'succeeded'): start-up and drain detection excluded.
   --rounds rounds (default 3), the order reversed every other round; medians reported, and the
   ratios as the median of the within-round ratios (other work on a shared machine moves the
   absolute figures more than the ratios). "client CPU" is the user+system time of the worker's
   whole process tree (getrusage of reaped children). A fifth column, "geoworker, lean", is a
   diagnostic, not a peer: logging.level = WARNING and max_jobs_per_child = 1000000.
2. Pickup latency on an idle, warmed-up worker: --submissions jobs, one at a time, each after a
   random 50-150 ms gap. Latency = the time.time() the task itself records when it starts minus
   the time.time() taken just before the enqueue call (same host, same clock). geoworker runs
   `geoworker run` with one extra task, `bench.stamp`, registered in the supervisor before it
   forks (so the children inherit it, as they do the debug tasks); the database's own view,
   started_at - created_at of the same jobs, is printed beside it.
3. Memory: after phase 2, the worker idle: RSS and USS (psutil) of each process.
4. Recovery: time from SIGKILL of the process running a job to the job being claimable again.
   geoworker (retry.backoff_base = 0, so the retry backoff adds nothing; the default of 10 s would
   add 5-10 s by design): a `debug.sleep` job with seconds=30, its child found through locked_by
   (host:tag:pid), SIGKILLed 0.3 s into the job; the job's retry_scheduled event (clock_timestamp())
   and run_at give the moment it became claimable; repeated --kills times.
   pgqueuer: its worker SIGKILLed mid-job, a second worker started at once; the job is re-picked
   once its heartbeat is older than --heartbeat-timeout (default 30 s). Both the eligibility
   (heartbeat + 30 s) and the observed re-run are reported.
   procrastinate: its worker SIGKILLed mid-job, a second worker started at once and watched for
   --proc-watch seconds: the job stays 'doing' (it is only found by JobManager.get_stalled_jobs()
   and retried by code the user writes; see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS_VENV = HERE / ".venv-peers"
PEER_PY = PEERS_VENV / "bin" / "python"
PEER_REQUIREMENTS = ["pgqueuer==1.6.0", "typer<0.29", "procrastinate==3.10.0", "psycopg[binary]", "asyncpg"]
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEMS = ("geoworker", "bare", "pgqueuer", "procrastinate")
LABEL = {"geoworker": "geoworker", "bare": "bare loop", "pgqueuer": "pgqueuer", "procrastinate": "procrastinate",
         "lean": "geoworker, lean³"}
# a diagnostic, throughput only: geoworker with the two defaults that cost most per noop job turned down
LEAN_CONFIG = {"worker": {"debug_tasks": True, "max_jobs_per_child": 1_000_000}, "logging": {"level": "WARNING"}}
CONCURRENCY = 2
GAP = (0.05, 0.15)  # seconds between latency submissions
RECOVERY_AIM = 2.0
MiB = 1024 * 1024


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def append_stamp(path: str, key: str, t: float) -> None:
    """What every benchmark task does first: record when it started (one O_APPEND line)."""
    with open(path, "a") as f:
        f.write(f"{key} {t:.6f}\n")


def read_stamps(path: str | Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.setdefault(parts[0], []).append(float(parts[1]))
    return out


# =============================================================================================
# Code that runs inside the workers (stdlib only at import time, so that the peers' venv can
# import this file as the module `service` without geoworker or psycopg2).
# =============================================================================================

# --- geoworker: one extra task, registered before the supervisor forks ------------------------


def register_geoworker_stamp() -> None:
    from geoworker import tasks
    from geoworker.tasks.params import COMMON, Schema

    path = os.environ["BENCH_STAMP_FILE"]

    def bench_stamp(ctx):
        """Record the moment the task starts (pickup latency), then succeed."""
        t = time.time()
        append_stamp(path, str(ctx.params.get("key")), t)
        return tasks.TaskResult(result={"t": t, "pid": os.getpid()})

    tasks.register(tasks.Task("bench.stamp", bench_stamp, COMMON + Schema(open=True), "pickup latency", debug=True))


def geoworker_stamp_main() -> int:
    """`python bench/service.py _geoworker ARGS`: geoworker's own CLI with bench.stamp registered."""
    register_geoworker_stamp()
    from geoworker.cli import main

    return main(sys.argv[2:])


# --- the bare loop -------------------------------------------------------------------------------

BARE_SCHEMA = """
CREATE TABLE bench_jobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL,
    key         text,
    seconds     float8      NOT NULL DEFAULT 0,
    status      text        NOT NULL DEFAULT 'queued',
    priority    integer     NOT NULL DEFAULT 0,
    run_at      timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    locked_by   text,
    started_at  timestamptz,
    done_at     timestamptz
);
CREATE INDEX bench_jobs_claim_idx ON bench_jobs (priority DESC, run_at, created_at) WHERE status = 'queued';
"""
BARE_CLAIM = """UPDATE bench_jobs SET status = 'running', locked_by = %s, started_at = now()
WHERE id = (SELECT id FROM bench_jobs WHERE status = 'queued' AND run_at <= now()
            ORDER BY priority DESC, run_at, created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, kind, key, seconds"""
BARE_DONE = """UPDATE bench_jobs SET status = 'done', locked_by = NULL, done_at = now()
WHERE id = %s AND status = 'running' AND locked_by = %s"""
BARE_ENQUEUE = """WITH j AS (INSERT INTO bench_jobs (kind, key, seconds) VALUES (%s, %s, %s) RETURNING id)
SELECT pg_notify('bench_jobs', j.id::text) FROM j"""


def bare_main() -> int:
    """`python bench/service.py _bare DSN drain|wait STAMP_FILE`: one bare-loop worker process."""
    import psycopg2

    dsn, mode, stamp_file = sys.argv[2], sys.argv[3], sys.argv[4]
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    conn = psycopg2.connect(dsn, application_name="bench-bare")
    conn.autocommit = True  # each statement is its own transaction: two commits per job
    cur = conn.cursor()
    cur.execute("LISTEN bench_jobs")
    me = f"bare:{os.getpid()}"
    while True:
        cur.execute(BARE_CLAIM, (me,))
        row = cur.fetchone()
        if row is None:
            if mode == "drain":
                return 0
            if not conn.notifies:
                select.select([conn], [], [], 1.0)
            conn.poll()
            conn.notifies.clear()
            continue
        job_id, kind, key, seconds = row
        if kind != "noop":
            append_stamp(stamp_file, key, time.time())
            if seconds:
                time.sleep(seconds)
        cur.execute(BARE_DONE, (job_id, me))


# --- pgqueuer: the factory `pgq run service:pgq_factory` loads -----------------------------------


@contextlib.asynccontextmanager
async def pgq_factory():
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver

    stamp_file = os.environ["BENCH_STAMP_FILE"]
    conn = await asyncpg.connect(os.environ["BENCH_DSN"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job) -> None:
        pass

    @pgq.entrypoint("stamp")
    async def stamp(job) -> None:
        t = time.time()
        key, _, seconds = job.payload.decode().partition(" ")
        append_stamp(stamp_file, key, t)
        if seconds:
            await asyncio.sleep(float(seconds))

    try:
        yield pgq
    finally:
        await conn.close()


# --- procrastinate: `procrastinate --app service.proc_app` -------------------------------------

_PROC_APP = None


def _build_proc_app():
    import procrastinate

    global _PROC_APP
    if _PROC_APP is None:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_DSN"]))
        stamp_file = os.environ.get("BENCH_STAMP_FILE", os.devnull)

        @app.task(name="noop")
        async def noop() -> None:
            pass

        @app.task(name="stamp")
        async def stamp(key: str, seconds: float = 0) -> None:
            append_stamp(stamp_file, key, time.time())
            if seconds:
                await asyncio.sleep(seconds)

        _PROC_APP = app
    return _PROC_APP


def __getattr__(name: str):  # PEP 562: `service.proc_app` is built on first use, in the peers' venv only
    if name == "proc_app":
        return _build_proc_app()
    raise AttributeError(name)


# --- peer-side client commands (run with the peers' interpreter) ---------------------------------


async def _peer_client(argv: list[str]) -> None:
    """`bench/.venv-peers/bin/python bench/service.py _peer SYSTEM ACTION ...`; prints JSON."""
    system, action = argv[0], argv[1]
    dsn = os.environ["BENCH_DSN"]
    if system == "pgqueuer":
        import asyncpg
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        conn = await asyncpg.connect(dsn)
        q = Queries(AsyncpgDriver(conn))

        async def enqueue_one(key: str, seconds: float = 0):
            payload = f"{key} {seconds:g}" if seconds else key
            await q.enqueue("stamp", payload.encode())

        async def enqueue_noops(n: int):
            for start in range(0, n, 1000):
                m = min(1000, n - start)
                await q.enqueue(["noop"] * m, [None] * m, [0] * m)
    else:
        app = _build_proc_app()
        await app.open_async()
        noop, stamp = app.tasks["noop"], app.tasks["stamp"]

        async def enqueue_one(key: str, seconds: float = 0):
            await stamp.defer_async(key=key, seconds=seconds)

        async def enqueue_noops(n: int):
            for start in range(0, n, 1000):
                await noop.batch_defer_async(*[{} for _ in range(min(1000, n - start))])

    if action == "noops":
        await enqueue_noops(int(argv[2]))
        print(json.dumps({"enqueued": int(argv[2])}))
    elif action == "one":
        await enqueue_one(argv[2], float(argv[3]) if len(argv) > 3 else 0)
        print(json.dumps({"enqueued": argv[2]}))
    elif action == "latency":
        n, seed = int(argv[2]), int(argv[3])
        print(json.dumps(await _latency_driver(enqueue_one, n, seed)))
    elif action == "stalled":
        jobs = await app.job_manager.get_stalled_jobs()
        print(json.dumps({"stalled": [j.id for j in jobs]}))
    else:
        raise SystemExit(f"unknown action {action}")


async def _latency_driver(enqueue_one, n: int, seed: int) -> dict[str, float]:
    """Submit n jobs one at a time with a random gap; returns key -> time.time() just before enqueue."""
    rng = random.Random(seed)
    submitted = {}
    for i in range(n):
        key = f"L{i}"
        submitted[key] = time.time()
        await enqueue_one(key)
        await asyncio.sleep(rng.uniform(*GAP))
    return submitted


# =============================================================================================
# The driver (geoworker's interpreter)
# =============================================================================================


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def steady_rate(times: list[float]) -> float:
    """Jobs/s between the 10th and the 90th percentile of completion times."""
    ts = sorted(times)
    lo, hi = int(len(ts) * 0.10), int(len(ts) * 0.90) - 1
    return (hi - lo) / (ts[hi] - ts[lo]) if ts[hi] > ts[lo] else float("nan")


def dsn_with_db(dsn: str, name: str) -> str:
    """The same server, another database, as a URL (asyncpg takes URLs only)."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in dsn:
        raise SystemExit("--dsn must be a URL: postgresql://user@host:port/db")
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


def live(procs: list) -> list:
    """The processes of a psutil list that still run (one may exit while we look)."""
    import psutil

    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def ensure_peers_venv() -> None:
    if PEER_PY.exists():
        return
    log(f"creating {PEERS_VENV} with {' '.join(PEER_REQUIREMENTS)}")
    base = getattr(sys, "_base_executable", None) or "python3"
    subprocess.run([base, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_VENV / "bin" / "pip"), "install", "-q", *PEER_REQUIREMENTS], check=True)


class Bench:
    def __init__(self, args):
        import psycopg2
        import psycopg2.extensions

        self.args = args
        self.psycopg2 = psycopg2
        self.admin = psycopg2.connect(args.dsn, application_name="bench-service-admin")
        self.admin.autocommit = True
        self.dbs: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_service_"))
        self.results: dict = {"throughput": {}, "latency": {}, "memory": {}, "recovery": {}}
        self.base_env = {k: v for k, v in os.environ.items()
                         if not k.startswith(("PG", "GEOWORKER_", "PROCRASTINATE_")) and k != "DATABASE_URL"}

    # --- plumbing -------------------------------------------------------------------------------

    def new_db(self, system: str) -> str:
        name = f"bench_svc_{system}_{os.getpid()}_{len(self.dbs)}"
        with self.admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        self.dbs.append(name)
        dsn = dsn_with_db(self.args.dsn, name)
        self.setup_schema(system, dsn)
        return dsn

    def setup_schema(self, system: str, dsn: str) -> None:
        if system == "geoworker":
            from geoworker import db

            conn = db.connect(dsn)
            try:
                db.migrate(conn)
            finally:
                conn.close()
        elif system == "bare":
            self.sql(dsn, BARE_SCHEMA)
        elif system == "pgqueuer":
            subprocess.run([str(PEERS_VENV / "bin" / "pgq"), "--pg-dsn", dsn, "install"], check=True,
                           capture_output=True, env=self.peer_env(dsn, os.devnull))
        elif system == "procrastinate":
            subprocess.run([str(PEERS_VENV / "bin" / "procrastinate"), "--app", "service.proc_app", "schema",
                            "--apply"], check=True, capture_output=True, env=self.peer_env(dsn, os.devnull))

    def sql(self, dsn: str, query: str, params=None) -> list[tuple]:
        conn = self.psycopg2.connect(dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def peer_env(self, dsn: str, stamp_file: str | Path) -> dict:
        return {**self.base_env, "BENCH_DSN": dsn, "PGDSN": dsn, "BENCH_STAMP_FILE": str(stamp_file),
                "PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1"}

    def geoworker_env(self, dsn: str, stamp_file: str | Path, config: dict, name: str) -> dict:
        cfg = self.tmp / f"{name}.toml"
        lines = []
        for section, values in config.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        cfg.write_text("\n".join(lines) + "\n")
        work = self.tmp / name
        return {**self.base_env, "DATABASE_URL": dsn, "GEOWORKER_CONFIG": str(cfg),
                "GEOWORKER_LOGGING_FILE": str(work / "worker.log"),
                "GEOWORKER_STORAGE_ROOT": str(work / "storage"), "GEOWORKER_STORAGE_TEMP_DIR": str(work / "tmp"),
                "GEOWORKER_METRICS_PORT": "0", "BENCH_STAMP_FILE": str(stamp_file), "PYTHONUNBUFFERED": "1"}

    def start(self, cmd: list[str], env: dict, name: str) -> subprocess.Popen:
        out = open(self.tmp / f"{name}.out", "ab")
        proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdout=out, stderr=out, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc

    def start_worker(self, system: str, dsn: str, stamp_file: Path, drain: bool, name: str,
                     geoworker_config: dict | None = None, stamp_task: bool = True) -> list[subprocess.Popen]:
        """The system's worker as an operator starts it; returns its top-level processes."""
        if system == "geoworker":
            config = geoworker_config or {"worker": {"debug_tasks": True}}
            env = self.geoworker_env(dsn, stamp_file, config, name)
            args = ["run", "--concurrency", str(CONCURRENCY)] + (["--drain"] if drain else [])
            if stamp_task:
                cmd = [sys.executable, str(Path(__file__).resolve()), "_geoworker", *args]
            else:
                cmd = [sys.executable, "-m", "geoworker", *args]
            return [self.start(cmd, env, name)]
        if system == "bare":
            cmd = [sys.executable, str(Path(__file__).resolve()), "_bare", dsn, "drain" if drain else "wait",
                   str(stamp_file)]
            return [self.start(cmd, self.base_env, f"{name}-{i}") for i in range(CONCURRENCY)]
        env = self.peer_env(dsn, stamp_file)
        if system == "pgqueuer":
            cmd = [str(PEERS_VENV / "bin" / "pgq"), "run", "service:pgq_factory", "--batch-size", "1",
                   "--max-concurrent-tasks", str(CONCURRENCY), "--mode", "drain" if drain else "continuous"]
            return [self.start(cmd, env, name)]
        cmd = [str(PEERS_VENV / "bin" / "procrastinate"), "--app", "service.proc_app", "worker",
               "--concurrency", str(CONCURRENCY), "--listen-notify", "--one-shot" if drain else "--wait"]
        return [self.start(cmd, env, name)]

    def peer(self, system: str, dsn: str, *argv: str) -> dict:
        out = subprocess.run([str(PEER_PY), str(Path(__file__).resolve()), "_peer", system, *argv],
                             env=self.peer_env(dsn, os.devnull), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"peer helper {system} {argv[0]} failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def stop(self, procs: list[subprocess.Popen], sig=signal.SIGKILL) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)  # its own session: the worker and whatever it forked
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)

    def close(self) -> None:
        self.stop(self.procs)
        for name in self.dbs:
            with contextlib.suppress(Exception), self.admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.admin.close()
        if not self.args.keep_temp:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)

    def enqueue_noops(self, system: str, dsn: str, n: int) -> None:
        if system == "geoworker":
            from geoworker.jobs import JobQueue

            q = JobQueue(dsn, worker_id="bench")
            for start in range(0, n, 1000):
                q.enqueue_many("debug.noop", [{}] * min(1000, n - start))
            q.close()
        elif system == "bare":
            self.sql(dsn, "INSERT INTO bench_jobs (kind) SELECT 'noop' FROM generate_series(1, %s)", (n,))
        else:
            self.peer(system, dsn, "noops", str(n))
        self.sql(dsn, "VACUUM ANALYZE")
        self.sql(dsn, "CHECKPOINT")

    def completion_times(self, system: str, dsn: str) -> list[float]:
        query = {
            "geoworker": "SELECT extract(epoch FROM finished_at) FROM geo_jobs WHERE status = 'succeeded'",
            "bare": "SELECT extract(epoch FROM done_at) FROM bench_jobs WHERE status = 'done'",
            "pgqueuer": "SELECT extract(epoch FROM created) FROM pgqueuer_log WHERE status = 'successful'",
            "procrastinate": "SELECT extract(epoch FROM at) FROM procrastinate_events WHERE type = 'succeeded'",
        }[system]
        return [float(r[0]) for r in self.sql(dsn, query)]

    # --- 1. throughput ------------------------------------------------------------------------------

    def throughput(self, system: str, rnd: int) -> dict:
        n = self.args.jobs
        config = LEAN_CONFIG if system == "lean" else None
        label, system = system, ("geoworker" if system == "lean" else system)
        dsn = self.new_db(system)
        self.enqueue_noops(system, dsn, n)
        stamp = self.tmp / f"tp-{label}-{rnd}.stamps"
        import resource

        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        procs = self.start_worker(system, dsn, stamp, drain=True, name=f"tp-{label}-{rnd}", stamp_task=False,
                                  geoworker_config=config)
        deadline = time.monotonic() + self.args.timeout
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.stop(procs)
                raise RuntimeError(f"{system} did not drain {n} jobs within {self.args.timeout} s")
        elapsed = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker's whole process tree, reaped
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        times = self.completion_times(system, dsn)
        if len(times) != n or any(codes):
            raise RuntimeError(f"{system}: {len(times)} of {n} jobs done, exit codes {codes}; see {self.tmp}")
        return {"jobs": n, "seconds": elapsed, "total_rate": n / elapsed, "steady_rate": steady_rate(times),
                "load": os.getloadavg()[0],
                "first_to_last": max(times) - min(times), "cpu_ms_per_job": cpu * 1000 / n}

    # --- 2. latency and 3. memory ---------------------------------------------------------------------

    def latency_and_memory(self, system: str) -> tuple[dict, dict]:
        dsn = self.new_db(system)
        stamp = self.tmp / f"lat-{system}.stamps"
        procs = self.start_worker(system, dsn, stamp, drain=False, name=f"lat-{system}")
        try:
            # warm-up: the worker is up, connected and listening once these have run
            warm = [f"W{i}" for i in range(5)]
            for key in warm:
                self.submit_one(system, dsn, key)
                self.wait_stamps(stamp, [key], 60)
            time.sleep(1.0)
            n, seed = self.args.submissions, self.args.seed
            if system in ("pgqueuer", "procrastinate"):
                submitted = self.peer(system, dsn, "latency", str(n), str(seed))
            else:
                submitted = asyncio.run(_latency_driver(self.submitter(system, dsn), n, seed))
            stamps = self.wait_stamps(stamp, list(submitted), 60)
            lat = [(stamps[k][0] - t0) * 1000 for k, t0 in submitted.items()]
            out = {"n": len(lat), "p50": pct(lat, 50), "p95": pct(lat, 95), "max": max(lat),
                   "mean": statistics.fmean(lat)}
            if system == "geoworker":
                # where the time goes, on one clock: submit -> insert's now() -> claim's now() -> task start
                rows = self.sql(dsn, "SELECT params->>'key', extract(epoch FROM created_at), "
                                     "extract(epoch FROM started_at) FROM geo_jobs "
                                     "WHERE task_type = 'bench.stamp' AND params->>'key' LIKE 'L%%'")
                split = {"submit_to_insert": [], "insert_to_claim": [], "claim_to_task": []}
                for key, created, claimed in rows:
                    split["submit_to_insert"].append((float(created) - submitted[key]) * 1000)
                    split["insert_to_claim"].append((float(claimed) - float(created)) * 1000)
                    split["claim_to_task"].append((stamps[key][0] - float(claimed)) * 1000)
                out["split_p50"] = {k: pct(v, 50) for k, v in split.items()}
                out["db_p50"], out["db_p95"] = pct(split["insert_to_claim"], 50), pct(split["insert_to_claim"], 95)
            time.sleep(2.0)  # idle: let the supervisor's housekeeping run
            mem = self.memory(system, procs)
        finally:
            self.stop(procs)
        return out, mem

    def submitter(self, system: str, dsn: str):
        if system == "geoworker":
            from geoworker.jobs import JobQueue

            q = JobQueue(dsn, worker_id="bench")
            q.ping()

            async def one(key: str, seconds: float = 0):
                q.enqueue("bench.stamp", {"key": key})
            return one
        conn = self.psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()

        async def one(key: str, seconds: float = 0):
            cur.execute(BARE_ENQUEUE, ("stamp", key, seconds))
        return one

    def submit_one(self, system: str, dsn: str, key: str, seconds: float = 0) -> None:
        if system in ("pgqueuer", "procrastinate"):
            self.peer(system, dsn, "one", key, str(seconds))
        else:
            asyncio.run(self.submitter(system, dsn)(key, seconds))

    @staticmethod
    def wait_stamps(path: Path, keys: list[str], timeout: float, count: int = 1) -> dict[str, list[float]]:
        deadline = time.monotonic() + timeout
        while True:
            stamps = read_stamps(path)
            if all(len(stamps.get(k, [])) >= count for k in keys):
                return stamps
            if time.monotonic() > deadline:
                missing = [k for k in keys if len(stamps.get(k, [])) < count]
                raise RuntimeError(f"timed out waiting for {len(missing)} task starts in {path} ({missing[:5]})")
            time.sleep(0.01)

    def memory(self, system: str, procs: list[subprocess.Popen]) -> dict:
        import psutil

        def usage(p: psutil.Process) -> dict:
            full = p.memory_full_info()
            return {"pid": p.pid, "rss": full.rss / MiB, "uss": full.uss / MiB, "pss": full.pss / MiB}

        if system == "geoworker":
            sup = psutil.Process(procs[0].pid)
            kids = [usage(c) for c in live(sup.children())]
            main = usage(sup)
            total_rss = main["rss"] + sum(k["rss"] for k in kids)
            total_uss = main["uss"] + sum(k["uss"] for k in kids)
            return {"main": main, "children": kids, "total_rss": total_rss, "total_uss": total_uss,
                    "processes": 1 + len(kids)}
        if system == "bare":
            each = [usage(psutil.Process(p.pid)) for p in procs]
            return {"main": each[0], "children": each[1:], "total_rss": sum(e["rss"] for e in each),
                    "total_uss": sum(e["uss"] for e in each), "processes": len(each)}
        main = psutil.Process(procs[0].pid)
        kids = [usage(c) for c in main.children(recursive=True)]
        m = usage(main)
        return {"main": m, "children": kids, "total_rss": m["rss"] + sum(k["rss"] for k in kids),
                "total_uss": m["uss"] + sum(k["uss"] for k in kids), "processes": 1 + len(kids)}

    # --- 4. recovery ------------------------------------------------------------------------------

    def recovery_geoworker(self) -> dict:
        import psutil
        from geoworker.jobs import JobQueue

        dsn = self.new_db("geoworker")
        config = {"worker": {"debug_tasks": True}, "retry": {"backoff_base": 0.0, "backoff_max": 0.0}}
        procs = self.start_worker("geoworker", dsn, self.tmp / "rec-gw.stamps", drain=False, name="rec-geoworker",
                                  geoworker_config=config, stamp_task=False)
        sup = psutil.Process(procs[0].pid)
        q = JobQueue(dsn, worker_id="bench")
        conn = self.psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()

        def one_row(query, params):
            cur.execute(query, params)
            return cur.fetchone()

        def live_children() -> list:
            return live(sup.children())

        samples, observed = [], []
        try:
            self._wait(lambda: len(live_children()) == CONCURRENCY, 30, "2 children")
            time.sleep(1.0)
            for i in range(self.args.kills):
                job = q.enqueue("debug.sleep", {"seconds": 30}, max_attempts=5)
                row = self._wait(lambda: (lambda r: r if r[0] == "running" else None)(
                    one_row("SELECT status, locked_by FROM geo_jobs WHERE id = %s", (job.id,))), 30, "the job to run")
                holder = row[1]
                pid = int(holder.rsplit(":", 1)[1])
                assert pid in {c.pid for c in live_children()}, f"{pid} is not a child of the supervisor"
                time.sleep(0.3)  # mid-job
                t_kill = time.time()
                os.kill(pid, signal.SIGKILL)
                # claimable again: queued and due, or already claimed again by another child
                self._wait(lambda: one_row(
                    "SELECT 1 FROM geo_jobs WHERE id = %s AND ((status = 'queued' AND run_at <= now()) "
                    "OR (status = 'running' AND locked_by <> %s))", (job.id, holder)), 10, "the job to be requeued",
                    interval=0.002)
                observed.append(time.time() - t_kill)
                at, run_at = one_row(
                    "SELECT extract(epoch FROM at), extract(epoch FROM (data->>'run_at')::timestamptz) "
                    "FROM geo_job_events WHERE job_id = %s AND kind = 'retry_scheduled' ORDER BY id LIMIT 1",
                    (job.id,))
                samples.append(max(float(at), float(run_at)) - t_kill)
                q.cancel(job.id, reason="benchmark")  # frees the child that picked it up again
                self._wait(lambda: one_row("SELECT count(*) = 0 FROM geo_jobs WHERE status = 'running'", ())[0],
                           30, "no running job")
                self._wait(lambda: len(live_children()) == CONCURRENCY, 30, "2 children")
                time.sleep(0.5)
                log(f"  geoworker kill {i + 1}: claimable after {samples[-1] * 1000:.1f} ms "
                    f"(seen by polling after {observed[-1] * 1000:.1f} ms)")
        finally:
            q.close()
            conn.close()
            self.stop(procs)
        return {"n": len(samples), "median": statistics.median(samples), "max": max(samples),
                "observed_median": statistics.median(observed), "observed_max": max(observed), "samples": samples}

    @staticmethod
    def _wait(predicate, timeout: float, what: str, interval: float = 0.01):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(interval)

    def start_procrastinate_stall(self) -> dict:
        dsn = self.new_db("procrastinate")
        stamp = self.tmp / "rec-proc.stamps"
        a = self.start_worker("procrastinate", dsn, stamp, drain=False, name="rec-proc-a")
        self.submit_one("procrastinate", dsn, "Wp")
        self.wait_stamps(stamp, ["Wp"], 60)
        self.submit_one("procrastinate", dsn, "R", 600)
        self.wait_stamps(stamp, ["R"], 60)
        time.sleep(0.3)
        t_kill = time.time()
        self.stop(a)
        b = self.start_worker("procrastinate", dsn, stamp, drain=False, name="rec-proc-b")
        return {"dsn": dsn, "stamp": stamp, "t_kill": t_kill, "procs": b}

    def finish_procrastinate_stall(self, state: dict) -> dict:
        left = state["t_kill"] + self.args.proc_watch - time.time()
        if left > 0:
            time.sleep(left)
        watched = time.time() - state["t_kill"]
        status = self.sql(state["dsn"], "SELECT status::text FROM procrastinate_jobs WHERE task_name = 'stamp' "
                                        "AND args->>'key' = 'R'")[0][0]
        reruns = len(read_stamps(state["stamp"]).get("R", [])) - 1
        stalled = self.peer("procrastinate", state["dsn"], "stalled")["stalled"]
        self.stop(state["procs"])
        return {"watched": watched, "status": status, "reruns": reruns, "found_by_get_stalled_jobs": len(stalled)}

    def recovery_pgqueuer(self, rep: int) -> dict:
        dsn = self.new_db("pgqueuer")
        stamp = self.tmp / f"rec-pgq-{rep}.stamps"
        a = self.start_worker("pgqueuer", dsn, stamp, drain=False, name=f"rec-pgq-a{rep}")
        b = []
        try:
            self.submit_one("pgqueuer", dsn, "Wq")
            self.wait_stamps(stamp, ["Wq"], 60)
            self.submit_one("pgqueuer", dsn, "R", 600)
            self.wait_stamps(stamp, ["R"], 60)
            time.sleep(0.3)
            t_kill = time.time()
            self.stop(a)
            heartbeat = float(self.sql(dsn, "SELECT extract(epoch FROM heartbeat) FROM pgqueuer "
                                            "WHERE entrypoint = 'stamp' AND status = 'picked'")[0][0])
            b = self.start_worker("pgqueuer", dsn, stamp, drain=False, name=f"rec-pgq-b{rep}")
            stamps = self.wait_stamps(stamp, ["R"], 120, count=2)
            return {"eligible": heartbeat + 30.0 - t_kill, "rerun": stamps["R"][1] - t_kill}
        finally:
            self.stop(a + b)

    # --- the whole run ----------------------------------------------------------------------------

    def run(self) -> dict:
        a = self.args
        started = time.monotonic()
        log(f"temp dir {self.tmp}")
        order = list(SYSTEMS) + (["lean"] if a.lean else [])
        for rnd in range(a.rounds if "throughput" in a.phases else 0):
            for system in (order if rnd % 2 == 0 else order[::-1]):
                log(f"throughput round {rnd + 1}: {system} ...")
                r = self.throughput(system, rnd)
                self.results["throughput"].setdefault(system, []).append(r)
                log(f"  {r['seconds']:.2f} s start to exit, {r['total_rate']:.0f} jobs/s; steady {r['steady_rate']:.0f} "
                    f"jobs/s; {r['cpu_ms_per_job']:.2f} ms CPU per job")
        for system in (SYSTEMS if "latency" in a.phases else ()):
            log(f"pickup latency and memory: {system} ...")
            lat, mem = self.latency_and_memory(system)
            self.results["latency"][system] = lat
            self.results["memory"][system] = mem
            log(f"  p50 {lat['p50']:.2f} ms, p95 {lat['p95']:.2f} ms, max {lat['max']:.2f} ms; "
                f"RSS {mem['main']['rss']:.1f} MiB main")
        if "recovery" not in a.phases:
            self.results["wall_seconds"] = time.monotonic() - started
            return self.results
        log("recovery: geoworker ...")
        self.results["recovery"]["geoworker"] = self.recovery_geoworker()
        if a.pgq_recovery_reps or a.proc_watch:
            proc_state = None
            if a.proc_watch:
                log(f"recovery: procrastinate (killed; watching a second worker for {a.proc_watch:g} s) ...")
                proc_state = self.start_procrastinate_stall()
            reps = []
            for rep in range(a.pgq_recovery_reps):
                log(f"recovery: pgqueuer {rep + 1} (waits for its 30 s heartbeat timeout) ...")
                reps.append(self.recovery_pgqueuer(rep))
                log(f"  eligible after {reps[-1]['eligible']:.1f} s, re-run after {reps[-1]['rerun']:.1f} s")
            if reps:
                self.results["recovery"]["pgqueuer"] = {
                    "n": len(reps), "median": statistics.median(r["eligible"] for r in reps),
                    "max": max(r["eligible"] for r in reps),
                    "rerun_median": statistics.median(r["rerun"] for r in reps),
                    "rerun_max": max(r["rerun"] for r in reps), "samples": reps}
            if proc_state:
                self.results["recovery"]["procrastinate"] = self.finish_procrastinate_stall(proc_state)
        self.results["wall_seconds"] = time.monotonic() - started
        return self.results


# --- report ------------------------------------------------------------------------------------


def machine_facts(admin_dsn: str) -> dict:
    import psutil
    import psycopg2

    conn = psycopg2.connect(admin_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
                    "current_setting('shared_buffers')")
        pg_version, sync_commit, shared_buffers = cur.fetchone()
    conn.close()
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    peers = subprocess.run([str(PEER_PY), "-c", "import importlib.metadata as m, json; print(json.dumps("
                            "{p: m.version(p) for p in ('pgqueuer', 'procrastinate', 'typer', 'asyncpg', 'psycopg')}))"],
                           capture_output=True, text=True, check=True)
    import geoworker
    import psycopg2 as p2

    tree = Path(geoworker.__file__).resolve().parent.parent  # the geoworker that ran (PYTHONPATH may point elsewhere)
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no", "geoworker"],
                           capture_output=True, text=True).stdout.split()[1::2]
    if dirty:
        commit += " + uncommitted " + ", ".join(dirty)
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 1024 ** 3, 1),
            "kernel": platform.release(), "python": platform.python_version(), "postgresql": pg_version,
            "synchronous_commit": sync_commit, "shared_buffers": shared_buffers,
            "geoworker": getattr(geoworker, "__version__", "?"), "geoworker_commit": commit,
            "psycopg2": p2.__version__.split()[0], "peers": json.loads(peers.stdout)}


def median_of(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def report(res: dict, facts: dict, args) -> tuple[str, bool]:
    """The table and the verdicts, as markdown-friendly text; returns (text, all aims met)."""
    tp, lat, mem, rec = res["throughput"], res["latency"], res["memory"], res["recovery"]
    cols = [s for s in SYSTEMS]
    head = "| | " + " | ".join(LABEL[s] for s in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    lines = []
    rounds = len(next(iter(tp.values())))
    lines.append(f"Noop throughput: {args.jobs:,} queued noop jobs drained at concurrency {CONCURRENCY}"
                 + (f" (median of {rounds} rounds)" if rounds > 1 else ""))
    tcols = cols + (["lean"] if "lean" in tp else [])
    lines += ["", "| | " + " | ".join(LABEL[s] for s in tcols) + " |", "|---|" + "---:|" * len(tcols)]
    cols, all_cols = tcols, cols
    total = {s: median_of(tp[s], "total_rate") for s in cols}
    steady = {s: median_of(tp[s], "steady_rate") for s in cols}
    # ratios: the median over rounds of the ratio within a round (the machine's load moves less within one)
    r_total = {s: statistics.median(g["total_rate"] / o["total_rate"] for g, o in zip(tp["geoworker"], tp[s]))
               for s in cols}
    r_steady = {s: statistics.median(g["steady_rate"] / o["steady_rate"] for g, o in zip(tp["geoworker"], tp[s]))
                for s in cols}
    lines.append("| start to exit (s) | " + " | ".join(f"{median_of(tp[s], 'seconds'):.2f}" for s in cols) + " |")
    lines.append("| jobs/s, start to exit | " + " | ".join(f"{total[s]:,.0f}" for s in cols) + " |")
    lines.append("| jobs/s, steady state | " + " | ".join(f"{steady[s]:,.0f}" for s in cols) + " |")
    lines.append("| client CPU ms per job² | " + " | ".join(f"{median_of(tp[s], 'cpu_ms_per_job'):.2f}" for s in cols) + " |")
    lines.append("| geoworker ÷ this, start to exit | " + " | ".join(f"{r_total[s]:.2f}" for s in cols) + " |")
    lines.append("| geoworker ÷ this, steady state | " + " | ".join(f"{r_steady[s]:.2f}" for s in cols) + " |")
    lines.append("")
    lines.append("² user + system CPU of the worker's whole process tree (not PostgreSQL's), per job. "
                 "Ratios: median over rounds of the ratio within the round. Load average (1 min) at the end of "
                 "each run: " + ", ".join(f"{LABEL[s]} " + "/".join(f"{r['load']:.1f}" for r in tp[s]) for s in cols)
                 + ".")
    if "lean" in tp:
        lines.append("³ Not a peer: the same geoworker with logging.level = \"WARNING\" (no per-job log lines "
                     "relayed through the supervisor) and worker.max_jobs_per_child = 1000000 (no child recycled "
                     "every 100 jobs), to show what those two defaults cost on noop jobs. The aims are judged on "
                     "the default configuration.")
    cols = all_cols
    lines += ["", f"Pickup latency on an idle worker, submit to task start (ms), {lat['geoworker']['n']} "
                  f"submissions one at a time, {GAP[0] * 1000:.0f}-{GAP[1] * 1000:.0f} ms apart", "", head, sep]
    for key in ("p50", "p95", "max", "mean"):
        lines.append(f"| {key} | " + " | ".join(f"{lat[s][key]:.2f}" for s in cols) + " |")
    lines.append("| geoworker p95 ÷ this p95 | " + " | ".join(f"{lat['geoworker']['p95'] / lat[s]['p95']:.2f}" for s in cols) + " |")
    sp = lat["geoworker"].get("split_p50")
    if sp:
        lines += ["", f"geoworker's pickup on one clock (medians, ms): submit -> INSERT's now() {sp['submit_to_insert']:.2f}; "
                      f"-> the claim's now() (commit, NOTIFY, wake-up) {sp['insert_to_claim']:.2f}; -> the task running "
                      f"(claim, commit, child's set-up) {sp['claim_to_task']:.2f}. Database view, geo_jobs.started_at - "
                      f"created_at: p50 {lat['geoworker']['db_p50']:.2f}, p95 {lat['geoworker']['db_p95']:.2f}."]
    lines += ["", "Memory of the idle worker after those jobs (MiB; USS = pages only this process maps, PSS = "
                  "shared pages split among the processes that map them)", "", head, sep]
    lines.append("| processes | " + " | ".join(str(mem[s]["processes"]) for s in cols) + " |")
    lines.append("| RSS, main process¹ | " + " | ".join(f"{mem[s]['main']['rss']:.1f}" for s in cols) + " |")
    lines.append("| USS, main process¹ | " + " | ".join(f"{mem[s]['main']['uss']:.1f}" for s in cols) + " |")
    gk = mem["geoworker"]["children"]
    lines.append("| RSS, idle child | " + " | ".join(
        (f"{statistics.fmean(c['rss'] for c in gk):.1f}" if s == "geoworker" and gk else "—") for s in cols) + " |")
    lines.append("| USS, idle child | " + " | ".join(
        (f"{statistics.fmean(c['uss'] for c in gk):.1f}" if s == "geoworker" and gk else "—") for s in cols) + " |")
    lines.append("| RSS, all processes | " + " | ".join(f"{mem[s]['total_rss']:.1f}" for s in cols) + " |")
    lines.append("| USS, all processes | " + " | ".join(f"{mem[s]['total_uss']:.1f}" for s in cols) + " |")
    lines.append("| PSS, all processes | " + " | ".join(
        f"{mem[s]['main']['pss'] + sum(c['pss'] for c in mem[s]['children']):.1f}" for s in cols) + " |")
    lines.append("")
    lines.append("¹ geoworker: the supervisor; bare loop: one of its 2 processes; pgqueuer and procrastinate: "
                 "their one worker process.")
    g = rec["geoworker"]
    lines += ["", "Recovery: SIGKILL of the process running a job -> the job claimable again (s)", "",
              "| | geoworker | pgqueuer | procrastinate |", "|---|---:|---:|---:|"]
    p = rec.get("pgqueuer")
    pr = rec.get("procrastinate")
    pq_med = f"{p['median']:.1f} (re-run {p['rerun_median']:.1f})" if p else "30 (default heartbeat_timeout)"
    pq_max = f"{p['max']:.1f} (re-run {p['rerun_max']:.1f})" if p else "—"
    pr_txt = (f"never: still '{pr['status']}' after {pr['watched']:.0f} s" if pr and pr["status"] == "doing"
              and pr["reruns"] == 0 else ("never (documented)" if not pr else f"{pr['status']}, {pr['reruns']} re-runs"))
    lines.append(f"| kills | {g['n']} | {p['n'] if p else 0} | {1 if pr else 0} |")
    lines.append(f"| median | {g['median']:.3f} | {pq_med} | {pr_txt} |")
    lines.append(f"| max | {g['max']:.3f} | {pq_max} | |")
    lines.append(f"| geoworker, seen by a 2 ms poll: median / max | {g['observed_median']:.3f} / {g['observed_max']:.3f} | | |")

    verdicts = []
    tp_ok = all(r_total[s] > 1 and r_steady[s] > 1 for s in ("pgqueuer", "procrastinate")) \
        and r_total["bare"] >= 0.5 and r_steady["bare"] >= 0.5
    verdicts.append((tp_ok, "throughput: geoworker ahead of pgqueuer and procrastinate and >= 1/2 of the bare loop "
                     f"(geoworker ÷ pgqueuer / procrastinate / bare: start to exit {r_total['pgqueuer']:.2f} / "
                     f"{r_total['procrastinate']:.2f} / {r_total['bare']:.2f}; steady {r_steady['pgqueuer']:.2f} / "
                     f"{r_steady['procrastinate']:.2f} / {r_steady['bare']:.2f})"))
    lat_ok = lat["geoworker"]["p95"] <= lat["pgqueuer"]["p95"]
    verdicts.append((lat_ok, f"pickup latency: geoworker p95 {lat['geoworker']['p95']:.2f} ms <= pgqueuer p95 "
                     f"{lat['pgqueuer']['p95']:.2f} ms"))
    rec_ok = g["max"] < RECOVERY_AIM
    verdicts.append((rec_ok, f"recovery: geoworker under {RECOVERY_AIM:g} s (median {g['median'] * 1000:.1f} ms, "
                     f"max {g['max'] * 1000:.1f} ms over {g['n']} kills)"))
    lines.append("")
    for ok, text in verdicts:
        lines.append(f"{'MET    ' if ok else 'NOT MET'}  {text}")
    return "\n".join(lines), all(ok for ok, _ in verdicts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="server to create the benchmark databases on")
    parser.add_argument("--jobs", type=int, default=5000, help="noop jobs per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (order alternates; median reported)")
    parser.add_argument("--submissions", type=int, default=120, help="timed submissions per latency run")
    parser.add_argument("--kills", type=int, default=10, help="geoworker recovery repetitions")
    parser.add_argument("--pgq-recovery-reps", type=int, default=2, help="pgqueuer recovery repetitions (~32 s each)")
    parser.add_argument("--proc-watch", type=float, default=45.0,
                        help="seconds to watch a killed procrastinate job (0: skip)")
    parser.add_argument("--phases", type=lambda v: set(v.split(",")), default={"throughput", "latency", "recovery"},
                        help="comma-separated subset of throughput,latency,recovery (the report needs all three)")
    parser.add_argument("--no-lean", dest="lean", action="store_false",
                        help="leave out the diagnostic 'geoworker, lean config' throughput column")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="longest a throughput run may take")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp dir (logs, configs, stamps)")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)

    ensure_peers_venv()
    bench = Bench(args)
    try:
        results = bench.run()
    finally:
        bench.close()
    if args.phases != {"throughput", "latency", "recovery"}:
        print(json.dumps(results, indent=2, default=str))
        return 0
    facts = machine_facts(args.dsn)
    text, ok = report(results, facts, args)
    print(f"machine: {facts['cpu']}, {facts['cores']} cores, {facts['ram_gib']} GiB, Linux {facts['kernel']}; "
          f"PostgreSQL {facts['postgresql']} (synchronous_commit {facts['synchronous_commit']}); "
          f"Python {facts['python']}; geoworker {facts['geoworker']} ({facts['geoworker_commit']}); "
          + ", ".join(f"{k} {v}" for k, v in facts["peers"].items()))
    print(f"wall time {results['wall_seconds']:.0f} s\n")
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "machine": facts}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_bare":
        sys.exit(bare_main())
    if len(sys.argv) > 1 and sys.argv[1] == "_geoworker":
        sys.exit(geoworker_stamp_main())
    if len(sys.argv) > 1 and sys.argv[1] == "_peer":
        asyncio.run(_peer_client(sys.argv[2:]))
        sys.exit(0)
    sys.exit(main())
