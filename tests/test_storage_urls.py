"""URL inputs and the http backend against a real HTTP server on loopback (tests/test_storage_support.py).

The server listens on 127.0.0.1, which the rules refuse; each test that needs to reach it
exempts exactly its (ip, port) with open_backend's test-only `unsafe_allow_endpoints`, and
the refusal tests prove that everything else on loopback stays refused.
"""

from __future__ import annotations

import hashlib
import ipaddress
from urllib.parse import quote

import pytest
from loguru import logger

from geoworker.errors import InvalidInput, PermanentStorageError, StorageError, TooLarge, describe
from geoworker.storage import TransferPolicy, UrlPolicy, UrlRefused, open_backend
from geoworker.storage.urls import GuardedAdapter, forbidden_reason
from test_storage_support import FAST, Job, PlatformServer, make_settings, write_geotiff

JOB_ID = "5f1d9c1e-2222-4c3b-8a77-0e6a1b2c3d4e"
CAP = 256 * 1024


@pytest.fixture
def server():
    with PlatformServer() as s:
        yield s


@pytest.fixture
def other_server():
    """A second server on loopback that no test exempts: reaching it would be an SSRF."""
    with PlatformServer() as s:
        yield s


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path, allowed_hosts=("127.0.0.1", "localhost", "::1", "10.20.30.40", "169.254.169.254",
                                                  "files.example.org"),
                         allow_http=True, max_file_size=CAP)


@pytest.fixture
def backend(settings, server):
    with open_backend(settings, transfer=FAST, unsafe_allow_endpoints=[server.endpoint]) as b:
        yield b


def fetch(backend, url, tmp_path, **ref):
    return backend.fetch(Job(JOB_ID, {"url": url, **ref}), tmp_path / "in")


def leftovers(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "in").iterdir()) if (tmp_path / "in").exists() else []


# --- the policy, address by address ------------------------------------------------------------


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("100.64.0.1", "not globally routable"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"),
])
def test_forbidden_addresses(address, reason):
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_a_host_is_refused_if_any_of_its_addresses_is_forbidden():
    policy = UrlPolicy(allowed_hosts=("files.example.org",))
    with pytest.raises(UrlRefused, match="loopback"):
        policy.check_addresses("https", "files.example.org", 443, ["93.184.215.14", "127.0.0.1"])
    assert policy.check_addresses("https", "files.example.org", 443, ["93.184.215.14"]) == ["93.184.215.14"]


@pytest.mark.parametrize("url, message", [
    ("http://files.example.org/a.tif", "only https"),
    ("https://evil.example.net/a.tif", "not in storage.allowed_hosts"),
    ("https://example.org/a.tif", "not in storage.allowed_hosts"),
    ("https://user:pw@files.example.org/a.tif", "credentials"),
    ("ftp://files.example.org/a.tif", "not an http"),
    ("file:///etc/passwd", "not an http"),
    ("https://[::1/a.tif", "cannot be parsed"),
])
def test_urls_refused_by_their_text(url, message):
    policy = UrlPolicy(allowed_hosts=("files.example.org", "*.tiles.example.org"))
    with pytest.raises(UrlRefused, match=message):
        policy.check_url(url)


def test_allowed_host_patterns():
    policy = UrlPolicy(allowed_hosts=("files.example.org", "*.tiles.example.org"))
    assert policy.check_url("https://FILES.example.org./a.tif").host == "files.example.org"
    assert policy.check_url("https://a.b.tiles.example.org/x").host == "a.b.tiles.example.org"
    with pytest.raises(UrlRefused):
        policy.check_url("https://tiles.example.org/x")  # *.x means subdomains only
    with pytest.raises(UrlRefused):
        policy.check_url("https://eviltiles.example.org/x")


def test_no_allowed_hosts_means_no_url_inputs(tmp_path, server):
    settings = make_settings(tmp_path, allow_http=True)
    with open_backend(settings, transfer=FAST, unsafe_allow_endpoints=[server.endpoint]) as b:
        with pytest.raises(UrlRefused, match="URL inputs are disabled") as info:
            fetch(b, server.url("/files/x.tif"), tmp_path)
    assert describe(info.value)[0::2] == ("invalid_input", True)
    assert server.hits == {}


