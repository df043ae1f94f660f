"""The raster tasks through the storage backends, on a real queue: enqueue, claim, run the handler, complete.

Each test writes a small GeoTIFF with rasterio, stores it through a backend, runs the task
handler with a TaskContext the way a child does (its own work directory, created and removed
around the job) and checks the outputs, the checksums in the job's result and the cleanup.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from service import run_cli
from geoworker.errors import InvalidInput
from geoworker.storage import open_backend
from test_storage_support import (FAST, SCANNER, PlatformServer, make_settings, run_claimed_job, submit_local,
                                  write_geotiff)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, allowed_hosts=("127.0.0.1",), allow_http=True, max_file_size=4 << 20)


def check_outputs_and_checksums(done, src: Path):
    assert done.status == "succeeded", done.last_error
    assert set(done.outputs) >= {"image", "thumbnail", "world_file", "prj", "metadata"}
    sums = done.result["sha256"]
    assert sums["input"] == sha256(src) == done.result["input"]["sha256"]
    assert set(sums["outputs"]) == set(done.outputs)
    return sums


def test_geotiff_to_png_end_to_end_on_the_local_backend(queue, settings, tmp_path):
    src = write_geotiff(tmp_path / "upload" / "Site Plan (v2).tif", size=96)
    with open_backend(settings) as backend:
        submitted = submit_local(queue, backend, src)
        done, _, progress, workdir = run_claimed_job(queue, settings, backend)
    assert done.id == submitted.id
    sums = check_outputs_and_checksums(done, src)
    out_dir = Path(settings.storage.root).resolve() / "jobs" / done.id / "output"
    for kind, ref in done.outputs.items():
        assert Path(ref).parent == out_dir and sha256(ref) == sums["outputs"][kind]
    assert Path(done.outputs["image"]).name == "Site_Plan_v2.png"  # named from the sanitised stem
    assert not any(p.name.endswith(".part") for p in out_dir.iterdir())
    with Image.open(done.outputs["image"]) as img:
        assert img.format == "PNG" and 0 < max(img.size) <= 4096
    percents = [p for p, _ in progress]
    assert percents == sorted(percents) and percents[0] == 1 and percents[-1] == 99
    assert not workdir.exists()
    # the job's row holds what the handler returned
    stored = queue.get(done.id)
    assert stored.result["sha256"] == sums and stored.outputs == done.outputs


def test_geotiff_info_reports_the_input_checksum(queue, settings, tmp_path):
    src = write_geotiff(tmp_path / "info.tif")
    with open_backend(settings) as backend:
        submit_local(queue, backend, src, task="geotiff_info")
        done, _, _, _ = run_claimed_job(queue, settings, backend)
    assert done.status == "succeeded", done.last_error
    assert done.result["sha256"] == {"input": sha256(src), "outputs": {}}
    assert done.result["metadata"]["width"] == 64


def test_a_url_input_end_to_end_with_outputs_on_the_local_backend(queue, settings, tmp_path):
    src = write_geotiff(tmp_path / "remote.tif")
    with PlatformServer() as server, \
            open_backend(settings, transfer=FAST, unsafe_allow_endpoints=[server.endpoint]) as backend:
        server.put_file("remote.tif", src.read_bytes())
        queue.enqueue("geotiff_to_png", {"maxSize": 32}, input={"url": server.signed("GET", "remote.tif")})
        done, _, _, _ = run_claimed_job(queue, settings, backend)
    check_outputs_and_checksums(done, src)
    assert "signature" not in json.dumps(done.result)
    with Image.open(done.outputs["image"]) as img:
        assert 0 < max(img.size) <= 32


def test_the_http_backend_end_to_end(queue, tmp_path):
    src = write_geotiff(tmp_path / "field.tif")
    with PlatformServer() as server:
        settings = make_settings(tmp_path, backend="http").replace("api", base_url=server.base)
        server.put_file("field.tif", src.read_bytes())
        kinds = {"png": "field.png", "thumbnail": "field_thumb.png", "world_file": "field.pgw", "prj": "field.prj",
                 "metadata": "field.json"}
        ref = {"url": server.signed("GET", "field.tif"),
               "outputs": {kind: server.signed("PUT", f"out/{name}", size=1 << 20) for kind, name in kinds.items()}}
        queue.enqueue("geotiff_to_png", {}, input=ref)
        with open_backend(settings, transfer=FAST) as backend:
            done, _, _, _ = run_claimed_job(queue, settings, backend)
        assert done.status == "succeeded", done.last_error
        # the platform still names the image's upload URL "png" (the kind's old name): it is found and
        # the output is stored under its new name
        assert done.outputs == {("image" if kind == "png" else kind): server.url(f"/files/out/{name}")
                                for kind, name in kinds.items()}
        for kind, name in kinds.items():
            body = server.files[f"/files/out/{name}"]
            assert hashlib.sha256(body).hexdigest() == done.result["sha256"]["outputs"]["image" if kind == "png" else kind]
        assert done.result["not_uploaded"] == ["aux_xml"]  # the platform issued no URL for it
        assert done.result["sha256"]["input"] == sha256(src)


def test_a_non_tiff_fails_permanently_before_decoding(queue, settings, tmp_path):
    fake = tmp_path / "holiday.tif"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000)
    with open_backend(settings) as backend:
        submit_local(queue, backend, fake)
        done, exc, _, workdir = run_claimed_job(queue, settings, backend)
    assert isinstance(exc, InvalidInput)
    assert (done.status, done.error_code) == ("failed", "invalid_input")
    assert "PNG" in done.last_error
    assert not workdir.exists()


def test_the_malware_scan_rejects_the_job(queue, settings, tmp_path):
    infected = tmp_path / "infected.tif"
    infected.write_bytes(write_geotiff(tmp_path / "clean.tif").read_bytes() + b"EICAR-STANDARD-ANTIVIRUS-TEST")
    scanning = settings.replace("storage", scan_command=SCANNER)
    with open_backend(scanning) as backend:
        submit_local(queue, backend, infected)
        done, _, _, workdir = run_claimed_job(queue, scanning, backend)
    assert (done.status, done.error_code) == ("failed", "invalid_input")
    assert "rejected by the malware scan" in done.last_error
    assert not workdir.exists()


def test_a_download_over_the_cap_fails_as_too_large(queue, tmp_path):
    settings = make_settings(tmp_path, allowed_hosts=("127.0.0.1",), allow_http=True, max_file_size=100_000)
    with PlatformServer() as server, \
            open_backend(settings, transfer=FAST, unsafe_allow_endpoints=[server.endpoint]) as backend:
        queue.enqueue("geotiff_to_png", {}, input={"url": server.url("/nolength?chunks=64")})
        done, _, _, _ = run_claimed_job(queue, settings, backend)
    assert (done.status, done.error_code) == ("failed", "too_large")


# --- `geoworker submit FILE` copies the file in ---------------------------------------------


def test_submit_copies_the_file_into_storage_under_a_safe_name(cli_env, tmp_path, queue):
    src = write_geotiff(tmp_path / "in" / "my map; rm -rf ~.tif")
    out = run_cli(["submit", str(src), "--json"], cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "queued"
    stored = Path(cli_env["GEOWORKER_STORAGE_ROOT"]).resolve() / "jobs" / job["id"] / "input" / "my_map_rm_-rf.tif"
    assert job["input"] == {"backend": "local", "path": str(stored), "name": stored.name,
                            "size": src.stat().st_size, "sha256": sha256(src)}
    assert stored.read_bytes() == src.read_bytes()
    assert [e["kind"] for e in queue.events(job["id"])][-1] == "queued"


def test_submit_refuses_a_file_over_the_cap_without_creating_a_job(cli_env, tmp_path, queue):
    big = tmp_path / "big.tif"
    big.write_bytes(b"II*\x00" + b"\x00" * 5000)
    out = run_cli(["submit", str(big)], {**cli_env, "MAX_FILE_SIZE": "1000"}, cwd=tmp_path)
    assert out.returncode != 0 and "max_file_size" in out.stderr and "Traceback" not in out.stderr
    assert queue.list() == []


@pytest.mark.parametrize("url, message", [
    ("https://evil.example.com/x.tif", "URL inputs are disabled"),
    ("s3://bucket/x.tif", "s3:// inputs need storage.backend"),
])
def test_submit_checks_urls_before_creating_a_job(cli_env, tmp_path, queue, url, message):
    out = run_cli(["submit", url], cli_env, cwd=tmp_path)
    assert out.returncode != 0 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert queue.list() == []


def test_submit_accepts_an_allowed_url_as_given(cli_env, tmp_path, queue):
    env = {**cli_env, "GEOWORKER_STORAGE_ALLOWED_HOSTS": "files.example.org"}
    out = run_cli(["submit", "https://files.example.org/a.tif?token=abc", "--json"], env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["input"] == {"url": "https://files.example.org/a.tif?token=abc"}
