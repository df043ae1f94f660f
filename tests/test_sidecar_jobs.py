"""Sidecar files travel with a job: `submit FILE` stores them beside the input, the worker fetches them
beside it, and the API takes a ZIP of a GeoTIFF and its sidecars, unpacked safely.

The raster has no georeferencing of its own: only its world file and .aux.xml place it in
Sana'a (UTM 38N), so a job's output is right only if they arrived with it.
"""

from __future__ import annotations

import io
import json
import stat
import warnings
import zipfile
from pathlib import Path

import pytest
import requests
from rasterio.errors import NotGeoreferencedWarning

import rasters
from apiserver import api, api_env, bearer  # noqa: F401 (fixtures)
from geoworker.errors import InvalidInput, TooLarge
from geoworker.processing.georef import transform_from_world_file
from geoworker.storage import open_backend
from geoworker.storage.ziparchive import unpack
from geoworker.submit import prepare, submit
from service import Service, wait_for, write_config
from test_storage_support import make_settings, run_claimed_job

WORLD = "0.5\n0\n0\n-0.5\n414000.25\n1697999.75\n"
AUX = f"<PAMDataset><SRS>{rasters.UTM38N.to_wkt()}</SRS></PAMDataset>"


def scan(folder: Path, name: str = "Site Scan.tif") -> Path:
    """A TIFF with no georeferencing, its world file and its .aux.xml (the CRS)."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        src = rasters.write(folder / name, rasters.gradient_rgb(40, 60), crs=None)
    (folder / (src.stem + ".tfw")).write_text(WORLD)
    (folder / (src.name + ".aux.xml")).write_text(AUX)
    return src


def assert_placed_in_sanaa(result: dict) -> None:
    meta = result["metadata"]
    assert meta["crs_epsg"] == 32638, meta
    west, south, east, north = meta["bounds_wgs84"]
    assert 44.19 < west < 44.2 and 15.35 < north < 15.36, meta["bounds_wgs84"]


def test_submit_file_takes_its_sidecars_along_and_the_job_reads_them(queue, tmp_path):
    src = scan(tmp_path / "upload")
    settings = make_settings(tmp_path)
    job = submit(queue, settings, prepare(settings, "geotiff_to_png", src, {"coordinate_system": "native"}))
    stored = {s["name"] for s in job.input["sidecars"]}
    assert stored == {"Site_Scan.tfw", "Site_Scan.tif.aux.xml"}, "renamed as the TIFF was (Site Scan -> Site_Scan)"
    with open_backend(settings) as backend:
        done, result, _, _ = run_claimed_job(queue, settings, backend)
    assert done.status == "succeeded", done.last_error
    assert_placed_in_sanaa(done.result)
    assert done.result["input"]["sidecars"] == ["Site_Scan.tfw", "Site_Scan.tif.aux.xml"]
    world = transform_from_world_file(Path(done.outputs["world_file"]).read_text().split())
    assert world.a == pytest.approx(0.5) and world.c == pytest.approx(414000.25)


def test_without_its_sidecars_the_same_file_has_no_place(queue, tmp_path):
    src = scan(tmp_path / "upload")
    for sidecar in (src.with_suffix(".tfw"), src.parent / (src.name + ".aux.xml")):
        sidecar.unlink()
    settings = make_settings(tmp_path)
    submit(queue, settings, prepare(settings, "geotiff_to_png", src, {"coordinate_system": "native"}))
    with open_backend(settings) as backend:
        done, _, _, _ = run_claimed_job(queue, settings, backend)
    assert done.status == "succeeded" and done.result["metadata"]["crs_epsg"] is None


def make_zip(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path


def test_unpack_takes_one_tiff_and_flattens_folders(tmp_path):
    src = scan(tmp_path / "in", "site.tif")
    archive = make_zip(tmp_path / "a.zip", {"survey/site.tif": src.read_bytes(), "survey/site.tfw": WORLD.encode(),
                                            "survey/site.tif.aux.xml": AUX.encode(), "__MACOSX/._site.tif": b"x",
                                            "notes.txt": b"hello"})
    out = tmp_path / "out"
    out.mkdir()
    tiff, others = unpack(archive, out, 10 << 20)
    assert tiff.name == "site.tif" and sorted(p.name for p in others) == ["notes.txt", "site.tfw", "site.tif.aux.xml"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "site.tfw", "site.tif", "site.tif.aux.xml"]


@pytest.mark.parametrize("members,links,message", [
    ({"../../etc/evil.tif": b"II*\x00"}, None, "points outside the archive"),
    ({"/abs/evil.tif": b"II*\x00"}, None, "points outside the archive"),
    ({"C:/evil.tif": b"II*\x00"}, None, "points outside the archive"),
    ({"a.tif": b"II*\x00" + b"0" * 10}, {"b.tfw": "/etc/passwd"}, "is a link"),
    ({"a.tif": b"II*\x00", "b.tif": b"MM\x00*"}, None, "exactly one GeoTIFF \\(found 2: a.tif, b.tif\\)"),
    ({"readme.txt": b"no tiff here"}, None, "exactly one GeoTIFF \\(found 0"),
    ({f"f{i}.txt": b"x" for i in range(17)}, None, "at most 16"),
    ({"a/b/c/d/e/f/deep.tif": b"II*\x00"}, None, "nested more than"),
    ({"x/a.tif": b"II*\x00", "y/a.tif": b"II*\x00"}, None, "two files named a.tif"),
])
def test_unpack_refuses_what_is_unsafe(tmp_path, members, links, message):
    archive = make_zip(tmp_path / "bad.zip", members, links)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InvalidInput, match=message):
        unpack(archive, out, 10 << 20)
    assert not (tmp_path / "etc").exists() and not Path("/abs").exists()


def test_unpack_counts_bytes_as_written_not_as_declared(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"a.tif": b"II*\x00" + bytes(50 << 20)})
    assert archive.stat().st_size < 200_000, "50 MB of zeros compress to almost nothing"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(TooLarge, match="unpacks to more than"):
        unpack(archive, out, 1 << 20)
    assert sum(p.stat().st_size for p in out.iterdir()) <= 1 << 20
    # and a header that lies about the size is caught while writing
    raw = bytearray(archive.read_bytes())
    for marker in (b"PK\x03\x04", b"PK\x01\x02"):  # patch the declared sizes of the one member down to 1 KiB
        at = raw.find(marker)
        offset = 22 if marker == b"PK\x03\x04" else 24
        raw[at + offset:at + offset + 4] = (1024).to_bytes(4, "little")
    liar = tmp_path / "liar.zip"
    liar.write_bytes(bytes(raw))
    out2 = tmp_path / "out2"
    out2.mkdir()
    with pytest.raises((TooLarge, InvalidInput)):
        unpack(liar, out2, 1 << 20)
    assert sum(p.stat().st_size for p in out2.iterdir()) <= 1 << 20


def test_the_api_takes_a_zip_of_a_geotiff_and_its_sidecars(api, cli_env, tmp_path):
    src = scan(tmp_path / "in", "plan.tif")
    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as z:
        z.write(src, "plan/plan.tif")
        z.write(src.with_suffix(".tfw"), "plan/plan.tfw")
        z.write(src.parent / "plan.tif.aux.xml", "plan/plan.tif.aux.xml")
        z.writestr("plan/readme.txt", "not a sidecar")
    data = body.getvalue()
    r = requests.post(api.url("/api/geo-jobs"), headers=bearer(), timeout=10,
                      json={"taskType": "geotiff_to_png", "inputPayload": {"coordinateSystem": "native"}})
    job_id = r.json()["id"]
    grant = requests.post(api.url(f"/api/geo-jobs/{job_id}/upload"), headers=bearer(), timeout=10,
                          json={"fileName": "plan.zip", "fileSize": len(data), "fileType": "application/zip"})
    assert grant.status_code == 200, grant.text
    put = requests.put(grant.json()["uploadUrl"], data=data, headers={"Content-Type": "application/zip"}, timeout=30)
    assert put.status_code == 200, put.text
    assert put.json()["input"]["fileName"] == "plan.tif"
    config = write_config(tmp_path / "w.toml", {"worker": {"concurrency": 1, "poll_interval": 0.5}})
    worker = Service({**cli_env, "GEOWORKER_CONFIG": str(config)}, tmp_path, name="worker").start()
    try:
        def finished():
            doc = requests.get(api.url(f"/api/geo-jobs/{job_id}"), headers=bearer(), timeout=10).json()
            return doc if doc["status"] in ("succeeded", "failed") else None

        done = wait_for(finished, 90, what="the zipped job")
    finally:
        worker.stop()
    assert done["status"] == "succeeded", done
    assert_placed_in_sanaa(done["result"])
    assert done["result"]["input"]["sidecars"] == ["plan.tfw", "plan.tif.aux.xml"]


def test_the_api_refuses_an_unsafe_zip_and_stores_nothing(api, tmp_path):
    data = make_zip(tmp_path / "evil.zip", {"../evil.tif": b"II*\x00"}).read_bytes()
    job_id = requests.post(api.url("/api/geo-jobs"), headers=bearer(), timeout=10,
                           json={"taskType": "geotiff_to_png"}).json()["id"]
    grant = requests.post(api.url(f"/api/geo-jobs/{job_id}/upload"), headers=bearer(), timeout=10,
                          json={"fileName": "evil.zip", "fileSize": len(data), "fileType": "application/zip"}).json()
    r = requests.put(grant["uploadUrl"], data=data, headers={"Content-Type": "application/zip"}, timeout=30)
    assert r.status_code == 422 and "outside the archive" in r.json()["message"], r.text
    folder = Path(api.env["GEOWORKER_STORAGE_ROOT"]) / "jobs" / job_id / "input"
    assert not folder.exists() or not any(folder.iterdir())
    job = requests.get(api.url(f"/api/geo-jobs/{job_id}"), headers=bearer(), timeout=10).json()
    assert job["status"] == "pending", "a refused upload leaves the job waiting for a good one"
    assert json.dumps(job).count("evil") == 0