def test_plain_http_needs_allow_http(tmp_path, server):
    settings = make_settings(tmp_path, allowed_hosts=("127.0.0.1",))
    with open_backend(settings, transfer=FAST, unsafe_allow_endpoints=[server.endpoint]) as b:
        with pytest.raises(UrlRefused, match="only https"):
            fetch(b, server.url("/files/x.tif"), tmp_path)
    assert server.hits == {}


def test_loopback_is_refused_after_resolution_without_the_test_exemption(settings, server, tmp_path):
    server.put_file("x.tif", b"II*\x00data")
    with open_backend(settings, transfer=FAST) as b:  # no exemption: a worker as deployed
        assert isinstance(b.urls.session.get_adapter("https://x"), GuardedAdapter)
        for url in (server.signed("GET", "x.tif"), f"http://localhost:{server.port}/files/x.tif",
                    f"https://localhost:{server.port}/files/x.tif"):  # the TLS pool is guarded as well
            with pytest.raises(UrlRefused, match="loopback"):
                fetch(b, url, tmp_path)
    assert server.hits == {}


# --- streaming and the size cap -------------------------------------------------------------------


def test_url_round_trip_with_sha256(backend, server, tmp_path):
    data = write_geotiff(tmp_path / "src.tif").read_bytes()
    server.put_file("site plan.tif", data)
    got = fetch(backend, server.signed("GET", "site plan.tif"), tmp_path)
    assert got.path == tmp_path / "in" / "site_plan.tif"
    assert got.path.read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest() and got.size == len(data)
    assert got.content_type == "image/tiff"
    assert "signature" not in got.source and got.source.endswith("/files/site%20plan.tif?<redacted>")


def test_the_reference_name_is_sanitised_too(backend, server, tmp_path):
    server.put_file("x.tif", b"II*\x00data")
    got = fetch(backend, server.signed("GET", "x.tif"), tmp_path, name="../../../etc/cron.d/evil")
    assert got.path == tmp_path / "in" / "evil"


def test_a_download_without_content_length_stops_at_the_cap(backend, server, tmp_path):
    with pytest.raises(TooLarge) as info:
        fetch(backend, server.url("/nolength?chunks=64"), tmp_path)  # 4 MiB against 256 KiB
    assert describe(info.value)[0::2] == ("too_large", True)
    assert leftovers(tmp_path) == []  # the partial file is gone
    assert server.hits["/nolength"] == 1  # too large is permanent: not retried


def test_a_server_that_sends_more_than_it_declared_is_read_only_to_its_declaration(backend, server, tmp_path):
    got = fetch(backend, server.url("/lyinglength?declare=1000&chunks=64"), tmp_path)
    assert got.size == 1000 and got.path.stat().st_size == 1000


def test_a_declared_length_over_the_cap_is_refused_before_the_body(backend, server, tmp_path):
    with pytest.raises(TooLarge, match="declares"):
        fetch(backend, server.url(f"/biglength?declare={50 * CAP}"), tmp_path)
    assert leftovers(tmp_path) == []


def test_a_declared_type_that_is_not_a_tiff_is_refused_before_the_body(backend, server, tmp_path):
    with pytest.raises(InvalidInput, match="text/html"):
        fetch(backend, server.url("/typed?type=text/html"), tmp_path)
    assert leftovers(tmp_path) == []


def test_compressed_answers_are_refused_not_inflated(backend, server, tmp_path):
    with pytest.raises(InvalidInput, match="gzip"):
        fetch(backend, server.url("/gzip"), tmp_path)


# --- timeouts, retries, statuses ------------------------------------------------------------------


HANGING = TransferPolicy(connect_timeout=5, read_timeout=0.5, attempts=2, backoff_base=0.01, backoff_max=0.02)


@pytest.mark.parametrize("path", ["/hang", "/trickle"])
def test_a_server_that_hangs_is_a_transient_storage_error(settings, server, tmp_path, path):
    with open_backend(settings, transfer=HANGING, unsafe_allow_endpoints=[server.endpoint]) as b:
        with pytest.raises(StorageError, match="read timeout") as info:
            fetch(b, server.url(path), tmp_path)
    assert describe(info.value)[0::2] == ("storage_error", False)
    assert server.hits[path] == 2  # retried once, then given up
    assert leftovers(tmp_path) == []


