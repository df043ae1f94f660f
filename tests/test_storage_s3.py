"""The s3 backend against a real S3-compatible server: moto's standalone server, as a subprocess on loopback."""

from __future__ import annotations

import hashlib
import uuid

import pytest
import requests

from geoworker.errors import InvalidInput, PermanentStorageError, StorageError, TooLarge, describe
from geoworker.storage import TransferPolicy, open_backend
from test_storage_support import (FAST, Job, S3Server, free_port, make_settings, run_claimed_job, submit_local,
                                  write_geotiff)

JOB_ID = "9a8b7c6d-3333-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def bucket(s3):
    name = f"geo-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(s3, bucket, tmp_path):
    return s3.settings(tmp_path, bucket, prefix="/tenant-a/", max_file_size=32 << 20)


@pytest.fixture
def backend(settings):
    with open_backend(settings, transfer=FAST) as b:
        yield b


def test_s3_round_trip_import_fetch_store_presign(backend, s3, bucket, tmp_path):
    src = write_geotiff(tmp_path / "../up/site plan.tif")
    ref = backend.import_file(JOB_ID, src)
    key = f"tenant-a/jobs/{JOB_ID}/input/site_plan.tif"
    assert ref == {"backend": "s3", "url": f"s3://{bucket}/{key}", "name": "site_plan.tif",
                   "size": src.stat().st_size, "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}
    assert s3.client().get_object(Bucket=bucket, Key=key)["Body"].read() == src.read_bytes()

    got = backend.fetch(Job(JOB_ID, ref), tmp_path / "in")
    assert got.path == tmp_path / "in" / "site_plan.tif" and got.path.read_bytes() == src.read_bytes()
    assert got.sha256 == ref["sha256"] and got.source == ref["url"]

    out = tmp_path / "out"
    out.mkdir()
    (out / "site.png").write_bytes(b"\x89PNG\r\n\x1a\npixels")
    (out / "site.pgw").write_text("0.5\n0\n0\n-0.5\n1\n2\n")
    refs = backend.store_outputs(Job(JOB_ID), {"png": out / "site.png", "worldfile": out / "site.pgw"})
    assert refs == {"png": f"s3://{bucket}/tenant-a/jobs/{JOB_ID}/output/site.png",
                    "worldfile": f"s3://{bucket}/tenant-a/jobs/{JOB_ID}/output/site.pgw"}
    head = s3.client().head_object(Bucket=bucket, Key=f"tenant-a/jobs/{JOB_ID}/output/site.png")
    assert head["ContentType"] == "image/png"

    url = backend.presign(refs["png"])
    assert "X-Amz-Expires=3600" in url and "X-Amz-Signature=" in url
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == b"\x89PNG\r\n\x1a\npixels"


def test_large_outputs_go_up_in_parts(settings, s3, bucket, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(bytes(range(256)) * (11 * 4096))  # 11 MiB: three 5 MiB parts at a 5 MiB threshold
    from geoworker.storage.s3 import S3Backend

    b = S3Backend(settings, transfer=FAST, multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    try:
        refs = b.store_outputs(Job(JOB_ID), {"png": big})
    finally:
        b.close()
    key = refs["png"].split(f"s3://{bucket}/", 1)[1]
    head = s3.client().head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_an_object_over_the_cap_is_refused_from_its_length(s3, bucket, tmp_path):
    s3.client().put_object(Bucket=bucket, Key="in/huge.tif", Body=b"II*\x00" + b"\x00" * 5000)
    settings = s3.settings(tmp_path, bucket, max_file_size=1000)
    with open_backend(settings, transfer=FAST) as b:
        with pytest.raises(TooLarge):
            b.fetch(Job(JOB_ID, {"url": f"s3://{bucket}/in/huge.tif"}), tmp_path / "in")
    assert list((tmp_path / "in").iterdir()) == []


def test_only_the_configured_bucket_can_be_read(backend, s3, tmp_path):
    other = f"private-{uuid.uuid4().hex[:8]}"
    s3.client().create_bucket(Bucket=other)
    s3.client().put_object(Bucket=other, Key="secret.tif", Body=b"II*\x00secret")
    with pytest.raises(InvalidInput, match="configured bucket"):
        backend.fetch(Job(JOB_ID, {"url": f"s3://{other}/secret.tif"}), tmp_path / "in")


def test_a_missing_object_is_a_permanent_storage_error(backend, bucket, tmp_path):
    with pytest.raises(PermanentStorageError, match="NoSuchKey") as info:
        backend.fetch(Job(JOB_ID, {"url": f"s3://{bucket}/no/such.tif"}), tmp_path / "in")
    assert describe(info.value)[0::2] == ("storage_error", True)


def test_a_declared_non_tiff_type_is_refused(backend, s3, bucket, tmp_path):
    s3.client().put_object(Bucket=bucket, Key="page.tif", Body=b"<html>", ContentType="text/html")
    with pytest.raises(InvalidInput, match="text/html"):
        backend.fetch(Job(JOB_ID, {"url": f"s3://{bucket}/page.tif"}), tmp_path / "in")


def test_an_unreachable_endpoint_is_transient(tmp_path):
    settings = make_settings(tmp_path, backend="s3", s3={"endpoint_url": f"http://127.0.0.1:{free_port()}",
                             "bucket": "b", "region": "us-east-1", "access_key_id": "k", "secret_access_key": "s"})
    quick = TransferPolicy(connect_timeout=1, read_timeout=1, attempts=1)
    with open_backend(settings, transfer=quick) as b:
        with pytest.raises(StorageError) as info:
            b.fetch(Job(JOB_ID, {"url": "s3://b/x.tif"}), tmp_path / "in")
        out = tmp_path / "o.png"
        out.write_bytes(b"x")
        with pytest.raises(StorageError):
            b.store_outputs(Job(JOB_ID), {"png": out})
    assert describe(info.value)[0::2] == ("storage_error", False)


def test_geotiff_to_png_end_to_end_on_s3_with_download_urls(queue, settings, s3, bucket, tmp_path):
    src = write_geotiff(tmp_path / "ortho.tif")
    with open_backend(settings, transfer=FAST) as backend:
        submit_local(queue, backend, src, params={"presign_urls": True})
        done, _, _, workdir = run_claimed_job(queue, settings, backend)
    assert done.status == "succeeded", done.last_error
    assert not workdir.exists()
    sums = done.result["sha256"]
    assert sums["input"] == hashlib.sha256(src.read_bytes()).hexdigest()
    client = s3.client()
    for kind, ref in done.outputs.items():
        assert ref.startswith(f"s3://{bucket}/tenant-a/jobs/{done.id}/output/ortho")
        body = client.get_object(Bucket=bucket, Key=ref.split(f"s3://{bucket}/", 1)[1])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sums["outputs"][kind]
    png = requests.get(done.result["download_urls"]["image"], timeout=10)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert done.result["download_urls_expire_in"] == 3600


def test_a_tile_archive_and_a_tile_tree_in_s3_are_read_by_range(backend, s3, bucket, tmp_path):
    """The API reads tiles out of a PMTiles archive where s3 keeps it, by ranged GETs; tile_dir is a tree."""
    from geoworker.pmtiles_archive import Archive
    from geoworker.processing.map_options import TileOptions
    from geoworker.processing.tiles import make_tiles

    src = write_geotiff(tmp_path / "site.tif")
    out = tmp_path / "out"
    made = make_tiles(src, out, TileOptions.from_mapping({}, {"tile_dir": True}))
    refs = backend.store_outputs(Job(JOB_ID), {kind: out / name for kind, name in made["outputs"].items()})
    assert refs["tile_dir"] == f"s3://{bucket}/tenant-a/jobs/{JOB_ID}/output/tiles/"
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=f"tenant-a/jobs/{JOB_ID}/output/tiles/")
            .get("Contents", [])}
    local_tiles = sorted((out / "tiles").rglob("*.png"))
    assert len(keys) == len(local_tiles) > 0

    reads: list[tuple[int, int]] = []

    def read(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return backend.read_range(refs["pmtiles"], offset, length)

    archive = Archive(read)
    for path in local_tiles:
        z, x, y = int(path.parent.parent.name), int(path.parent.name), int(path.stem)
        assert archive.tile(z, x, y) == path.read_bytes()
    assert archive.tile(0, 0, 0) is None
    size = (out / made["outputs"]["pmtiles"]).stat().st_size
    assert len(reads) == 1 + len(local_tiles), "one read for the header and directory, then one per tile"
    assert all(length < size for _, length in reads[1:]), "ranged reads, never the whole archive"


def test_sidecars_are_stored_beside_the_input_in_s3_and_fetched_with_it(backend, bucket, tmp_path):
    src = write_geotiff(tmp_path / "up" / "Site Plan.tif")
    (src.parent / "Site Plan.tfw").write_text("2\n0\n0\n-2\n400000\n1700000\n")
    (src.parent / "Site Plan.tif.aux.xml").write_text("<PAMDataset/>")
    ref = backend.import_file(JOB_ID, src)
    ref = backend.import_sidecars(JOB_ID, ref, src.name, [src.parent / "Site Plan.tfw",
                                                          src.parent / "Site Plan.tif.aux.xml"])
    assert [s["url"] for s in ref["sidecars"]] == [
        f"s3://{bucket}/tenant-a/jobs/{JOB_ID}/input/Site_Plan.tfw",
        f"s3://{bucket}/tenant-a/jobs/{JOB_ID}/input/Site_Plan.tif.aux.xml"]
    got = backend.fetch(Job(JOB_ID, ref), tmp_path / "work")
    assert got.path.name == "Site_Plan.tif"
    assert sorted(p.name for p in got.sidecars) == ["Site_Plan.tfw", "Site_Plan.tif.aux.xml"]
    assert (tmp_path / "work" / "Site_Plan.tfw").read_text().startswith("2\n")


def test_discarding_an_input_deletes_it_and_its_sidecars_and_nothing_else(backend, s3, bucket, tmp_path):
    """The upload of a job cancelled meanwhile: what import_file stored goes; a reference is data,
    so an object outside this backend's input keys stays."""
    src = write_geotiff(tmp_path / "up" / "site.tif")
    (src.parent / "site.tfw").write_text("2\n0\n0\n-2\n400000\n1700000\n")
    ref = backend.import_sidecars(JOB_ID, backend.import_file(JOB_ID, src), src.name, [src.parent / "site.tfw"])
    client = s3.client()
    client.put_object(Bucket=bucket, Key="tenant-a/keep.tif", Body=b"II*\x00")
    client.put_object(Bucket=bucket, Key=f"tenant-a/jobs/{JOB_ID}/output/site.png", Body=b"png")

    def keys() -> set[str]:
        return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}

    assert f"tenant-a/jobs/{JOB_ID}/input/site.tif" in keys()
    backend.discard_input({**ref, "sidecars": [*ref["sidecars"], {"url": f"s3://{bucket}/tenant-a/keep.tif"},
                                                {"url": f"s3://{bucket}/tenant-a/jobs/{JOB_ID}/output/site.png"}]})
    assert keys() == {"tenant-a/keep.tif", f"tenant-a/jobs/{JOB_ID}/output/site.png"}
