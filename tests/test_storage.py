"""Storage without a network: names, work directories, the local backend, input checks, signatures."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoworker.errors import InvalidInput, PermanentStorageError, StorageError, TooLarge, describe
from geoworker.storage import check_input, open_backend, safe_filename
from geoworker.storage.checks import ScanUnavailable, check_content_type
from geoworker.storage.names import checked_job_id
from geoworker.storage.signing import SignatureInvalid, sign_path, verify
from geoworker.storage.workdir import create_workdir, remove_child_workdirs, remove_workdir, sweep_workdirs
from test_storage_support import SCANNER, Job, make_settings, write_geotiff

JOB_ID = "0b7e2a4c-1111-4f7e-9d55-5c1e4d7a9a01"


# --- names from users ----------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("../../etc/passwd", "passwd"),
    ("/etc/shadow", "shadow"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("ortho\x00.tif", "ortho.tif"),
    ("..", "input.tif"),
    ("", "input.tif"),
    (None, "input.tif"),
    ("/", "input.tif"),
    ("-rf --no-preserve-root.tif", "rf_--no-preserve-root.tif"),
    (".bashrc", "bashrc"),
    ("my map (final) #1;rm -rf ~.tif", "my_map_final_1_rm_-rf.tif"),
    ("line\nbreak\r.tif", "line_break.tif"),
    ("CON.tif", "_CON.tif"),
    ("ｆｕｌｌｗｉｄｔｈ.tif", "fullwidth.tif"),
    ("site_A-07.tif", "site_A-07.tif"),
])
def test_safe_filename_neutralises_hostile_names(raw, expected):
    assert safe_filename(raw) == expected


def test_safe_filename_shortens_long_names_and_keeps_the_extension():
    name = safe_filename("a" * 500 + ".tif")
    assert len(name) <= 120 and name.endswith(".tif")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 65, "id\x00", "-leading"])
def test_job_ids_that_are_not_one_path_component_are_refused(bad):
    with pytest.raises(ValueError):
        checked_job_id(bad)


# --- work directories -------------------------------------------------------------------


def test_workdir_is_private_and_named_for_the_job_and_process(tmp_path):
    path = create_workdir(tmp_path / "tmp", JOB_ID)
    assert path.parent == tmp_path / "tmp"
    assert path.name == f"geojob_{JOB_ID}_{os.getpid()}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    (path / "sub").mkdir()
    (path / "sub" / "f").write_bytes(b"x")
    os.chmod(path / "sub", 0o500)  # a read-only directory inside must not defeat the cleanup
    assert remove_workdir(path) is True
    assert not path.exists()
    assert remove_workdir(path) is False  # gone already: not an error


def test_workdir_survives_a_planted_symlink_without_touching_its_target(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious")
    base = tmp_path / "tmp"
    base.mkdir()
    (base / f"geojob_{JOB_ID}_{os.getpid()}").symlink_to(victim)
    path = create_workdir(base, JOB_ID)
    assert path.is_dir() and not path.is_symlink()
    assert (victim / "keep").read_text() == "precious"
    remove_workdir(path)


def test_remove_workdir_refuses_anything_not_named_like_a_workdir(tmp_path):
    with pytest.raises(ValueError):
        remove_workdir(tmp_path)
    assert tmp_path.exists()


def test_remove_child_workdirs_removes_only_that_pids_directories(tmp_path):
    base = tmp_path / "tmp"
    base.mkdir()
    for name in ("geojob_a_4242", "geojob_b_4242", "geojob_c_14242", "geojob_d_424", "other_4242"):
        (base / name).mkdir()
        (base / name / "data.tif").write_bytes(b"x" * 10)
    assert remove_child_workdirs(base, 4242) == 2
    assert sorted(p.name for p in base.iterdir()) == ["geojob_c_14242", "geojob_d_424", "other_4242"]
    assert remove_child_workdirs(tmp_path / "missing", 4242) == 0


def test_the_workdir_of_a_sigkilled_process_is_found_by_its_pid(tmp_path):
    base = tmp_path / "tmp"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from geoworker.storage.workdir import create_workdir; "
        f"d = create_workdir({str(base)!r}, {JOB_ID!r}); (d / 'input.tif').write_bytes(b'x' * 4096); "
        "print(d, flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    workdir = Path(child.stdout.readline().strip())
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    assert workdir.name == f"geojob_{JOB_ID}_{child.pid}" and (workdir / "input.tif").exists()
    assert remove_child_workdirs(base, child.pid) == 1
    assert list(base.iterdir()) == []


def test_sweep_removes_only_old_workdirs(tmp_path):
    base = tmp_path / "tmp"
    old, new, foreign = base / "geojob_old_1", base / "geojob_new_2", base / "keep_me"
    for d in (old, new, foreign):
        d.mkdir(parents=True)
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    os.utime(foreign, (two_days_ago, two_days_ago))
    assert sweep_workdirs(base, older_than=86400) == 1
    assert not old.exists() and new.exists() and foreign.exists()


# --- the local backend -------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, max_file_size=1 << 20)


@pytest.fixture
def local(settings):
    with open_backend(settings) as backend:
        yield backend


def test_local_round_trip_import_fetch_store(local, settings, tmp_path):
    src = write_geotiff(tmp_path / "upload" / "../upload/site plan (v2).tif")
    ref = local.import_file(JOB_ID, src)
    root = Path(settings.storage.root).resolve()
    assert ref["backend"] == "local" and ref["name"] == "site_plan_v2.tif"
    assert Path(ref["path"]) == root / "jobs" / JOB_ID / "input" / "site_plan_v2.tif"
    assert ref["size"] == src.stat().st_size
    assert ref["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()

    work = create_workdir(settings.storage.temp_dir, JOB_ID)
    fetched = local.fetch(Job(JOB_ID, ref), work / "input")
    assert fetched.path.parent == work / "input" and fetched.path.read_bytes() == src.read_bytes()
    assert fetched.sha256 == ref["sha256"]

    (work / "out").mkdir()
    files = {"png": work / "out" / "site.png", "metadata": work / "out" / "site.json"}
    files["png"].write_bytes(b"\x89PNG fake")
    files["metadata"].write_text("{}")
    refs = local.store_outputs(Job(JOB_ID), files)
    out_dir = root / "jobs" / JOB_ID / "output"
    assert refs == {"png": str(out_dir / "site.png"), "metadata": str(out_dir / "site.json")}
    assert Path(refs["png"]).read_bytes() == b"\x89PNG fake"
    assert sorted(p.name for p in out_dir.iterdir()) == ["site.json", "site.png"]  # no temporary names left
    remove_workdir(work)


def test_local_store_outputs_sanitises_output_names(local, settings, tmp_path):
    evil = tmp_path / "out" / "..evil name;.png"
    evil.parent.mkdir()
    evil.write_bytes(b"x")
    refs = local.store_outputs(Job(JOB_ID), {"png": evil})
    assert Path(refs["png"]).name == "evil_name.png"
    assert Path(refs["png"]).parent == Path(settings.storage.root).resolve() / "jobs" / JOB_ID / "output"


def test_local_receive_input_keeps_traversal_names_inside_the_job(local, settings):
    ref = local.receive_input(JOB_ID, "../../../../tmp/evil.tif", [b"II*\x00", b"data"])
    assert Path(ref["path"]).parent == Path(settings.storage.root).resolve() / "jobs" / JOB_ID / "input"
    assert ref["name"] == "evil.tif"


def test_local_receive_input_stops_at_the_cap_and_leaves_nothing(local, settings):
    chunks = (b"\x00" * 65536 for _ in range(100))  # 6.4 MB against a 1 MB cap
    with pytest.raises(TooLarge):
        local.receive_input(JOB_ID, "big.tif", chunks)
    assert list((Path(settings.storage.root) / "jobs" / JOB_ID / "input").iterdir()) == []


def test_local_receive_input_first_writer_wins(local, settings):
    """Two uploads of one job (the same URL used at once through two API processes): the
    second must neither replace the first's file nor leave its own behind."""
    from geoworker.errors import InvalidState

    first = local.receive_input(JOB_ID, "site.tif", [b"II*\x00", b"first"])
    with pytest.raises(InvalidState, match="already has its input"):
        local.receive_input(JOB_ID, "site.tif", [b"II*\x00", b"second"])
    assert Path(first["path"]).read_bytes() == b"II*\x00first"
    assert [p.name for p in Path(first["path"]).parent.iterdir()] == ["site.tif"]


