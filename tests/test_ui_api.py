"""What the dashboard reads from the API, over HTTP against a real `geoworker api` process:
the task catalogue, operators' scope, retry, paging, the overview and worker board, the live
stream (its filtering, its end when the token expires or the server stops), the token command,
and the pages' shell and headers. The browser itself is in test_ui_browser.py.
"""

from __future__ import annotations

import json
import queue as stdqueue
import subprocess
import sys
import threading
import time

import jwt
import pytest
import requests

from apiserver import JWT_SECRET, ApiServer, api, api_env, bearer, check_log, user_token  # noqa: F401 (fixtures)
from geoworker.config import load_settings
from geoworker.errors import ConfigError
from geoworker.jobs import JobQueue
from geoworker.tasks import registry
from service import ROOT, run_cli, wait_for

pytestmark = pytest.mark.timeout(180)
GEO_JOBS = "/api/geo-jobs"


def operator(sub: str = "olga", **kwargs) -> dict[str, str]:
    return bearer(sub, role="operator", **kwargs)


def create(api, sub: str, task: str = "debug.noop", payload=None) -> dict:
    r = requests.post(api.url(GEO_JOBS), headers=bearer(sub), timeout=10,
                      json={"taskType": task, "inputPayload": payload or {}})
    assert r.status_code == 201, r.text
    return r.json()


