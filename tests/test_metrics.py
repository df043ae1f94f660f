"""/metrics and /healthz of a real `geoworker run`: values move as jobs run, health follows the database."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import run_cli
from geoworker.jobs import JobQueue
from service import Database, Service, wait_for, write_config

pytestmark = pytest.mark.timeout(240)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from /metrics."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples, name: str, **labels) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture
def start(cli_env, tmp_path):
    made: list[Service] = []

    def make(port: int, dsn: str | None = None, worker=None, name="service") -> Service:
        config = write_config(tmp_path / f"{name}.toml", {
            "worker": {"debug_tasks": True, "concurrency": 2, "poll_interval": 0.5, "heartbeat_interval": 1.0,
                       "graceful_timeout": 1.0, **(worker or {})},
            "retry": {"backoff_base": 0.2, "backoff_max": 0.5},
            "metrics": {"port": port},
        })
        env = {**cli_env, "GEOWORKER_CONFIG": str(config)}
        env.pop("GEOWORKER_METRICS_PORT")  # the fixture turns metrics off; these tests want them
        if dsn:
            env["DATABASE_URL"] = dsn
        svc = Service(env, tmp_path, name=name)
        svc.config_path = config
        made.append(svc.start())
        return svc

    yield make
    for svc in made:
        svc.stop()


def test_metrics_move_as_jobs_run_and_healthz_is_ok(start, queue, dsn):
    port = free_port()
    svc = start(port)
    wait_for(lambda: get(port, "/healthz")[0] == 200, 30, what="/healthz to answer 200")
    assert "database reachable" in get(port, "/healthz")[1]
    before = scrape(port)
    assert value(before, "geoworker_jobs_claimed_total", task="debug.noop") == 0
    assert value(before, "geoworker_children_killed_total", reason="crashed") == 0  # present before any kill
    assert value(before, "geoworker_database_up") == 1

    noops = [queue.enqueue("debug.noop", {"lines": 2}).id for _ in range(5)]
    flaky = queue.enqueue("debug.fail", max_attempts=2).id
    bad = queue.enqueue("debug.fail", {"permanent": True}).id
    sleeper = queue.enqueue("debug.sleep", {"seconds": 30}, max_attempts=2).id
    db = Database(dsn)
    try:
        wait_for(lambda: all(db.job(j)["status"] in ("succeeded", "failed") for j in noops + [flaky, bad]), 60,
                 what="the quick jobs")
        busy = wait_for(lambda: value(scrape(port), "geoworker_children_busy") >= 1, 30, what="a busy child")
        assert busy
        running = wait_for(lambda: db.job(sleeper)["locked_by"], 30, what="the sleeper to be claimed")
        os.kill(int(running.rsplit(":", 1)[1]), signal.SIGKILL)  # a crash mid-job
        wait_for(lambda: value(scrape(port), "geoworker_children_killed_total", reason="crashed") == 1, 30,
                 what="the crash to be counted")
    finally:
        db.close()

    def pool_settled():
        samples = scrape(port)
        rss = {dict(labels)["pid"]: v for (name, labels), v in samples.items() if name == "geoworker_child_rss_bytes"}
        live = {str(c.pid) for c in svc.children()}
        ok = value(samples, "geoworker_children_alive") == 2 and set(rss) == live and all(v > 0 for v in rss.values())
        return (samples, rss) if ok else None

    # one RSS series per live child (none left for the dead one), each measured
    after, rss = wait_for(pool_settled, 30, what="the refilled pool in the gauges")
    assert value(after, "geoworker_jobs_claimed_total", task="debug.noop") == 5
    assert value(after, "geoworker_jobs_succeeded_total", task="debug.noop") == 5
    assert value(after, "geoworker_job_duration_seconds_count", task="debug.noop", outcome="succeeded") == 5
    assert value(after, "geoworker_jobs_retried_total", task="debug.fail", error_code="internal_error") == 1
    assert value(after, "geoworker_jobs_failed_total", task="debug.fail", error_code="internal_error") == 1
    assert value(after, "geoworker_jobs_failed_total", task="debug.fail", error_code="invalid_input") == 1
    assert value(after, "geoworker_jobs_retried_total", task="debug.sleep", error_code="crashed") == 1
    assert value(after, "geoworker_children_target") == 2
    assert value(after, "geoworker_children_rss_bytes") >= sum(rss.values()) * 0.5
    assert value(after, "process_resident_memory_bytes") > 0  # the supervisor's own
    # read from the database at most every few seconds: the sleeper, queued again or running
    wait_for(lambda: total(scrape(port), "geoworker_queue_depth") >= 1, 30, what="the queue depth")
    assert value(after, "geoworker_children_spawned_total") >= 3  # two, and the crashed one's replacement

    # served from the supervisor's own loop: no thread, and no child holds the listening socket
    assert psutil.Process(svc.pid).num_threads() == 1
    for child in svc.children():
        assert not [c for c in child.net_connections() if c.laddr and c.laddr.port == port], \
            f"child {child.pid} inherited the metrics socket"
    assert get(port, "/nope")[0] == 404
    assert get(port, "/metrics", method="POST")[0] == 405
    assert get(port, "/healthz", method="HEAD")[0] == 200
    svc.signal(signal.SIGTERM)
    assert svc.wait(60) == 0


def test_a_taken_port_is_logged_and_the_service_runs_on(start, queue, dsn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        svc = start(port)
        job = queue.enqueue("debug.noop")
        db = Database(dsn)
        try:
            wait_for(lambda: db.job(job.id)["status"] == "succeeded", 60, what="the job")
        finally:
            db.close()
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in svc.log()
        assert svc.proc.poll() is None


class PrivateCluster:
    """A pgserver cluster of the test's own, which it may stop and start (see test_service.py)."""

    def __init__(self):
        import pgserver
        from pgserver._commands import POSTGRES_BIN_PATH

        # not under tmp_path: pytest keeps it at mode 0700, and as root the server runs as another user
        self.base = Path(tempfile.mkdtemp(prefix="geoworker-pg-"))
        self.base.chmod(0o755)
        self.data = self.base / "pg"
        server = pgserver.get_server(self.data, cleanup_mode=None)
        self.dsn = server.get_uri()
        user = ["runuser", "-u", server.system_user, "--"] if server.system_user else []
        # -l: the postmaster must not inherit (and hold open) a pipe of ours
        self.pg_ctl = user + [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data), "-l", str(self.data / "log")]
        # what pgserver started it with (socket directory, no TCP), to start it again the same way
        argv = shlex.split((self.data / "postmaster.opts").read_text())[1:]
        while "-D" in argv:
            i = argv.index("-D")
            del argv[i:i + 2]
        self.options = " ".join(shlex.quote(a) for a in argv)

    def ctl(self, *args: str) -> None:
        done = subprocess.run(self.pg_ctl + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=60, text=True)
        assert done.returncode == 0, done.stdout

    def stop(self) -> None:
        self.ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self.ctl("-w", "-o", self.options, "start")

    def destroy(self) -> None:
        subprocess.run(self.pg_ctl + ["-m", "immediate", "-w", "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(self.base, ignore_errors=True)


def test_healthz_and_health_follow_the_database_down_and_back(start, cli_env, tmp_path):
    from geoworker import db as gwdb

    cluster = PrivateCluster()
    try:
        conn = gwdb.connect(cluster.dsn)
        gwdb.migrate(conn)
        conn.close()
        port = free_port()
        svc = start(port, dsn=cluster.dsn)
        env = {**cli_env, "DATABASE_URL": cluster.dsn}
        wait_for(lambda: get(port, "/healthz")[0] == 200, 30, what="/healthz 200")
        healthy = run_cli(["health"], env, cwd=tmp_path)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr

        cluster.stop()
        wait_for(lambda: get(port, "/healthz")[0] == 503, 30, what="/healthz 503 with the database down")
        assert "database unreachable" in get(port, "/healthz")[1]
        assert value(scrape(port), "geoworker_database_up") == 0
        sick = run_cli(["health"], env, cwd=tmp_path)
        assert sick.returncode == 1
        assert sick.stdout.splitlines()[0].startswith("❌ Database: Database connection failed")
        assert "❌ Overall Status: UNHEALTHY - Database" in sick.stdout

        cluster.start()
        wait_for(lambda: get(port, "/healthz")[0] == 200, 60, what="/healthz 200 once the database is back")
        assert run_cli(["health"], env, cwd=tmp_path).returncode == 0
        queue = JobQueue(cluster.dsn, worker_id="test")
        job = queue.enqueue("debug.noop")
        wait_for(lambda: queue.get(job.id).status == "succeeded", 60, what="a job after the outage")
        queue.close()
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0
    finally:
        cluster.destroy()


def test_healthz_says_starting_while_the_database_is_awaited_then_ok(start, cli_env, tmp_path):
    """An orchestrator can tell "starting" (503 with the reason) from "dead" (no answer) at start-up."""
    from geoworker import db as gwdb

    cluster = PrivateCluster()
    try:
        conn = gwdb.connect(cluster.dsn)
        gwdb.migrate(conn)
        conn.close()
        cluster.stop()
        port = free_port()
        svc = start(port, dsn=cluster.dsn)
        wait_for(lambda: get(port, "/healthz")[0] == 503, 30, what="/healthz to answer while the database is down")
        status, body = get(port, "/healthz")
        assert body.startswith("unhealthy: starting: waiting for the database"), body
        assert svc.proc.poll() is None and not svc.children(), "no child before the queue is ready"
        cluster.start()
        wait_for(lambda: get(port, "/healthz")[0] == 200, 60, what="/healthz 200 once the database answers")
        svc.signal(signal.SIGTERM)
        assert svc.wait(60) == 0
    finally:
        cluster.destroy()