def test_local_output_file_is_only_a_stored_output_of_that_job(local, settings, tmp_path):
    src = tmp_path / "site.png"
    src.write_bytes(b"\x89PNG fake")
    local.store_outputs(Job(JOB_ID), {"png": src})
    assert local.output_file(JOB_ID, "site.png").read_bytes() == b"\x89PNG fake"
    (Path(settings.storage.root) / "jobs" / JOB_ID / "input").mkdir(parents=True)
    (Path(settings.storage.root) / "jobs" / JOB_ID / "input" / "in.tif").write_bytes(b"II*\x00")
    for job_id, name in ((JOB_ID, "other.png"), (JOB_ID, "../input/in.tif"), (JOB_ID, ".site.png"),
                         ("../" + JOB_ID, "site.png"), (JOB_ID, "")):
        assert local.output_file(job_id, name) is None, (job_id, name)


def test_local_discard_input_removes_only_a_file_under_the_root(local, settings, tmp_path):
    ref = local.receive_input(JOB_ID, "site.tif", [b"II*\x00", b"data"])
    outside = tmp_path / "keep.tif"
    outside.write_bytes(b"II*\x00")
    local.discard_input({"backend": "local", "path": str(outside)})
    sidecar = tmp_path / "site.tfw"
    sidecar.write_text("1\n0\n0\n-1\n0\n0\n")
    ref = local.import_sidecars(JOB_ID, ref, "site.tif", [sidecar])
    local.discard_input({**ref, "sidecars": [*ref["sidecars"], {"path": str(outside)}]})
    assert outside.exists() and not Path(ref["path"]).exists()
    assert sidecar.exists() and not Path(ref["sidecars"][0]["path"]).exists()  # the stored copy went with it