def test_5xx_is_retried_until_it_succeeds(backend, server, tmp_path):
    server.put_file("f.tif", b"II*\x00flaky")
    got = fetch(backend, server.url("/flaky/f.tif?fail=2"), tmp_path)
    assert got.path.read_bytes() == b"II*\x00flaky"
    assert server.hits["/flaky/f.tif"] == 3


def test_5xx_that_persists_is_transient_after_the_attempts(backend, server, tmp_path):
    with pytest.raises(StorageError, match="503") as info:
        fetch(backend, server.url("/flaky/f.tif?fail=99"), tmp_path)
    assert describe(info.value)[0::2] == ("storage_error", False)
    assert server.hits["/flaky/f.tif"] == FAST.attempts


@pytest.mark.parametrize("status", [403, 404, 410])
def test_4xx_is_permanent_and_not_retried(backend, server, tmp_path, status):
    with pytest.raises(PermanentStorageError, match=str(status)) as info:
        fetch(backend, server.url(f"/status/{status}"), tmp_path)
    assert describe(info.value)[0::2] == ("storage_error", True)
    assert server.hits[f"/status/{status}"] == 1


def test_429_is_transient_but_left_to_the_queue_backoff(backend, server, tmp_path):
    with pytest.raises(StorageError) as info:
        fetch(backend, server.url("/status/429"), tmp_path)
    assert describe(info.value)[2] is False
    assert server.hits["/status/429"] == 1


def test_an_expired_signature_is_a_permanent_403(backend, server, tmp_path):
    server.put_file("x.tif", b"II*\x00data")
    with pytest.raises(PermanentStorageError, match="403"):
        fetch(backend, server.signed("GET", "x.tif", expires_in=-1), tmp_path)
    assert server.hits["/files/x.tif"] == 1


def test_a_connection_refused_is_transient(settings, tmp_path):
    with PlatformServer() as gone:
        endpoint = gone.endpoint
    with open_backend(settings, transfer=FAST, unsafe_allow_endpoints=[endpoint]) as b:
        with pytest.raises(StorageError, match="connection failed|refused") as info:
            fetch(b, f"http://127.0.0.1:{endpoint[1]}/x.tif", tmp_path)
    assert describe(info.value)[2] is False


# --- redirects ------------------------------------------------------------------------------------


def test_redirects_are_followed_when_every_hop_is_allowed(backend, server, tmp_path):
    server.put_file("x.tif", b"II*\x00moved")
    hop2 = server.url("/redirect?code=307&to=" + quote(server.signed("GET", "x.tif"), safe=""))
    got = fetch(backend, server.url("/redirect?to=" + quote(hop2, safe="")), tmp_path)
    assert got.path.read_bytes() == b"II*\x00moved"
    assert server.hits["/redirect"] == 2


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/files/x.tif", "http://localhost:{port}/files/x.tif",
                                    "http://[::1]:{port}/files/x.tif"])
def test_a_redirect_to_loopback_is_refused(backend, server, other_server, tmp_path, target):
    other_server.put_file("x.tif", b"II*\x00internal")
    url = server.url("/redirect?to=" + target.format(port=other_server.port))
    with pytest.raises(UrlRefused, match="loopback"):
        fetch(backend, url, tmp_path)
    assert other_server.hits == {}  # never reached
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target, reason", [("http://10.20.30.40/x.tif", "private"),
                                            ("http://169.254.169.254/latest/meta-data/", "link-local")])
def test_a_redirect_to_a_private_or_metadata_address_is_refused(backend, server, tmp_path, target, reason):
    # refused before any packet leaves: the check runs before the connect
    with pytest.raises(UrlRefused):
        backend.policy.check_addresses("http", target.split("/")[2], 80, [target.split("/")[2]])
    with pytest.raises(UrlRefused, match=reason):
        fetch(backend, server.url("/redirect?to=" + target), tmp_path)


def test_a_redirect_to_a_host_not_allowed_is_refused(backend, server, tmp_path):
    with pytest.raises(UrlRefused, match="not in storage.allowed_hosts"):
        fetch(backend, server.url("/redirect?to=https://elsewhere.example.com/x.tif"), tmp_path)


def test_a_redirect_loop_ends(backend, server, tmp_path):
    with pytest.raises(UrlRefused, match="redirects"):
        fetch(backend, server.url("/loop"), tmp_path)
    assert server.hits["/loop"] == FAST.max_redirects + 1


