"""The HTTP API as a real `geoworker api` process, with a real `geoworker run` doing the work.

The platform's README, end to end: create a job, ask for an upload URL, PUT a GeoTIFF,
watch status and progress, read the history, download every output and open the PNG
with rasterio. Then the refusals: authentication, validation, and every way a signed
URL can be misused.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
import rasterio
import requests
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

import rasters
from apiserver import (JWT_SECRET, SIGNING_SECRET, api, api_env, bearer, shared_api,  # noqa: F401 (fixtures)
                       user_token, worker_headers)
from service import Service, wait_for, write_config

pytestmark = pytest.mark.timeout(240)
GEO_JOBS = "/api/geo-jobs"



@pytest.fixture
def service(cli_env, tmp_path):
    """A `geoworker run` on the same database, started by the test when it wants."""
    path = write_config(tmp_path / "worker.toml", {
        "worker": {"concurrency": 1, "poll_interval": 1.0, "heartbeat_interval": 1.0},
        "retry": {"backoff_base": 0.2, "backoff_max": 1.0}})
    svc = Service({**cli_env, "GEOWORKER_CONFIG": str(path)}, tmp_path, name="worker")
    yield svc
    svc.stop()


def geotiff(path: Path, height: int = 300, width: int = 400) -> Path:
    return rasters.write(path, rasters.gradient_rgb(height, width), compress="deflate")


def create(api, sub: str = "alice", task: str = "geotiff_to_png", payload=None, **extra) -> dict:
    body = {"taskType": task, "priority": 1, "inputPayload": payload if payload is not None else
            {"maxSize": 2048, "outputFormat": "png"}, **extra}
    r = requests.post(api.url(GEO_JOBS), json=body, headers=bearer(sub), timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def upload_grant(api, job_id: str, size: int, sub: str = "alice", name: str = "map.tif") -> dict:
    r = requests.post(api.url(f"{GEO_JOBS}/{job_id}/upload"), headers=bearer(sub), timeout=10,
                      json={"fileName": name, "fileSize": size, "fileType": "image/tiff"})
    assert r.status_code == 200, r.text
    return r.json()


def stored_inputs(api, job_id: str) -> list[Path]:
    folder = Path(api.env["GEOWORKER_STORAGE_ROOT"]) / "jobs" / job_id / "input"
    return sorted(folder.iterdir()) if folder.exists() else []


def assert_error(response: requests.Response, status: int, code: str | None = None, field: str | None = None):
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) >= {"error", "message"} and "Traceback" not in response.text, body
    if code:
        assert body["error"] == code, body
    if field:
        assert body.get("field") == field, body
    return body


# --- the whole flow ------------------------------------------------------------------------


def test_the_platforms_flow_create_upload_watch_download(api, service, db, tmp_path):
    src = geotiff(tmp_path / "site plan.tif")
    job = create(api)
    assert (job["status"], job["taskType"], job["priority"]) == ("pending", "geotiff_to_png", 1)
    assert job["inputPayload"] == {"maxSize": 2048, "outputFormat": "png"}
    job_id = job["id"]

    grant = upload_grant(api, job_id, src.stat().st_size, name="site plan.tif")
    assert grant["uploadUrl"].startswith(api.base + f"/api/uploads/{job_id}/site_plan.tif?")
    assert grant["expiresAt"].endswith("Z") and grant["method"] == "PUT"
    with open(src, "rb") as fh:
        r = requests.put(grant["uploadUrl"], data=fh, headers={"Content-Type": "image/tiff"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    assert r.json()["input"]["fileSize"] == src.stat().st_size

    seen = [requests.get(api.url(f"{GEO_JOBS}/{job_id}"), headers=bearer(), timeout=10).json()]
    assert seen[0]["status"] == "queued"  # nobody works yet
    service.start()

    def finished():
        doc = requests.get(api.url(f"{GEO_JOBS}/{job_id}"), headers=bearer(), timeout=10).json()
        seen.append(doc)
        return doc["status"] in ("succeeded", "failed", "cancelled") and doc
    done = wait_for(finished, 90, interval=0.05, what="the job to finish")
    assert done["status"] == "succeeded", done
    assert (done["progress"], done["attempts"], done["errorCode"]) == (100, 1, None)
    assert set(done["outputs"]) >= {"image", "thumbnail", "world_file", "prj", "metadata"}
    assert done["outputs"]["png"] == done["outputs"]["image"], "the old kind is still readable for one release"
    assert "path" not in json.dumps(done["input"]) and "/jobs/" not in json.dumps(done)  # no server paths
    progress = [d["progress"] for d in seen]
    assert progress == sorted(progress), "progress went backwards"

    r = requests.get(api.url(f"{GEO_JOBS}/{job_id}/events"), headers=bearer(), timeout=10)
    assert r.status_code == 200
    events = r.json()["events"]
    kinds = [e["kind"] for e in events]
    assert kinds[:3] == ["created", "queued", "claimed"] and kinds[-1] == "succeeded", kinds
    reported = [e["data"]["progress"] for e in events if e["kind"] == "progress"]
    assert len(reported) >= 3 and reported == sorted(reported) and reported[-1] >= 90

    r = requests.get(api.url(f"{GEO_JOBS}/{job_id}/download/output"), headers=bearer(), timeout=10)
    assert r.status_code == 200, r.text
    listing = r.json()
    assert {f["kind"] for f in listing["files"]} == set(done["outputs"]) - {"png"}  # the alias is no file
    out = tmp_path / "downloaded"
    out.mkdir()
    for item in listing["files"]:
        got = requests.get(item["url"], timeout=30)
        assert got.status_code == 200, (item, got.text)
        assert len(got.content) == item["size"]
        # the local backend records every output's checksum: it must be there and right
        assert item["sha256"] == __import__("hashlib").sha256(got.content).hexdigest(), item
        (out / item["fileName"]).write_bytes(got.content)
    names = {f["kind"]: f["fileName"] for f in listing["files"]}
    assert names["image"] == "site_plan.png" and names["world_file"] == "site_plan.pgw"

    world = [float(v) for v in (out / names["world_file"]).read_text().split()]
    with rasterio.open(out / names["image"]) as png:
        assert png.driver == "PNG" and max(png.width, png.height) <= 2048
        assert png.crs == CRS.from_epsg(4326)
        a, d, b, e, c, f = world
        t = png.transform
        assert np.allclose([t.a, t.b, t.d, t.e], [a, b, d, e])
        assert np.allclose([t.c + t.a / 2, t.f + t.e / 2], [c, f])  # the world file names pixel centres
        with rasterio.open(src) as tif:
            expected = transform_bounds(tif.crs, "EPSG:4326", *tif.bounds)
        assert np.allclose(png.bounds, expected, atol=abs(t.a) * 2), (png.bounds, expected)
        assert png.read(1).any()
    meta = json.loads((out / names["metadata"]).read_text())
    assert meta  # written by the pipeline; its contents are the processing tests' business

    # a changed signature or an expired URL is refused; so is a download before success
    first = listing["files"][0]["url"]
    assert_error(requests.get(first.replace("signature=", "signature=0"), timeout=10), 403, "signature_invalid")
    from geoworker.storage.signing import sign_path

    path = urlsplit(first).path
    assert_error(requests.get(api.url(sign_path(SIGNING_SECRET, "GET", path, -5)), timeout=10), 403,
                 "signature_invalid")
    assert_error(requests.get(api.url(sign_path(SIGNING_SECRET, "GET", path.rsplit("/", 1)[0] + "/nothing.png",
                                                60)), timeout=10), 404)
    other = create(api)
    assert_error(requests.get(api.url(f"{GEO_JOBS}/{other['id']}/download/output"), headers=bearer(), timeout=10),
                 409, "invalid_state")


# --- authentication ----------------------------------------------------------------------


def test_user_routes_refuse_missing_bad_expired_and_foreign_credentials(api):
    job = create(api, sub="alice")
    url = api.url(f"{GEO_JOBS}/{job['id']}")
    body = assert_error(requests.get(url, timeout=10), 401, "unauthorized")
    assert "Bearer" in body["message"]
    assert requests.get(url, timeout=10).headers["WWW-Authenticate"].startswith("Bearer")
    forged = user_token("alice", secret="not-the-secret-0123456789abcdef-0123")
    assert "signature" in assert_error(requests.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=10),
                                       401)["message"]
    expired = user_token("alice", expires_in=-60)
    assert "expired" in assert_error(requests.get(url, headers={"Authorization": f"Bearer {expired}"}, timeout=10),
                                     401)["message"]
    import jwt

    no_exp = jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256")
    assert_error(requests.get(url, headers={"Authorization": f"Bearer {no_exp}"}, timeout=10), 401)
    unsigned = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert_error(requests.get(url, headers={"Authorization": f"Bearer {unsigned}"}, timeout=10), 401)
    assert_error(requests.get(url, headers={"Authorization": "Bearer not.a.jwt"}, timeout=10), 401)

    # another user's job is not there at all, whatever the route
    for method, suffix, payload in (("GET", "", None), ("GET", "/events", None), ("GET", "/download/output", None),
                                    ("POST", "/upload", {"fileName": "a.tif", "fileSize": 10}),
                                    ("POST", "/cancel", None), ("POST", "/retry", None)):
        r = requests.request(method, url + suffix, json=payload, headers=bearer("mallory"), timeout=10)
        assert_error(r, 404, "not_found")
    assert requests.get(url, headers=bearer("alice"), timeout=10).status_code == 200
    listed = requests.get(api.url(GEO_JOBS), headers=bearer("mallory"), timeout=10).json()
    assert listed["jobs"] == [] and listed["nextOffset"] is None
    assert_error(requests.get(api.url(f"{GEO_JOBS}/{uuid.uuid4()}"), headers=bearer(), timeout=10), 404)
    assert_error(requests.get(api.url(f"{GEO_JOBS}/not-a-uuid"), headers=bearer(), timeout=10), 404)

    # a worker token is not a user credential
    assert "Bearer" in assert_error(requests.get(url, headers=worker_headers(), timeout=10), 401)["message"]


def test_worker_routes_refuse_user_tokens_and_wrong_worker_tokens(shared_api):
    api = shared_api
    claim = api.url("/api/internal/geo-jobs/claim")
    body = assert_error(requests.post(claim, headers={**bearer(), "X-Geoworker-Worker": "w1"}, timeout=10), 401)
    assert "Worker" in body["message"]
    assert_error(requests.post(claim, headers={"X-Geoworker-Worker": "w1"}, timeout=10), 401)
    assert_error(requests.post(claim, headers=worker_headers(token="wrong-token"), timeout=10), 401)
    assert_error(requests.post(claim, headers={"Authorization": worker_headers()["Authorization"]}, timeout=10),
                 422, field="X-Geoworker-Worker")
    assert_error(requests.post(claim, headers=worker_headers(worker="bad id with spaces"), timeout=10), 422)
    assert requests.post(claim, headers=worker_headers(), timeout=10).status_code == 204


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("body, field, words", [
    ({"taskType": "tiff_to_gif"}, "taskType", "unknown task"),
    ({"taskType": "geotiff_to_png", "inputPayload": {"maxSize": "big"}}, "inputPayload.maxSize", "max_size"),
    ({"taskType": "geotiff_to_png", "inputPayload": {"maxSize": 99999}}, "inputPayload.maxSize", "16384"),
    ({"taskType": "geotiff_to_png", "inputPayload": {"outputFormat": "gif"}}, "inputPayload.outputFormat", "png"),
    ({"taskType": "geotiff_to_png", "inputPayload": {"coordinateSystem": "EPSG:999999"}},
     "inputPayload.coordinateSystem", "CRS"),
    ({"taskType": "geotiff_to_png", "inputPayload": {"maxFileSize": 1}}, "inputPayload.maxFileSize", "unknown"),
    ({"taskType": "geotiff_to_png", "inputPayload": {"timeout": 10**9}}, "inputPayload.timeout", "max_processing"),
    ({"taskType": "geotiff_to_png", "priority": "1"}, "priority", "integer"),
    ({"taskType": "geotiff_to_png", "priority": 1.5}, "priority", "integer"),
    ({"taskType": 7}, "taskType", "string"),
    ({"taskType": "geotiff_to_png", "inputPayload": [1, 2]}, "inputPayload", "dictionary"),
    ({"taskType": "geotiff_to_png", "inputPayload": {"stretch": "a\u0000b"}}, "inputPayload", "NUL"),
    ({"priority": 1}, "taskType", "required"),
])
def test_bad_job_requests_are_422_naming_the_field(shared_api, body, field, words):
    r = requests.post(shared_api.url(GEO_JOBS), json=body, headers=bearer(), timeout=10)
    err = assert_error(r, 422, "validation_error", field)
    assert words.lower() in err["message"].lower(), err


def test_bodies_are_size_limited_and_not_json_is_422(shared_api):
    api = shared_api
    r = requests.post(api.url(GEO_JOBS), data=b"{" + b" " * (2 << 20) + b"}", headers={
        **bearer(), "Content-Type": "application/json"}, timeout=10)
    assert_error(r, 413, "too_large")

    def chunked():  # no Content-Length: the limit holds while the body streams
        for _ in range(40):
            yield b" " * 65536

    r = requests.post(api.url(GEO_JOBS), data=chunked(), headers={**bearer(), "Content-Type": "application/json"},
                      timeout=10)
    assert_error(r, 413, "too_large")
    r = requests.post(api.url(GEO_JOBS), data=b"{not json", headers={**bearer(), "Content-Type": "application/json"},
                      timeout=10)
    assert_error(r, 422, "validation_error")


def test_a_task_without_input_is_queued_at_once_and_cancel_works(api):
    job = create(api, task="debug.sleep", payload={"seconds": 1})
    assert job["status"] == "queued"
    r = requests.post(api.url(f"{GEO_JOBS}/{job['id']}/cancel"), headers=bearer(), timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert_error(requests.post(api.url(f"{GEO_JOBS}/{job['id']}/cancel"), headers=bearer(), timeout=10), 409)


# --- uploads --------------------------------------------------------------------------------


def test_upload_urls_are_refused_when_altered_expired_oversized_or_reused(api, tmp_path):
    from geoworker.storage.signing import sign_path

    src = geotiff(tmp_path / "in.tif", 64, 64)
    data = src.read_bytes()
    size = len(data)
    job = create(api)
    job_id = job["id"]
    url = upload_grant(api, job_id, size)["uploadUrl"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}

    def put(target, body=data, **headers):
        return requests.put(target, data=body, headers={"Content-Type": "image/tiff", **headers}, timeout=20)

    def with_query(**changes):
        return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode({**query, **changes})}"

    # altered: the size, the expiry, the signature, the file name, the job
    assert_error(put(with_query(size=size + 1000)), 403, "signature_invalid")
    assert_error(put(with_query(expires=int(query["expires"]) + 3600)), 403, "signature_invalid")
    assert_error(put(with_query(signature="0" * 64)), 403, "signature_invalid")
    assert_error(put(url.replace("/map.tif?", "/other.tif?")), 403, "signature_invalid")
    assert_error(put(url.replace(job_id, create(api)["id"])), 403, "signature_invalid")
    assert_error(put(f"{parts.scheme}://{parts.netloc}{parts.path}"), 403, "signature_invalid")
    # expired (signed with the server's secret, so only the expiry is wrong)
    expired = api.url(sign_path(SIGNING_SECRET, "PUT", parts.path, -1, size=size))
    assert "expired" in assert_error(put(expired), 403, "signature_invalid")["message"]
    # oversized: declared by Content-Length, and streamed without one
    assert_error(put(url, data + b"x" * 1000), 413, "too_large")

    def stream(extra: int):
        yield data
        yield b"x" * extra

    assert_error(put(url, stream(5000)), 413, "too_large")
    # short, not a TIFF, declared as something else
    assert_error(put(url, data[:-10]), 422, "invalid_input")
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * (size - 8)
    assert "PNG" in assert_error(put(url, png), 422, "invalid_input")["message"]
    assert_error(put(url, **{"Content-Type": "text/html"}), 415)
    assert stored_inputs(api, job_id) == [], "a refused upload left something behind"
    status = requests.get(api.url(f"{GEO_JOBS}/{job_id}"), headers=bearer(), timeout=10).json()["status"]
    assert status == "pending"

    # the real thing, once
    r = put(url)
    assert r.status_code == 200 and r.json()["status"] == "queued", r.text
    assert [p.name for p in stored_inputs(api, job_id)] == ["map.tif"]
    before = stored_inputs(api, job_id)[0].read_bytes()
    assert_error(put(url, b"II*\x00" + b"y" * (size - 4)), 409, "invalid_state")  # reused
    assert stored_inputs(api, job_id)[0].read_bytes() == before == data
    # a queued job gives no new upload URL
    r = requests.post(api.url(f"{GEO_JOBS}/{job_id}/upload"), headers=bearer(), timeout=10,
                      json={"fileName": "again.tif", "fileSize": size})
    assert_error(r, 409, "invalid_state")
    events = requests.get(api.url(f"{GEO_JOBS}/{job_id}/events"), headers=bearer(), timeout=10).json()["events"]
    assert [e["kind"] for e in events] == ["created", "queued"]
    assert events[1]["data"]["size"] == size


@pytest.mark.parametrize("body, field", [
    ({"fileName": "a.tif", "fileSize": 200 << 20, "fileType": "image/tiff"}, "fileSize"),
    ({"fileName": "a.tif", "fileSize": 0}, "fileSize"),
    ({"fileName": "a.tif", "fileSize": "10"}, "fileSize"),
    ({"fileName": "page.html", "fileSize": 10, "fileType": "text/html"}, "fileType"),
    ({"fileSize": 10}, "fileName"),
    ({"fileName": "a\u0000.tif", "fileSize": 10}, "fileName"),
])
def test_bad_upload_requests_are_422_naming_the_field(shared_api, body, field):
    api = shared_api
    job = create(api)
    r = requests.post(api.url(f"{GEO_JOBS}/{job['id']}/upload"), json=body, headers=bearer(), timeout=10)
    assert_error(r, 422, field=field)


def test_a_file_name_cannot_climb_out_of_the_jobs_directory(api, tmp_path):
    data = geotiff(tmp_path / "in.tif", 32, 32).read_bytes()
    job = create(api)
    grant = upload_grant(api, job["id"], len(data), name="../../../etc/passwd.tif")
    assert re.search(r"/api/uploads/[0-9a-f-]{36}/[A-Za-z0-9._-]+\?", grant["uploadUrl"]), grant
    r = requests.put(grant["uploadUrl"], data=data, headers={"Content-Type": "image/tiff"}, timeout=20)
    assert r.status_code == 200, r.text
    assert [p.name for p in stored_inputs(api, job["id"])] == ["passwd.tif"]


# --- the document --------------------------------------------------------------------------------


def test_openapi_document_is_served_and_health_reports_the_schema(shared_api):
    api = shared_api
    doc = requests.get(api.url("/openapi.json"), timeout=10).json()
    paths = doc["paths"]
    for path in (GEO_JOBS, GEO_JOBS + "/{job_id}", GEO_JOBS + "/{job_id}/upload", GEO_JOBS + "/{job_id}/events",
                 GEO_JOBS + "/{job_id}/download/output", "/api/internal/geo-jobs/claim",
                 "/api/internal/geo-jobs/{job_id}/progress", "/api/internal/geo-jobs/{job_id}/heartbeat",
                 "/api/internal/geo-jobs/{job_id}/complete", "/api/internal/geo-jobs/{job_id}/fail", "/health"):
        assert path in paths, path
    assert set(doc["components"]["securitySchemes"]) == {"UserJWT", "WorkerToken"}
    health = requests.get(api.url("/health"), timeout=10)
    assert health.status_code == 200
    assert health.json()["checks"]["schema"]["ok"] is True and health.json()["status"] == "healthy"


def test_the_api_will_not_start_without_its_secrets(cli_env):
    from service import run_cli

    result = run_cli(["api"], cli_env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "configuration error: api.jwt_secret: required" in result.stderr and "Traceback" not in result.stderr
    result = run_cli(["api"], {**cli_env, "GEOWORKER_API_JWT_SECRET": JWT_SECRET}, timeout=60)
    assert result.returncode == 2 and "api.signing_secret" in result.stderr, result.stderr