def test_receive_input_without_a_streaming_store_goes_through_a_private_copy(settings, tmp_path):
    """The base class's receive_input (s3 uses it): the temporary copy is gone afterwards, and a
    backend that takes no local inputs refuses the upload with its reason."""
    from geoworker.storage.base import Backend, UnsupportedOperation
    from geoworker.storage.http_backend import HttpBackend

    class Importing(Backend):  # what the copy looks like when import_file gets it
        def import_file(self, job_id, path):
            path = Path(path)
            return {"name": path.name, "data": path.read_bytes(), "mode": stat.S_IMODE(path.parent.stat().st_mode)}

        def store_outputs(self, job, files):
            raise AssertionError("not used")

    with Importing(settings) as backend:
        ref = backend.receive_input(JOB_ID, "../site.tif", [b"II*\x00", b"data"], content_type="image/tiff")
        assert ref == {"name": "site.tif", "data": b"II*\x00data", "mode": 0o700, "content_type": "image/tiff"}
        with pytest.raises(TooLarge):
            backend.receive_input(JOB_ID, "site.tif", [b"II*\x00", b"data"], max_size=5)
    assert list(Path(settings.storage.temp_dir).iterdir()) == []
    with HttpBackend(settings) as http, pytest.raises(UnsupportedOperation, match="signed URLs"):
        http.receive_input(JOB_ID, "site.tif", [b"II*\x00"])
    assert list(Path(settings.storage.temp_dir).iterdir()) == []