class Stream:
    """GET /api/stream read on a thread: its events arrive in a queue."""

    def __init__(self, api, headers: dict[str, str], topics: str = "jobs"):
        self.events: stdqueue.Queue = stdqueue.Queue()
        self.response = requests.get(api.url(f"/api/stream?topics={topics}"), headers=headers, stream=True,
                                     timeout=(5, 60))
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.hello = self.next("hello")

    def _read(self) -> None:
        name = None
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    self.events.put((name, json.loads(line[6:])))
        except (requests.RequestException, AttributeError, ValueError):
            pass
        self.events.put(("<end>", None))

    def next(self, name: str | None = None, timeout: float = 20):
        """The next event (of that name, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            if name is None or got[0] == name or got[0] == "<end>":
                return got

    def drain(self, settle: float = 1.0) -> list:
        out = []
        end = time.monotonic() + settle
        while time.monotonic() < end:
            try:
                out.append(self.events.get(timeout=0.1))
            except stdqueue.Empty:
                pass
        return out

    def close(self) -> None:
        self.response.close()


# --- the catalogue, scopes, retry, paging ----------------------------------------------------


def test_tasks_route_lists_the_registry_with_its_parameters_and_the_upload_limit(api):
    r = requests.get(api.url("/api/tasks"), headers=bearer("alice"), timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    settings = load_settings(environ=api.env)
    expected = registry.available(settings)
    assert [t["name"] for t in body["tasks"]] == list(expected)
    png = next(t for t in body["tasks"] if t["name"] == "geotiff_to_png")
    assert png["needsInput"] is True and "image" in png["outputs"]
    assert png["params"] == json.loads(json.dumps(expected["geotiff_to_png"].params.describe(settings)))
    main = {p["key"]: p for p in png["params"] if p["main"]}
    assert {"maxSize", "outputFormat"} <= set(main) and main["outputFormat"]["choices"] == ["png", "jpeg", "webp"]
    assert body["limits"]["maxFileSize"] == settings.storage.max_file_size
    assert requests.get(api.url("/api/tasks"), timeout=10).status_code == 401
    me = requests.get(api.url("/api/me"), headers=operator(), timeout=10).json()
    assert (me["sub"], me["operator"]) == ("olga", True)
    # a validly signed token that expires past year 9999 is no date: null, not a 500
    far = requests.get(api.url("/api/me"), headers=bearer("ann", expires_in=1e12), timeout=10)
    assert far.status_code == 200 and far.json()["expiresAt"] is None, far.text


def test_a_user_sees_only_their_jobs_and_an_operator_sees_and_acts_on_all(api, db):
    alice = create(api, "alice", "debug.sleep", {"seconds": 60})
    bob = create(api, "bob")
    mine = requests.get(api.url(GEO_JOBS), headers=bearer("alice"), timeout=10).json()["jobs"]
    assert [j["id"] for j in mine] == [alice["id"]] and mine[0]["owner"] == "alice"
    everyone = requests.get(api.url(GEO_JOBS), headers=operator(), timeout=10).json()["jobs"]
    assert {j["id"]: j["owner"] for j in everyone} == {alice["id"]: "alice", bob["id"]: "bob"}

    for method, path in (("get", ""), ("get", "/events"), ("post", "/cancel"), ("post", "/retry"),
                         ("get", "/download/output")):
        r = requests.request(method, api.url(f"{GEO_JOBS}/{alice['id']}{path}"), headers=bearer("bob"), timeout=10)
        assert r.status_code == 404, (path, r.status_code, r.text)
    assert db.job(alice["id"])["status"] == "queued", "bob's attempts changed alice's job"

    r = requests.post(api.url(f"{GEO_JOBS}/{alice['id']}/cancel"), headers=operator(), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    r = requests.post(api.url(f"{GEO_JOBS}/{alice['id']}/retry"), headers=operator(), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    row = db.job(alice["id"])
    assert (row["status"], row["attempts"], row["error_code"]) == ("queued", 0, None)
    kinds = [(e["kind"], e["worker"]) for e in db.events(alice["id"])]
    assert ("cancelled", "operator:olga") in kinds and ("retried", "operator:olga") in kinds

    # the same rules as `geoworker retry`: only failed or cancelled jobs
    r = requests.post(api.url(f"{GEO_JOBS}/{alice['id']}/retry"), headers=bearer("alice"), timeout=10)
    assert r.status_code == 409 and "only failed or cancelled" in r.json()["message"], r.text
    r = requests.post(api.url(f"{GEO_JOBS}/not-a-uuid/retry"), headers=operator(), timeout=10)
    assert r.status_code == 404
    for path in ("/api/overview", "/api/workers"):
        r = requests.get(api.url(path), headers=bearer("alice"), timeout=10)
        assert r.status_code == 403 and "operators" in r.json()["message"]


def test_the_owner_retries_a_failed_job_by_the_route(api, db):
    job = create(api, "alice")
    q = JobQueue(api.env["DATABASE_URL"], worker_id="w1")
    try:
        claimed = q.claim()
        assert claimed.id == job["id"]
        q.fail(claimed, "invalid_input", "not a TIFF", permanent=True)
    finally:
        q.close()
    assert db.job(job["id"])["status"] == "failed"
    r = requests.post(api.url(f"{GEO_JOBS}/{job['id']}/retry"), headers=bearer("alice"), timeout=10)
    assert r.status_code == 200, r.text
    assert db.job(job["id"])["status"] == "queued" and [e["worker"] for e in db.events(job["id"])][-1] == "user:alice"


def test_jobs_filter_by_status_and_task_a_page_at_a_time(api):
    ids = [create(api, "alice")["id"] for _ in range(5)]
    other = create(api, "alice", "debug.sleep", {"seconds": 30})["id"]
    r = requests.get(api.url(f"{GEO_JOBS}?task=debug.noop&limit=2"), headers=bearer("alice"), timeout=10).json()
    assert [j["id"] for j in r["jobs"]] == ids[::-1][:2] and r["nextOffset"] == 2
    pages, offset = [], 0
    while offset is not None:
        page = requests.get(api.url(f"{GEO_JOBS}?task=debug.noop&limit=2&offset={offset}"), headers=bearer("alice"),
                            timeout=10).json()
        pages += [j["id"] for j in page["jobs"]]
        offset = page["nextOffset"]
    assert pages == ids[::-1], "paging lost or repeated a job"
    r = requests.get(api.url(f"{GEO_JOBS}?task=debug.sleep&status=queued"), headers=bearer("alice"), timeout=10).json()
    assert [j["id"] for j in r["jobs"]] == [other] and r["nextOffset"] is None
    assert requests.get(api.url(f"{GEO_JOBS}?task=a%00b"), headers=bearer("alice"), timeout=10).status_code == 422


# --- overview and workers --------------------------------------------------------------------


def test_overview_counts_the_last_hour_by_minute_and_names_recent_failures(api):
    q = JobQueue(api.env["DATABASE_URL"], worker_id="host:1:child")
    try:
        q.enqueue_many("debug.noop", [{}] * 4)
        for _ in range(3):
            q.complete(q.claim().id, result={})
        failed = q.fail(q.claim(), "invalid_input", "not a TIFF", permanent=True)
        q.enqueue("debug.sleep", {"seconds": 1})
    finally:
        q.close()
    o = requests.get(api.url("/api/overview"), headers=operator(), timeout=10).json()
    assert o["counts"] == {"pending": 0, "queued": 1, "running": 0, "succeeded": 3, "failed": 1, "cancelled": 0}
    assert len(o["perMinute"]) == 60
    assert sum(m["succeeded"] for m in o["perMinute"]) == 3 and sum(m["failed"] for m in o["perMinute"]) == 1
    assert o["queue"]["ready"] == 1 and o["queue"]["oldestReadyAge"] >= 0
    assert [d["taskType"] for d in o["durations"]] == ["debug.noop"] and o["durations"][0]["n"] == 3
    assert o["recentFailures"][0]["id"] == failed.id and o["recentFailures"][0]["errorCode"] == "invalid_input"
    assert o["failureReasons"] == {"invalid_input": 1}


def test_workers_board_shows_supervisors_children_their_memory_and_current_job(api):
    q = JobQueue(api.env["DATABASE_URL"], worker_id="host-a:10:child")
    try:
        q.register_worker("host-a:9:sup", "supervisor", 9, host="host-a")
        q.register_worker("host-a:10:child", "child", 10, parent_id="host-a:9:sup", host="host-a")
        q.touch_workers([{"id": "host-a:10:child", "rss": 50 * 2**20, "current_job": None, "jobs_done": 7}])
        q.enqueue("debug.sleep", {"seconds": 60})
        job = q.claim()
        q.progress(job.id, 42, "half way")
    finally:
        q.close()
    board = requests.get(api.url("/api/workers"), headers=operator(), timeout=10).json()["workers"]
    by_id = {w["id"]: w for w in board}
    child = by_id["host-a:10:child"]
    assert (child["pid"], child["parentId"], child["rss"], child["jobsDone"]) == (10, "host-a:9:sup", 50 * 2**20, 7)
    assert child["job"] == {**child["job"], "id": job.id, "taskType": "debug.sleep", "progress": 42,
                            "message": "half way"}
    assert by_id["host-a:9:sup"]["kind"] == "supervisor" and by_id["host-a:9:sup"]["job"] is None


# --- the live stream -------------------------------------------------------------------------


def test_stream_carries_a_users_own_jobs_only_and_everything_to_operators(api):
    alice, bob, ops = (Stream(api, bearer("alice")), Stream(api, bearer("bob")),
                       Stream(api, operator(), topics="jobs,workers"))
    try:
        assert alice.hello[1] == {"sub": "alice", "operator": False, "topics": ["jobs"]}
        assert ops.hello[1]["topics"] == ["jobs", "workers"]
        job = create(api, "alice")
        q = JobQueue(api.env["DATABASE_URL"], worker_id="w1")
        try:
            q.complete(q.claim().id, result={})
        finally:
            q.close()
        seen = [alice.next("job")[1] for _ in range(3)]
        assert [(e["id"], e["status"]) for e in seen] == [(job["id"], s) for s in ("queued", "running", "succeeded")]
        assert "owner" not in seen[0]
        by_ops = [ops.next("job")[1] for _ in range(3)]
        assert [(e["status"], e["owner"]) for e in by_ops] == [("queued", "alice"), ("running", "alice"),
                                                                 ("succeeded", "alice")]
        assert ops.next("workers")[0] == "workers"  # the board follows claims and finishes
        assert not [e for e in bob.drain() if e[0] == "job"], "bob's stream carried alice's job"
        # a user asking for operators' topics gets their own jobs, nothing more
        sneaky = Stream(api, bearer("bob"), topics="workers,overview")
        assert sneaky.hello[1]["topics"] == ["jobs"]
        sneaky.close()
    finally:
        for s in (alice, bob, ops):
            s.close()


def test_stream_ends_when_the_token_expires_and_refuses_a_forged_one(api):
    stream = Stream(api, bearer("alice", expires_in=3))
    try:
        assert stream.next("expired")[1] == {"message": "the token has expired"}
        assert stream.next()[0] == "<end>"
    finally:
        stream.close()
    r = requests.get(api.url("/api/stream"), headers=bearer("alice", secret="x" * 40), timeout=10)
    assert r.status_code == 401 and r.json()["message"] == "the token's signature is not valid"
    r = requests.get(api.url("/api/stream"), headers=bearer("alice", expires_in=-60), timeout=10)
    assert r.status_code == 401 and r.json()["message"] == "the token has expired"


def test_bulk_inserts_send_one_resync_instead_of_a_row_each(api):
    stream = Stream(api, operator())
    try:
        q = JobQueue(api.env["DATABASE_URL"], worker_id="w1")
        try:
            q.enqueue_many("debug.noop", [{}] * 150)
        finally:
            q.close()
        assert stream.next()[0] == "resync"
        assert not [e for e in stream.drain() if e[0] == "job"]
    finally:
        stream.close()


def test_stopping_the_api_ends_its_streams_at_once_with_bye(api_env, tmp_path):
    server = ApiServer(api_env, tmp_path).start()
    stream = Stream(server, bearer("alice"))
    try:
        server.stop()
        assert stream.next(timeout=10)[0] == "bye"
    finally:
        stream.close()
    check_log(server)
    # uvicorn waits timeout_graceful_shutdown (10 s) for responses still open, then says so
    assert "Cancel" not in server.log() and "graceful shutdown" not in server.log().lower(), server.log()[-2000:]


# --- the token command -----------------------------------------------------------------------


def test_token_command_prints_a_token_or_a_sign_in_link(cli_env, tmp_path):
    env = {**cli_env, "GEOWORKER_API_JWT_SECRET": JWT_SECRET, "GEOWORKER_API_BASE_URL": "https://geo.example/"}
    r = run_cli(["token", "--user", "ann", "--operator", "--ttl", "120"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    claims = jwt.decode(r.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("ann", "operator") and claims["exp"] - claims["iat"] == 120
    r = run_cli(["token", "--user", "bo", "--link"], env, tmp_path)
    link = r.stdout.strip()
    assert link.startswith("https://geo.example/ui#token=")
    claims = jwt.decode(link.split("#token=")[1], JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bo" and "role" not in claims and claims["exp"] - claims["iat"] == 8 * 3600
    r = run_cli(["token", "--user", "bo"], cli_env, tmp_path)
    assert r.returncode == 2 and r.stderr.strip().endswith("api.jwt_secret: required to sign a token "
                                                           "(GEOWORKER_API_JWT_SECRET)"), r.stderr
    assert "Traceback" not in r.stderr
    for ttl in ("0", "inf", "nan", "1e300"):  # one line each, never a traceback (inf overflowed int())
        r = run_cli(["token", "--user", "bo", "--ttl", ttl], env, tmp_path)
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "ttl" in r.stderr, (ttl, r.stderr)


# --- the pages' shell and files --------------------------------------------------------------


def test_pages_are_one_shell_with_a_strict_policy_and_the_files_it_names(api):
    for path in ("/ui", "/ui/signin", "/ui/jobs", "/ui/jobs/5f0e8f0e-0000-4000-8000-000000000000", "/ui/upload",
                 "/ui/overview"):
        r = requests.get(api.url(path), timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        policy = r.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self';" in policy and "unsafe" not in policy
        assert r.headers["referrer-policy"] == "no-referrer"
    html = requests.get(api.url("/ui"), timeout=10).text
    config = json.loads(html.split('id="gw-config">')[1].split("</script>")[0])
    assert config["basemapUrl"] == ""
    for asset in ("/ui/static/js/main.js", "/ui/static/app.css", "/ui/vendor/leaflet/leaflet.js",
                  "/ui/vendor/leaflet/leaflet.css", "/ui/static/favicon.svg"):
        r = requests.get(api.url(asset), timeout=10)
        assert r.status_code == 200 and len(r.content) > 100, asset
    js = requests.get(api.url("/ui/static/js/main.js"), timeout=10)
    assert "javascript" in js.headers["content-type"]
    assert "Leaflet 1.9" in requests.get(api.url("/ui/vendor/leaflet/leaflet.js"), timeout=10).text[:400]
    assert requests.get(api.url("/ui/static/../../config.py"), timeout=10).status_code == 404
    assert "/ui" not in requests.get(api.url("/openapi.json"), timeout=10).text.split('"paths"')[1]
    for page in ("/ui", "/ui/jobs/00000000-0000-0000-0000-000000000000"):  # probes (load balancers) use HEAD
        head = requests.head(api.url(page), timeout=10)
        assert head.status_code == 200 and head.content == b"", page
        assert "default-src 'self'" in head.headers["content-security-policy"]


def test_a_basemap_is_named_in_the_page_and_allowed_by_the_policy(tmp_path):
    from geoworker.api.ui import content_security_policy, render_shell

    plain = load_settings(environ={}, base_dir=tmp_path)
    settings = plain.replace("ui", basemap_url="https://tiles.example.org/{z}/{x}/{y}.png",
                             basemap_attribution="© example <b>")
    html = render_shell(settings)
    config = json.loads(html.split('id="gw-config">')[1].split("</script>")[0])
    assert config["basemapUrl"] == "https://tiles.example.org/{z}/{x}/{y}.png" and "<b>" not in html.split("gw-config")[1]
    assert "img-src 'self' data: blob: https://tiles.example.org;" in content_security_policy(settings)
    assert "tiles.example.org" not in content_security_policy(plain)
    with pytest.raises(ConfigError, match="ui.basemap_url.*{z}, {x} and {y}"):
        plain.replace("ui", basemap_url="https://tiles.example.org/tile.png")


def test_a_non_editable_install_ships_the_dashboard(tmp_path):
    """setuptools' build_py copies what a wheel holds: the packages and their declared package data."""
    code = ("import sys, setuptools; sys.argv = ['setup.py', '-q', 'build_py', '--build-lib', sys.argv[1]]; "
            "setuptools.setup()")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    built = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "geoworker" / "ui").rglob("*") if p.is_file()}
    assert shipped and shipped <= built, sorted(shipped - built)
    assert "geoworker/sql/migrations/0003_change_notifications.sql" in built
