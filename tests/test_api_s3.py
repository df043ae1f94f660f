"""The API on the s3 backend, with a remote worker (queue.mode = "http") sharing only the bucket.

This is the deployment a worker without database access really has: the API stores the
upload in S3 (moto's server on loopback), the remote worker fetches it from there and
stores its outputs there, and the API hands out presigned download URLs.
"""

from __future__ import annotations

import os
import uuid

import pytest
import rasterio
import requests

import rasters
from apiserver import FAST, WORKER_TOKEN, ApiServer, bearer, check_log
from service import Database, Service, wait_for, write_config
from test_storage_support import S3Server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def s3_env(s3, bucket: str) -> dict[str, str]:
    return {"GEOWORKER_STORAGE_BACKEND": "s3", "GEOWORKER_STORAGE_S3_ENDPOINT_URL": s3.endpoint,
            "GEOWORKER_STORAGE_S3_BUCKET": bucket, "GEOWORKER_STORAGE_S3_REGION": "us-east-1",
            "GEOWORKER_STORAGE_S3_ACCESS_KEY_ID": "test", "GEOWORKER_STORAGE_S3_SECRET_ACCESS_KEY": "test"}


def test_upload_remote_processing_and_presigned_downloads_on_s3(s3, cli_env, dsn, tmp_path):
    bucket = f"geo-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    api = ApiServer({**cli_env, **FAST, **s3_env(s3, bucket)}, tmp_path).start()
    home = tmp_path / "remote"
    home.mkdir()
    config = write_config(home / "config.toml", {
        "worker": {"poll_interval": 2.0, "heartbeat_interval": 1.0}, "queue": {"mode": "http"},
        "storage": {"temp_dir": str(home / "tmp")}, "logging": {"file": str(home / "worker.log")},
        "metrics": {"port": 0}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "GEOWORKER_")) and k != "DATABASE_URL"}
    env.update({**s3_env(s3, bucket), "GEOWORKER_CONFIG": str(config), "API_BASE_URL": api.base,
                "WORKER_AUTH_TOKEN": WORKER_TOKEN, "PYTHONUNBUFFERED": "1"})
    worker = Service(env, home, name="remote")
    db = Database(dsn)
    try:
        src = rasters.write(tmp_path / "ortho.tif", rasters.gradient_rgb(150, 200), compress="deflate")
        job = requests.post(api.url("/api/geo-jobs"), headers=bearer(), timeout=10,
                            json={"taskType": "geotiff_to_png", "inputPayload": {"maxSize": 512}}).json()
        grant = requests.post(api.url(f"/api/geo-jobs/{job['id']}/upload"), headers=bearer(), timeout=10,
                              json={"fileName": "ortho.tif", "fileSize": src.stat().st_size}).json()
        r = requests.put(grant["uploadUrl"], data=src.read_bytes(), headers={"Content-Type": "image/tiff"},
                         timeout=30)
        assert r.status_code == 200, r.text
        key = f"jobs/{job['id']}/input/ortho.tif"
        assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == src.read_bytes()
        assert not (tmp_path / "storage").exists(), "the s3 backend kept a copy on the API's disk"

        worker.start()
        wait_for(lambda: db.job(job["id"])["status"] in ("succeeded", "failed"), 90, what="the job to finish")
        row = db.job(job["id"])
        assert row["status"] == "succeeded", row["last_error"]
        assert all(str(ref).startswith(f"s3://{bucket}/jobs/{job['id']}/output/") for ref in row["outputs"].values())
        assert not (home / "var").exists()

        listing = requests.get(api.url(f"/api/geo-jobs/{job['id']}/download/output"), headers=bearer(),
                               timeout=10).json()
        assert {f["kind"] for f in listing["files"]} == set(row["outputs"])
        for item in listing["files"]:
            assert item["url"].startswith(s3.endpoint) and "Signature=" in item["url"], item
            got = requests.get(item["url"], timeout=20)
            assert got.status_code == 200, item
            (tmp_path / item["fileName"]).write_bytes(got.content)
        with rasterio.open(tmp_path / "ortho.png") as png:
            assert png.crs.to_epsg() == 4326 and max(png.width, png.height) <= 512
    finally:
        db.close()
        worker.stop()
        api.stop()
    check_log(api)