def test_local_import_refuses_a_file_over_the_cap(local, tmp_path):
    big = tmp_path / "big.tif"
    big.write_bytes(b"II*\x00" + b"\x00" * (1 << 20))
    with pytest.raises(TooLarge) as info:
        local.import_file(JOB_ID, big)
    assert describe(info.value)[0] == "too_large"


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.tif", "jobs/../../outside.tif", "a\x00b"])
def test_local_inputs_outside_the_root_are_refused(local, settings, tmp_path, path):
    (tmp_path / "outside.tif").write_bytes(b"II*\x00")
    with pytest.raises(InvalidInput, match="outside the storage root|malformed"):
        local.fetch(Job(JOB_ID, {"backend": "local", "path": path}), tmp_path / "dest")


def test_a_symlink_inside_the_root_pointing_out_is_refused(local, settings, tmp_path):
    secret = tmp_path / "secret.tif"
    secret.write_bytes(b"II*\x00secret")
    link_dir = Path(settings.storage.root) / "jobs" / JOB_ID / "input"
    link_dir.mkdir(parents=True)
    (link_dir / "x.tif").symlink_to(secret)
    with pytest.raises(InvalidInput, match="outside the storage root"):
        local.fetch(Job(JOB_ID, {"path": str(link_dir / "x.tif")}), tmp_path / "dest")


def test_a_vanished_local_input_is_a_permanent_invalid_input(local, settings, tmp_path):
    gone = Path(settings.storage.root) / "jobs" / JOB_ID / "input" / "gone.tif"
    with pytest.raises(InvalidInput, match="does not exist"):
        local.fetch(Job(JOB_ID, {"path": str(gone)}), tmp_path / "dest")


def test_a_job_without_input_is_refused(local, tmp_path):
    with pytest.raises(InvalidInput, match="no input"):
        local.fetch(Job(JOB_ID, None), tmp_path / "dest")


def test_s3_inputs_on_the_local_backend_are_refused(local, tmp_path):
    with pytest.raises(InvalidInput, match="storage.backend"):
        local.fetch(Job(JOB_ID, {"url": "s3://bucket/key.tif"}), tmp_path / "dest")


# --- checks before decoding --------------------------------------------------------------


@pytest.mark.parametrize("ctype", [None, "", "image/tiff", "image/tiff; application=geotiff", "IMAGE/TIFF",
                                   "application/octet-stream", "binary/octet-stream"])
def test_tiff_and_generic_content_types_pass(ctype):
    check_content_type(ctype)


@pytest.mark.parametrize("ctype", ["text/html; charset=utf-8", "image/png", "application/json", "application/pdf"])
def test_other_declared_content_types_are_refused(ctype):
    with pytest.raises(InvalidInput, match="not a TIFF"):
        check_content_type(ctype)


def test_check_input_refuses_by_signature_size_and_type(tmp_path, settings):
    png = tmp_path / "photo.tif"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(InvalidInput, match="PNG"):
        check_input(png, settings.storage)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(InvalidInput, match="empty"):
        check_input(empty, settings.storage)
    tif = write_geotiff(tmp_path / "ok.tif")
    assert check_input(tif, settings.storage) == tif.stat().st_size
    with pytest.raises(InvalidInput, match="text/html"):
        check_input(tif, settings.storage, content_type="text/html")
    small = settings.replace("storage", max_file_size=100)
    with pytest.raises(TooLarge):
        check_input(tif, small.storage)
    # VALIDATE_FILE_HEADERS=false switches the signature and type checks off, not the size cap
    lax = settings.replace("storage", validate_headers=False)
    assert check_input(png, lax.storage, content_type="text/html") > 0


