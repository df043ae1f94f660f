"""The map products through the API: tiles out of the PMTiles archive, TileJSON, and the COG by range.

One `geoworker api` and one `geoworker run` for the module; a geotiff_to_tiles job and a
geotiff_to_cog job are run once through the platform's flow (create, upload, wait), then each
test reads what they made: tiles compared byte for byte with the archive in storage, owner
isolation and signature checks, and the COG read remotely by GDAL through HTTP range requests.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import numpy as np
import rasterio.windows
import pytest
import rasterio
import requests
from pmtiles.reader import MmapSource, Reader

import rasters
from apiserver import SIGNING_SECRET, FAST, ApiServer, bearer, check_log, module_database, service_env
from geoworker.storage.signing import signature
from service import Service, wait_for, write_config

pytestmark = pytest.mark.timeout(300)
GEO_JOBS = "/api/geo-jobs"


@pytest.fixture(scope="module")
def fleet(admin_dsn, template_db, tmp_path_factory):
    """An API and a worker on one database, and the two map jobs they ran for alice."""
    tmp = tmp_path_factory.mktemp("tiles")
    with module_database(admin_dsn, template_db) as dsn:
        env = {**service_env(dsn, tmp), **FAST}
        api = ApiServer(env, tmp).start()
        config = write_config(tmp / "worker.toml", {"worker": {"concurrency": 2, "poll_interval": 0.5,
                                                               "heartbeat_interval": 1.0}})
        worker = Service({**env, "GEOWORKER_CONFIG": str(config)}, tmp, name="worker").start()
        try:
            src = rasters.write(tmp / "site.tif", rasters.gradient_rgb(300, 400), compress="deflate")
            jobs = {task: run_job(api, task, src, payload) for task, payload in
                    (("geotiff_to_tiles", {"zoom": "13-16"}), ("geotiff_to_cog", {}))}
            yield api, jobs, Path(env["GEOWORKER_STORAGE_ROOT"]), src
        finally:
            worker.stop()
            api.stop()
        check_log(api)


def run_job(api: ApiServer, task: str, src: Path, payload: dict) -> dict:
    r = requests.post(api.url(GEO_JOBS), json={"taskType": task, "inputPayload": payload}, headers=bearer("alice"),
                      timeout=10)
    assert r.status_code == 201, r.text
    job = r.json()
    grant = requests.post(api.url(f"{GEO_JOBS}/{job['id']}/upload"), headers=bearer("alice"), timeout=10,
                          json={"fileName": src.name, "fileSize": src.stat().st_size, "fileType": "image/tiff"}).json()
    assert requests.put(grant["uploadUrl"], data=src.read_bytes(), headers={"Content-Type": "image/tiff"},
                        timeout=30).status_code == 200

    def done():
        doc = requests.get(api.url(f"{GEO_JOBS}/{job['id']}"), headers=bearer("alice"), timeout=10).json()
        return doc if doc["status"] in ("succeeded", "failed") else None

    doc = wait_for(done, 120, interval=0.2, what=f"the {task} job")
    assert doc["status"] == "succeeded", doc
    return doc


def tilejson(api, job_id: str, sub: str = "alice") -> requests.Response:
    return requests.get(api.url(f"{GEO_JOBS}/{job_id}/tilejson.json"), headers=bearer(sub), timeout=10)


def archive_of(storage: Path, job_id: str) -> Reader:
    path = next((storage / "jobs" / job_id / "output").glob("*.pmtiles"))
    return Reader(MmapSource(open(path, "rb")))


def test_tilejson_gives_a_template_a_map_can_fetch_without_headers(fleet):
    api, jobs, storage, _ = fleet
    job = jobs["geotiff_to_tiles"]
    r = tilejson(api, job["id"])
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["tilejson"] == "3.0.0" and (doc["minzoom"], doc["maxzoom"]) == (13, 16)
    template = doc["tiles"][0]
    assert template.startswith(api.base + f"{GEO_JOBS}/{job['id']}/tiles/{{z}}/{{x}}/{{y}}.png?")
    reader = archive_of(storage, job["id"])
    served = 0
    for z in range(13, 17):
        for (tz, tx, ty), data in ((k, v) for k, v in _tiles(reader) if k[0] == z):
            got = requests.get(template.format(z=tz, x=tx, y=ty), timeout=10)  # no Authorization header
            assert got.status_code == 200, got.text
            assert got.headers["Content-Type"] == "image/png" and got.content == data
            assert got.headers["ETag"] and "max-age" in got.headers["Cache-Control"]
            served += 1
    assert served == sum(1 for _ in _tiles(reader)) > 4


def _tiles(reader: Reader):
    from pmtiles.reader import all_tiles

    return all_tiles(reader.get_bytes)


def test_a_tile_the_archive_lacks_is_204_and_outside_the_matrix_is_400(fleet):
    api, jobs, _, _ = fleet
    job_id = jobs["geotiff_to_tiles"]["id"]
    url = lambda z, x, y, ext="png": api.url(f"{GEO_JOBS}/{job_id}/tiles/{z}/{x}/{y}.{ext}")  # noqa: E731
    assert requests.get(url(14, 0, 0), headers=bearer(), timeout=10).status_code == 204  # far from Sana'a
    assert requests.get(url(3, 0, 0), headers=bearer(), timeout=10).status_code == 204  # above minzoom
    for z, x, y in ((40, 0, 0), (14, 2 ** 14, 0), (14, 0, -1), (-1, 0, 0)):
        r = requests.get(url(z, x, y), headers=bearer(), timeout=10)
        assert r.status_code in (400, 422) and r.status_code != 500, (z, x, y, r.text)
    r = requests.get(url(14, 0, 0, "webp"), headers=bearer(), timeout=10)
    assert r.status_code == 400 and "png" in r.json()["message"]


def test_an_unchanged_tile_is_304(fleet):
    api, jobs, storage, _ = fleet
    job_id = jobs["geotiff_to_tiles"]["id"]
    (z, x, y), _data = next(iter(_tiles(archive_of(storage, job_id))))
    url = api.url(f"{GEO_JOBS}/{job_id}/tiles/{z}/{x}/{y}.png")
    first = requests.get(url, headers=bearer(), timeout=10)
    again = requests.get(url, headers={**bearer(), "If-None-Match": first.headers["ETag"]}, timeout=10)
    assert (first.status_code, again.status_code) == (200, 304) and again.content == b""


def test_another_user_and_bad_signatures_cannot_read_the_tiles(fleet):
    api, jobs, storage, _ = fleet
    job_id = jobs["geotiff_to_tiles"]["id"]
    (z, x, y), _data = next(iter(_tiles(archive_of(storage, job_id))))
    tile_path = f"{GEO_JOBS}/{job_id}/tiles/{z}/{x}/{y}.png"
    assert tilejson(api, job_id, sub="mallory").status_code == 404
    assert requests.get(api.url(tile_path), headers=bearer("mallory"), timeout=10).status_code == 404
    assert requests.get(api.url(tile_path), timeout=10).status_code == 401

    template = tilejson(api, job_id).json()["tiles"][0]
    signed = urlsplit(template.format(z=z, x=x, y=y))
    query = {k: v[0] for k, v in parse_qs(signed.query).items()}
    altered = {**query, "expires": str(int(query["expires"]) + 3600)}
    r = requests.get(urlunsplit(signed._replace(query=urlencode(altered))), timeout=10)
    assert r.status_code == 403 and r.json()["error"] == "signature_invalid"
    past = int(time.time()) - 10
    expired = {"expires": past, "signature": signature(SIGNING_SECRET, "GET", f"{GEO_JOBS}/{job_id}/tiles/", past)}
    assert requests.get(api.url(tile_path) + "?" + urlencode(expired), timeout=10).status_code == 403
    # the signature covers this job's tiles only: not another job's
    other = jobs["geotiff_to_cog"]["id"]
    r = requests.get(api.url(f"{GEO_JOBS}/{other}/tiles/{z}/{x}/{y}.png") + "?" + signed.query, timeout=10)
    assert r.status_code == 403


def test_a_job_without_tiles_has_no_tilejson(fleet):
    api, jobs, _, _ = fleet
    r = tilejson(api, jobs["geotiff_to_cog"]["id"])
    assert r.status_code == 404 and "no tiles" in r.json()["message"]


def test_bad_map_parameters_are_refused_when_the_job_is_created(fleet):
    api, _, _, _ = fleet
    for task, payload, field in (("geotiff_to_tiles", {"zoom": "3-40"}, "inputPayload.zoom"),
                                 ("geotiff_to_tiles", {"zoom": "9-5"}, "inputPayload.zoom"),
                                 ("geotiff_to_tiles", {"tileFormat": "gif"}, "inputPayload.tileFormat"),
                                 ("geotiff_to_cog", {"compression": "rle"}, "inputPayload.compression")):
        r = requests.post(api.url(GEO_JOBS), json={"taskType": task, "inputPayload": payload},
                          headers=bearer("alice"), timeout=10)
        assert r.status_code == 422 and r.json()["field"] == field, (payload, r.text)


def test_the_cog_download_answers_range_requests_and_gdal_reads_it_remotely(fleet):
    api, jobs, storage, src = fleet
    job_id = jobs["geotiff_to_cog"]["id"]
    listing = requests.get(api.url(f"{GEO_JOBS}/{job_id}/download/output"), headers=bearer(), timeout=10).json()
    cog = next(f for f in listing["files"] if f["kind"] == "cog")
    local_path = next((storage / "jobs" / job_id / "output").glob("*.cog.tif"))
    local = local_path.read_bytes()
    part = requests.get(cog["url"], headers={"Range": "bytes=100-1123"}, timeout=10)
    assert part.status_code == 206 and part.content == local[100:1124]
    assert part.headers["Content-Range"] == f"bytes 100-1123/{len(local)}"
    with rasterio.open(cog["url"]) as remote, rasterio.open(src) as original, rasterio.open(local_path) as stored:
        # GDAL reads it over HTTP by range requests (/vsicurl/): the same pixels as the stored file
        assert (remote.width, remote.height, remote.crs) == (original.width, original.height, original.crs)
        window = rasterio.windows.Window(50, 40, 200, 150)
        assert np.array_equal(remote.read(window=window), stored.read(window=window))
        assert remote.overviews(1) == stored.overviews(1) != []
