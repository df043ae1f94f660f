"""Soak: `geoworker run` for N minutes under real jobs and chaos, then an account of every job.

    .venv/bin/python bench/soak.py --minutes 30 [--concurrency 2] [--seed 1] [--keep]

Everything lives in a temporary directory: its own embedded PostgreSQL (pgserver, as
geoworker starts one with no DSN; this script stops and starts it, never any other server),
storage, work directories, logs and the GeoTIFFs it writes with rasterio.

Work, kept flowing so that the pool never idles:
  real jobs    geotiff_to_png (max_size 256..1024) and geotiff_info on three GeoTIFFs (RGB
               uint8 tiled, float32 DEM with nodata, uint16 striped), and geotiff_to_cog /
               geotiff_to_tiles when the registry has them; max_attempts 10: they must succeed.
  hangs        debug.sleep 60 s with a timeout param of 2 s, 2 attempts: must fail `timeout`.
  blow-ups     debug.allocate past worker.max_child_rss_mb, 2 attempts: must fail `memory_limit`.
Chaos: a child running a real job is SIGKILLed every 8-20 s; once, at 40% of the run,
PostgreSQL is stopped for 5 s and started again (submissions pause meanwhile).

Every 10 s it samples the supervisor's RSS and open file descriptors, its children's RSS
and descriptors, and the jobs done. After the run it stops submitting, waits for every job to
end (at most 3 minutes), and prints: jobs done, lost (not ended: must be 0), double-completed
(more than one `succeeded` event: must be 0), jobs that ended otherwise than expected, retries,
outputs whose sha256 does not match the job's result, and the samples. Exit 1 if anything
that must be 0 is not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REAL = ("geotiff_to_png", "geotiff_info")
MAPS = ("geotiff_to_cog", "geotiff_to_tiles")
MAX_RSS_MB = 400
SAMPLE_EVERY = 10.0
DRAIN_LIMIT = 180.0


def write_inputs(folder: Path) -> list[Path]:
    """Three GeoTIFFs of the kinds the platform sends, compressible like real data."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:1536, 0:1536]
    fields = ((x // 97 + y // 61) % 5) * 30 + 60
    rgb = np.stack([fields + x % 23, fields + y % 19, fields // 2 + (x + y) % 17]).astype(np.uint8)
    rgb[:, :, :120] = 0  # a nodata collar, as a reprojected orthophoto has
    dem = (1000 + 40 * np.sin(x / 150.0) + 0.05 * y + (x * 7919 + y * 104729) % 13 / 10).astype(np.float32)
    dem[:80, :] = -9999.0
    grey = (((x // 16) * (y // 16)) % 4096 + 1000).astype(np.uint16)
    specs = [
        ("ortho_rgb.tif", rgb, {"nodata": 0, "tiled": True, "blockxsize": 256, "blockysize": 256,
                                "compress": "deflate"}),
        ("dem_f32.tif", dem[None], {"nodata": -9999.0, "compress": "deflate", "predictor": 3}),
        ("survey_u16.tif", grey[None], {"compress": "lzw"}),
    ]
    paths = []
    for name, data, extra in specs:
        path = folder / name
        profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
                   "dtype": data.dtype.name, "crs": "EPSG:32638",
                   "transform": from_origin(500000, 4600000, 0.25, 0.25), **extra}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        paths.append(path)
    return paths


class Postgres:
    """The soak's own embedded server: started by pgserver, stopped and started again by pg_ctl."""

    def __init__(self, data: Path):
        import pgserver
        from pgserver._commands import POSTGRES_BIN_PATH

        self.server = pgserver.get_server(data, cleanup_mode=None)
        user = ["runuser", "-u", self.server.system_user, "--"] if self.server.system_user else []
        self.pg_ctl = user + [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-l", str(data / "log")]
        self.dsn = self.server.get_uri()

    def stop(self) -> None:
        subprocess.run(self.pg_ctl + ["-m", "fast", "-w", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60, check=False)

    def start(self) -> None:
        self.server.ensure_postgres_running()  # the same socket directory and options as at first


class Soak:
    def __init__(self, args, base: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.base = base
        self.expected: dict[str, tuple[str, str | None]] = {}  # job id -> (status, error_code)
        self.kinds: dict[str, str] = {}
        self.samples: list[dict] = []
        self.kills = 0
        self.restarts = 0
        self.submit_errors = 0

    # --- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        from loguru import logger

        from geoworker import db, tasks
        from geoworker.config import load_settings

        logger.remove()  # this process only submits; the service's own log is in service.log

        self.pg = Postgres(self.base / "pg")
        conn = db.connect(self.pg.dsn)
        db.migrate(conn)
        conn.close()
        self.inputs = write_inputs(self.base / "inputs")
        self.config = self.base / "soak.toml"
        self.config.write_text(f"""
[worker]
debug_tasks = true
concurrency = {self.args.concurrency}
poll_interval = 1.0
heartbeat_interval = 2.0
stale_after = 10.0
max_processing_time = 120.0
max_child_rss_mb = {MAX_RSS_MB}
max_jobs_per_child = 40
report_interval = 60.0
graceful_timeout = 30.0
[retry]
backoff_base = 0.5
backoff_max = 5.0
[database]
dsn = "{self.pg.dsn}"
connect_timeout = 3
[storage]
root = "{self.base / 'storage'}"
temp_dir = "{self.base / 'tmp'}"
[logging]
file = "{self.base / 'worker.log'}"
[metrics]
port = 0
""")
        self.settings = load_settings(self.config, environ={})
        self.maps = [t for t in MAPS if t in tasks.registry.TASKS]
        self.queue = None

    def start_service(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "GEOWORKER_")) and k != "DATABASE_URL"}
        env.update({"GEOWORKER_CONFIG": str(self.config), "PYTHONUNBUFFERED": "1"})
        self.service_log = open(self.base / "service.log", "ab")
        self.service = subprocess.Popen([sys.executable, "-m", "geoworker", "run"], env=env, cwd=self.base,
                                        stdout=self.service_log, stderr=self.service_log, start_new_session=True)

    # --- work --------------------------------------------------------------------------------

    def open_queue(self):
        from geoworker.submit import open_queue

        if self.queue is None:
            self.queue = open_queue(self.settings, "soak")
        return self.queue

    def submit_one(self) -> None:
        from geoworker.errors import GeoworkerError
        from geoworker.submit import prepare, submit

        roll = self.rng.random()
        source = None
        if roll < 0.06:
            kind, task, params, attempts, expect = "hang", "debug.sleep", {"seconds": 60, "timeout": 2}, 2, \
                ("failed", "timeout")
        elif roll < 0.10:
            kind, task, params, attempts, expect = "blow-up", "debug.allocate", {"mb": MAX_RSS_MB + 200, "seconds": 5}, \
                2, ("failed", "memory_limit")
        else:
            choices = list(REAL) + self.maps
            task = choices[0] if roll < 0.55 else self.rng.choice(choices)
            params = {"max_size": self.rng.choice([256, 512, 1024])} if task == "geotiff_to_png" else {}
            source, kind, attempts, expect = self.rng.choice(self.inputs), task, 10, ("succeeded", None)
        try:
            job = submit(self.open_queue(), self.settings,
                         prepare(self.settings, task, source, params, max_attempts=attempts))
        except GeoworkerError:  # the database is restarting: try again later (a pending job is ours to end)
            self.submit_errors += 1
            self.drop_queue()
            return
        self.expected[job.id] = expect
        self.kinds[job.id] = kind

    def drop_queue(self) -> None:
        if self.queue is not None:
            self.queue.close()
            self.queue = None

    def backlog(self) -> int:
        from geoworker.errors import GeoworkerError

        try:
            summary = self.open_queue().summary()
        except GeoworkerError:
            self.drop_queue()
            return 1 << 30
        return summary["ready"] + summary["scheduled"] + summary["running"]

    def kill_a_busy_child(self) -> None:
        """SIGKILL a child that is running a real job (chaos jobs have their own expected endings)."""
        from geoworker.errors import GeoworkerError

        try:
            running = [j for j in self.open_queue().list(status="running", limit=50) if j.task_type in REAL + MAPS]
        except GeoworkerError:
            self.drop_queue()
            return
        mine = {c.pid for c in self.children()}
        pids = [int(j.locked_by.rsplit(":", 1)[1]) for j in running if j.locked_by]
        pids = [p for p in pids if p in mine]
        if pids:
            os.kill(self.rng.choice(pids), signal.SIGKILL)
            self.kills += 1

    def restart_database(self) -> None:
        self.drop_queue()
        self.pg.stop()
        time.sleep(5.0)
        self.pg.start()
        self.restarts += 1

    # --- watching ----------------------------------------------------------------------------

    def children(self) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(self.service.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def sample(self, started: float) -> None:
        try:
            sup = psutil.Process(self.service.pid)
            sup_rss, sup_fds = sup.memory_info().rss, sup.num_fds()
        except psutil.NoSuchProcess:
            return
        kids = []
        for child in self.children():
            try:
                kids.append((child.memory_info().rss, child.num_fds()))
            except psutil.NoSuchProcess:
                pass
        done = self.count("SELECT count(*) FROM geo_jobs WHERE status = 'succeeded'")
        self.samples.append({"t": time.monotonic() - started, "sup_rss": sup_rss, "sup_fds": sup_fds,
                             "kid_rss": [k[0] for k in kids], "kid_fds": [k[1] for k in kids], "done": done})

    def count(self, query: str, params=None) -> int | None:
        from geoworker.errors import GeoworkerError

        try:
            with self.open_queue().conn.cursor() as cur:
                cur.execute(query, params)
                return cur.fetchone()[0]
        except (GeoworkerError, Exception):
            self.drop_queue()
            return None

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> int:
        self.setup()
        self.start_service()
        from geoworker.jobs import TERMINAL

        seconds = self.args.minutes * 60.0
        started = time.monotonic()
        next_kill = started + self.rng.uniform(8, 20)
        restart_at = started + 0.4 * seconds
        next_sample = started + SAMPLE_EVERY  # the first sample once the pool is up and warm
        while (now := time.monotonic()) < started + seconds:
            if self.service.poll() is not None:
                print(f"soak: the service exited with {self.service.returncode}", file=sys.stderr)
                return 1
            if now >= next_sample:
                self.sample(started)
                next_sample += SAMPLE_EVERY
            if now >= restart_at and not self.restarts:
                self.restart_database()
                continue
            if now >= next_kill:
                self.kill_a_busy_child()
                next_kill = now + self.rng.uniform(8, 20)
            if self.backlog() < 3 * self.args.concurrency:
                for _ in range(self.args.concurrency):
                    self.submit_one()
            time.sleep(0.2)

        # drain: no more chaos, no more work; every job must end
        deadline = time.monotonic() + DRAIN_LIMIT
        terminal = [s.value for s in TERMINAL]
        while time.monotonic() < deadline:
            left = self.count("SELECT count(*) FROM geo_jobs WHERE NOT (status = ANY(%s))", (terminal,))
            if left == 0:
                break
            time.sleep(1.0)
        self.sample(started)
        return self.report(time.monotonic() - started)

    def report(self, elapsed: float) -> int:
        q = self.open_queue()
        with q.conn.cursor() as cur:
            cur.execute("SELECT id::text, task_type, status, error_code, attempts, outputs, result FROM geo_jobs")
            jobs = {r[0]: r for r in cur.fetchall()}
            cur.execute("SELECT job_id::text, count(*) FROM geo_job_events WHERE kind = 'succeeded' "
                        "GROUP BY 1 HAVING count(*) > 1")
            doubles = cur.fetchall()
            cur.execute("SELECT count(*) FROM geo_job_events WHERE kind = 'retry_scheduled'")
            retries = cur.fetchone()[0]
            cur.execute("SELECT data->>'reason', count(*) FROM geo_job_events WHERE kind = 'retry_scheduled' "
                        "GROUP BY 1 ORDER BY 2 DESC")
            reasons = cur.fetchall()
        ended = {"succeeded", "failed", "cancelled"}
        lost = [j for j in jobs.values() if j[2] not in ended]
        wrong = [(jid, self.kinds.get(jid), (j[2], j[3]), self.expected.get(jid)) for jid, j in jobs.items()
                 if jid in self.expected and j[2] in ended and (j[2], j[3]) != self.expected[jid]]
        checked, mismatched = check_outputs(jobs.values())
        by_kind: dict[str, int] = {}
        for jid, j in jobs.items():
            if j[2] == "succeeded":
                by_kind[j[1]] = by_kind.get(j[1], 0) + 1
        log = (self.base / "service.log").read_text(errors="replace")

        print(f"soak: {elapsed / 60:.1f} min (of which {self.args.minutes:g} with chaos), concurrency "
              f"{self.args.concurrency}, seed {self.args.seed}; maps tasks: {', '.join(self.maps) or 'none registered'}")
        print(f"jobs:             {len(jobs)} submitted, {sum(by_kind.values())} done "
              f"({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})")
        chaos = {k: sum(1 for v in self.kinds.values() if v == k) for k in ("hang", "blow-up")}
        print(f"chaos:            {self.kills} child kills, {chaos['hang']} hangs, {chaos['blow-up']} memory blow-ups, "
              f"{self.restarts} database restart ({self.submit_errors} submissions refused while it was down)")
        print(f"retries:          {retries} ({', '.join(f'{r} {n}' for r, n in reasons)})")
        print(f"lost:             {len(lost)}" + (f"  {[(j[0], j[2]) for j in lost[:5]]}" if lost else ""))
        print(f"double-completed: {len(doubles)}" + (f"  {doubles[:5]}" if doubles else ""))
        print(f"unexpected end:   {len(wrong)}" + (f"  {wrong[:5]}" if wrong else ""))
        print(f"outputs checked:  {checked} files, {len(mismatched)} with a sha256 other than the job's result"
              + (f"  {mismatched[:3]}" if mismatched else ""))
        print(f"service log:      {log.count('Traceback')} tracebacks, {log.count('supervisor loop error')} loop errors")
        print()
        print("   t s   done  supervisor RSS MB  fds   children RSS MB (median/max)  child fds (max)")
        for s in self.samples:
            kid = f"{statistics.median(s['kid_rss']) / 2**20:6.0f} / {max(s['kid_rss']) / 2**20:4.0f}" \
                if s["kid_rss"] else "     - /    -"
            print(f"{s['t']:6.0f} {s['done'] if s['done'] is not None else '-':>6} {s['sup_rss'] / 2**20:18.1f} "
                  f"{s['sup_fds']:4d}   {kid:>28}  {max(s['kid_fds'], default=0):15d}")
        if len(self.samples) >= 4:
            quarter = max(1, len(self.samples) // 4)
            first, last = self.samples[:quarter], self.samples[-quarter:]

            def med(rows, key):
                return statistics.median(r[key] for r in rows)

            print(f"drift (median of the first vs the last quarter): supervisor RSS "
                  f"{med(first, 'sup_rss') / 2**20:.1f} -> {med(last, 'sup_rss') / 2**20:.1f} MB, "
                  f"fds {med(first, 'sup_fds'):.0f} -> {med(last, 'sup_fds'):.0f}")
        bad = bool(lost or doubles or wrong or mismatched)
        print(f"\nsoak: {'FAILED' if bad else 'OK'}")
        return 1 if bad else 0

    def close(self) -> None:
        service = getattr(self, "service", None)
        if service is not None and service.poll() is None:
            service.send_signal(signal.SIGTERM)
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(service.pid, signal.SIGKILL)
                service.wait(10)
        self.drop_queue()
        if getattr(self, "pg", None) is not None:
            self.pg.stop()


def check_outputs(jobs) -> tuple[int, list[str]]:
    """Every stored output of a succeeded job has the sha256 its result records (no half or foreign write)."""
    checked, mismatched = 0, []
    for _id, _task, status, _code, _attempts, outputs, result in jobs:
        if status != "succeeded" or not isinstance(outputs, dict):
            continue
        sums = ((result or {}).get("sha256") or {}).get("outputs") or {}
        for kind, path in outputs.items():
            if kind not in sums or not isinstance(path, str):
                continue
            checked += 1
            try:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                digest = None
            if digest != sums[kind]:
                mismatched.append(path)
    return checked, mismatched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, database)")
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60 or not 1 <= args.concurrency <= 64:
        parser.error("--minutes must be in (0, 1440] and --concurrency in [1, 64]")
    # not under a 0700 directory: as root the server runs as pgserver's own system user
    base = Path(tempfile.mkdtemp(prefix="geoworker-soak-"))
    base.chmod(0o755)
    soak = Soak(args, base)
    try:
        return soak.run()
    except KeyboardInterrupt:
        return 130
    finally:
        soak.close()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