def test_malware_scan_rejects_on_non_zero_exit(tmp_path, settings):
    scanning = settings.replace("storage", scan_command=SCANNER)
    clean = write_geotiff(tmp_path / "clean.tif")
    assert check_input(clean, scanning.storage) > 0
    infected = tmp_path / "infected.tif"
    infected.write_bytes(clean.read_bytes() + b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!")
    with pytest.raises(InvalidInput, match="rejected by the malware scan") as info:
        check_input(infected, scanning.storage)
    assert describe(info.value) [0::2] == ("invalid_input", True)


def test_a_missing_scanner_is_transient_not_a_verdict(tmp_path, settings):
    scanning = settings.replace("storage", scan_command="/nonexistent/clamdscan --fdpass {path}")
    with pytest.raises(ScanUnavailable) as info:
        check_input(write_geotiff(tmp_path / "x.tif"), scanning.storage)
    assert describe(info.value)[2] is False


# --- signed URLs -----------------------------------------------------------------------------


def test_signed_paths_verify_and_bind_method_path_expiry_and_size():
    url = sign_path("s3cret", "PUT", "/files/a.tif", 60, size=1000, now=1_000_000)
    path, _, query = url.partition("?")
    params = dict(p.split("=") for p in query.split("&"))
    grant = verify("s3cret", "PUT", path, params, now=1_000_030)
    assert (grant.size, grant.expires) == (1000, 1_000_060)
    tampered = [("GET", path, params), ("PUT", "/files/b.tif", params),
                ("PUT", path, {**params, "size": "10000000"}), ("PUT", path, {**params, "expires": "9999999999"})]
    for method, p, q in tampered:
        with pytest.raises(SignatureInvalid, match="does not match"):
            verify("s3cret", method, p, q, now=1_000_030)
    with pytest.raises(SignatureInvalid, match="expired"):
        verify("s3cret", "PUT", path, params, now=1_000_061)
    with pytest.raises(SignatureInvalid, match="does not match"):
        verify("other", "PUT", path, params, now=1_000_030)
    with pytest.raises(SignatureInvalid, match="not signed"):
        verify("s3cret", "PUT", path, {}, now=1_000_030)


def test_errors_map_to_the_documented_codes():
    assert describe(StorageError("x"))[0::2] == ("storage_error", False)
    assert describe(PermanentStorageError("x"))[0::2] == ("storage_error", True)


# --- the registry of backends -------------------------------------------------------------


def test_every_registered_backend_opens_under_its_name(tmp_path):
    from geoworker.storage import registry

    settings = make_settings(tmp_path, s3={"bucket": "b", "region": "us-east-1"})
    assert registry.names() == ("local", "s3", "http")
    for name in registry.names():
        with open_backend(settings.replace("storage", backend=name)) as backend:
            assert backend.name == name and type(backend) is registry.backend_class(name)


@pytest.mark.parametrize("backend, url, problem", [
    ("local", "s3://b/x.tif", 's3:// inputs need storage.backend = "s3"'),
    ("http", "s3://b/x.tif", 's3:// inputs need storage.backend = "s3"'),
    ("s3", "s3://other/x.tif", "configured bucket 'b', not 'other'"),
    ("s3", "s3://b", "not an s3://bucket/key URL"),
])
def test_a_url_another_backend_reads_is_refused_before_a_job_is_made(tmp_path, backend, url, problem):
    from geoworker.storage.registry import is_backend_url

    settings = make_settings(tmp_path, backend=backend, s3={"bucket": "b"})
    with pytest.raises(InvalidInput) as info:
        is_backend_url(settings, url)
    assert problem in str(info.value)


def test_https_urls_are_the_url_policys_and_s3_urls_the_s3_backends(tmp_path):
    from geoworker.storage.registry import is_backend_url

    settings = make_settings(tmp_path, backend="s3", s3={"bucket": "b"})
    assert is_backend_url(settings, "s3://b/in/x.tif") is True
    assert is_backend_url(settings, "https://files.example.org/x.tif") is False
    assert is_backend_url(settings.replace("storage", backend="local"), "https://files.example.org/x.tif") is False


def test_the_file_system_check_looks_at_the_directories_the_backend_keeps(tmp_path):
    from geoworker.health import check_file_system

    settings = make_settings(tmp_path, s3={"bucket": "b"})
    local = check_file_system(settings)
    on_s3 = check_file_system(settings.replace("storage", backend="s3"))
    assert local.status == on_s3.status == "ok"
    assert set(local.details) >= {"temp_dir", "storage.root"}
    assert "temp_dir" in on_s3.details and "storage.root" not in on_s3.details