# --- the http backend: the platform's signed URLs ---------------------------------------------


@pytest.fixture
def http_settings(tmp_path, server):
    # no allowed_hosts, no exemption: the platform's own origin (api.base_url) is what lets it through
    s = make_settings(tmp_path, backend="http", max_file_size=CAP)
    return s.replace("api", base_url=server.base + "/api")


def test_http_backend_round_trip(http_settings, server, tmp_path):
    data = write_geotiff(tmp_path / "src.tif").read_bytes()
    server.put_file("in.tif", data)
    job = Job(JOB_ID, {"url": server.signed("GET", "in.tif"), "name": "survey.tif",
                       "outputs": {"png": server.signed("PUT", "out/survey.png", size=1000),
                                   "metadata": server.signed("PUT", "out/survey.json", size=1000)}})
    out = tmp_path / "out"
    out.mkdir()
    (out / "survey.png").write_bytes(b"\x89PNG\r\n\x1a\nimage")
    (out / "survey.json").write_text('{"ok": true}')
    (out / "survey_thumb.png").write_bytes(b"\x89PNG thumb")
    with open_backend(http_settings, transfer=FAST) as b:
        got = b.fetch(job, tmp_path / "in")
        assert got.path.name == "survey.tif" and got.path.read_bytes() == data
        refs = b.store_outputs(job, {"png": out / "survey.png", "metadata": out / "survey.json",
                                     "thumbnail": out / "survey_thumb.png"})
    assert server.files["/files/out/survey.png"] == b"\x89PNG\r\n\x1a\nimage"
    assert server.files["/files/out/survey.json"] == b'{"ok": true}'
    assert server.types["/files/out/survey.png"] == "image/png"
    assert refs == {"png": server.url("/files/out/survey.png"), "metadata": server.url("/files/out/survey.json")}
    # the thumbnail had no URL: not uploaded, not referenced


def test_http_backend_put_retries_5xx_and_refuses_4xx(http_settings, server, tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"png")
    with open_backend(http_settings, transfer=FAST) as b:
        ok = Job(JOB_ID, {"url": "x", "outputs": {"png": server.url("/flaky/a.png?fail=1")}})
        assert b.store_outputs(ok, {"png": f}) == {"png": server.url("/flaky/a.png")}
        assert server.hits["/flaky/a.png"] == 2
        expired = Job(JOB_ID, {"url": "x", "outputs": {"png": server.signed("PUT", "b.png", expires_in=-5)}})
        with pytest.raises(PermanentStorageError, match="PUT .*403"):
            b.store_outputs(expired, {"png": f})
        assert server.hits["/files/b.png"] == 1
        oversize = Job(JOB_ID, {"url": "x", "outputs": {"png": server.signed("PUT", "c.png", size=1)}})
        with pytest.raises(PermanentStorageError, match="413"):
            b.store_outputs(oversize, {"png": f})
        with pytest.raises(PermanentStorageError, match="no upload URLs"):
            b.store_outputs(Job(JOB_ID, {"url": "x"}), {"png": f})


def test_http_backend_cannot_import_local_files(http_settings, tmp_path):
    with open_backend(http_settings) as b:
        with pytest.raises(PermanentStorageError, match="signed URLs"):
            b.import_file(JOB_ID, tmp_path)


def test_signatures_never_reach_logs_or_error_messages(http_settings, server, tmp_path):
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    try:
        with open_backend(http_settings, transfer=FAST) as b:
            url = server.signed("GET", "x.tif").replace("/files/", "/flaky/")  # 503 twice: logged retries
            server.put_file("x.tif", b"II*\x00data")
            b.fetch(Job(JOB_ID, {"url": url}), tmp_path / "in")
            with pytest.raises(StorageError) as info:
                b.fetch(Job(JOB_ID, {"url": server.url("/flaky/y.tif?fail=99&signature=SECRETSIG")}), tmp_path / "in")
    finally:
        logger.remove(sink)
    signature = url.rpartition("signature=")[2]
    assert len(lines) >= 2 and any("retrying" in line for line in lines)
    text = "\n".join(lines) + str(info.value)
    assert signature not in text and "SECRETSIG" not in text and "signature=" not in text
