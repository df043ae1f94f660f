"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
`geoworker api` and a real `geoworker run` on this test's database.

Every test records every request the browser makes and every console message: no request may
go to a host other than the API's (there is no basemap configured), and no console error may
appear beyond the refusals a test provokes on purpose. Screenshots of each page at 1280x800 and
390 px wide are taken by test_every_page_fits_a_desktop_and_a_phone; with
GEOWORKER_UI_SCREENSHOTS=<dir> they are kept there (docs/img holds the README's).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import rasterio
import requests

import rasters
from apiserver import FAST, ApiServer, bearer, check_log, user_token
from service import Service, wait_for, write_config

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extras)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
pytestmark = pytest.mark.timeout(300)
GEO_JOBS = "/api/geo-jobs"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
REFUSED = "Failed to load resource: the server responded with a status of"  # the browser's note on a 4xx


class Browser:
    """One fresh chromium profile; every request and console message recorded."""

    def __init__(self, api: ApiServer, profile: Path, viewport=DESKTOP):
        self.api = api
        self.pw = sync_api.sync_playwright().start()
        self.context = self.pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS, viewport=viewport)
        self.context.set_default_timeout(30000)
        self.requests: list[str] = []
        self.console: list[tuple[str, str]] = []
        self.allowed: list[str] = []  # console errors a test provokes on purpose
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))

    def open(self, path: str, token: str | None = None) -> None:
        self.page.goto(self.api.url(path + (f"#token={token}" if token else "")))

    def errors(self) -> list[str]:
        return [f"{kind}: {text}" for kind, text in self.console
                if kind in ("error", "pageerror") and not any(a in text for a in self.allowed)]

    def foreign_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(self.api.base + "/") and not u.startswith(("data:", "blob:"))]

    def close(self) -> None:
        self.context.close()
        self.pw.stop()


@pytest.fixture
def api(cli_env, tmp_path):
    env = {**cli_env, **FAST, "GEOWORKER_STORAGE_MAX_FILE_SIZE": "150000"}
    server = ApiServer(env, tmp_path).start()
    yield server
    server.stop()
    check_log(server)


@pytest.fixture
def worker(cli_env, tmp_path):
    """`geoworker run` on the same database; the test starts it when it wants the jobs to run."""
    config = write_config(tmp_path / "worker.toml", {
        "worker": {"concurrency": 1, "poll_interval": 1.0, "heartbeat_interval": 1.0, "debug_tasks": True},
        "storage": {"max_file_size": 150000}})
    svc = Service({**cli_env, "GEOWORKER_CONFIG": str(config)}, tmp_path, name="worker")
    yield svc
    svc.stop()


@pytest.fixture
def browser(api, tmp_path):
    b = Browser(api, tmp_path / "chromium-profile")
    yield b
    try:
        assert b.foreign_requests() == [], "requests left the API's origin"
        assert b.errors() == [], "console errors"
    finally:
        b.close()


def geotiff(path: Path, height: int = 90, width: int = 120) -> Path:
    return rasters.write(path, rasters.gradient_rgb(height, width), compress="deflate")


def create(api, sub: str, task: str, payload=None) -> dict:
    r = requests.post(api.url(GEO_JOBS), headers=bearer(sub), json={"taskType": task, "inputPayload": payload or {}},
                      timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def upload(api, sub: str, src: Path, task: str = "geotiff_to_png", payload=None) -> dict:
    job = create(api, sub, task, payload)
    grant = requests.post(api.url(f"{GEO_JOBS}/{job['id']}/upload"), headers=bearer(sub), timeout=10,
                          json={"fileName": src.name, "fileSize": src.stat().st_size, "fileType": "image/tiff"}).json()
    assert "uploadUrl" in grant, grant
    r = requests.put(grant["uploadUrl"], data=src.read_bytes(), headers={"Content-Type": "image/tiff"}, timeout=30)
    assert r.status_code == 200, r.text
    return job


def record_statuses(page, selector: str) -> None:
    """Keep every data-status the element takes (a MutationObserver: fast changes are not missed)."""
    page.evaluate("""(selector) => {
        const el = document.querySelector(selector);
        window.__statuses = [el.dataset.status];
        window.__noReload = true;
        new MutationObserver(() => {
            const last = window.__statuses[window.__statuses.length - 1];
            if (el.dataset.status !== last) window.__statuses.push(el.dataset.status);
        }).observe(el, {attributes: true, attributeFilter: ["data-status"]});
    }""", selector)


def gdal_extent(png: Path) -> list[float]:
    """[west, south, east, north] of the PNG as GDAL reads it (its world file and .aux.xml)."""
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(png)], capture_output=True, text=True, check=True).stdout)
    corners = info["cornerCoordinates"]
    return [corners["upperLeft"][0], corners["lowerRight"][1], corners["lowerRight"][0], corners["upperLeft"][1]]


# --- sign-in ---------------------------------------------------------------------------------


def test_sign_in_by_link_or_by_token_and_back_to_sign_in_when_it_expires_or_is_forged(browser, api):
    page = browser.page
    browser.open("/ui", user_token("alice"))
    page.wait_for_url(re.compile(r"/ui/jobs$"))
    assert "token" not in page.url, "the token stayed in the address bar"
    sync_api.expect(page.locator("#who .user")).to_have_text("alice")
    assert page.locator("#nav a", has_text="Overview").count() == 0, "a user was offered the operators' page"

    browser.allowed.append(f"{REFUSED} 401")
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/ui/signin$"))
    for token, reason in ((user_token("alice", expires_in=-60), "the token has expired"),
                          (user_token("alice", secret="not-the-secret-" * 3), "the token's signature is not valid")):
        page.fill("#token", token)
        page.get_by_role("button", name="Sign in").click()
        sync_api.expect(page.locator("#signin-message")).to_contain_text(reason)
        assert page.url.endswith("/ui/signin")

    page.fill("#token", user_token("olga", role="operator"))
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the Sign in button, by keyboard
    page.wait_for_url(re.compile(r"/ui/overview$"))
    sync_api.expect(page.locator("#who .role")).to_have_text("operator")

    # a token that expires while the page is open: the stream says so, the page signs out
    browser.open("/ui/jobs", user_token("alice", expires_in=4))
    page.wait_for_url(re.compile(r"/ui/signin$"), timeout=20000)
    sync_api.expect(page.locator("#signin-message")).to_contain_text("the token has expired")


# --- a job's life, its map -------------------------------------------------------------------


def test_job_page_follows_the_job_live_and_maps_its_output_on_its_bounds(browser, api, worker, db, tmp_path):
    src = geotiff(tmp_path / "site.tif")
    job = upload(api, "alice", src)
    page = browser.page
    browser.open(f"/ui/jobs/{job['id']}", user_token("alice"))
    status = page.locator("#job-status")
    sync_api.expect(status).to_have_attribute("data-status", "queued")
    sync_api.expect(page.locator("#live")).to_have_attribute("data-state", "live")
    record_statuses(page, "#job-status")

    worker.start()
    sync_api.expect(status).to_have_attribute("data-status", "succeeded", timeout=90000)
    seen = page.evaluate("window.__statuses")
    assert seen == ["queued", "running", "succeeded"], seen
    assert page.evaluate("window.__noReload") is True, "the page was reloaded"
    sync_api.expect(page.locator("#job-percent")).to_have_text("100%")
    sync_api.expect(page.locator("#job-events li[data-kind='succeeded']")).to_have_count(1)

    # the map: the output PNG, loaded, on its bounds (GDAL's reading of the stored PNG)
    overlay = page.locator("#map img.gw-overlay[data-loaded='true']")
    sync_api.expect(overlay).to_have_count(1, timeout=20000)
    stored = Path(api.env["GEOWORKER_STORAGE_ROOT"]) / "jobs" / job["id"] / "output"
    with rasterio.open(stored / "site.png") as png:
        width, height, pixel = png.width, png.height, abs(png.transform.a)
    assert page.evaluate("document.querySelector('#map img.gw-overlay').naturalWidth") == width
    shown = page.evaluate("""() => { const b = window.geoworkerMap.layer.getBounds();
                                     return [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]; }""")
    reference = gdal_extent(stored / "site.png")
    assert shown == pytest.approx(reference, abs=2 * pixel), (shown, reference)
    assert shown == pytest.approx(db.job(job["id"])["result"]["metadata"]["bounds_wgs84"], abs=1e-9)
    # and on the screen: the image's corners are where the map puts those coordinates
    placed = page.evaluate("""() => { const m = window.geoworkerMap.map, b = window.geoworkerMap.layer.getBounds();
        const box = m.getContainer().getBoundingClientRect();
        const nw = m.latLngToContainerPoint(b.getNorthWest()), se = m.latLngToContainerPoint(b.getSouthEast());
        const img = document.querySelector('#map img.gw-overlay').getBoundingClientRect();
        return {want: [box.left + nw.x, box.top + nw.y, box.left + se.x, box.top + se.y],
                got: [img.left, img.top, img.right, img.bottom], map: [box.left, box.top, box.right, box.bottom]}; }""")
    assert placed["got"] == pytest.approx(placed["want"], abs=1.5), placed
    left, top, right, bottom = placed["map"]
    assert left <= placed["got"][0] < placed["got"][2] <= right and top <= placed["got"][1] < placed["got"][3] <= bottom, \
        "the image was not fitted inside the map"

    # thumbnail, metadata and signed download links, all from the API
    assert page.evaluate("document.querySelector('#thumbnail').naturalWidth") > 0
    sync_api.expect(page.locator("#job-metadata")).to_contain_text(f"{width} × {height}")
    links = page.locator("#job-downloads a").evaluate_all("els => els.map(a => a.href)")
    assert len(links) == len(db.job(job["id"])["outputs"]) and all(
        link.startswith(api.base + f"/api/files/{job['id']}/") and "signature=" in link for link in links), links
    assert requests.get(links[0], timeout=10).status_code == 200


# --- cancel, retry, the list ------------------------------------------------------------------


def test_jobs_list_and_job_page_cancel_and_retry_by_click_and_by_keyboard(browser, api, worker, db):
    page = browser.page
    first = create(api, "alice", "debug.sleep", {"seconds": 120})
    browser.open("/ui/jobs", user_token("alice"))
    row = page.locator(f"tr[data-job-id='{first['id']}']")
    sync_api.expect(row).to_have_attribute("data-status", "queued")
    sync_api.expect(page.locator("#live")).to_have_attribute("data-state", "live")
    worker.start()
    sync_api.expect(row).to_have_attribute("data-status", "running", timeout=60000)
    second = create(api, "alice", "debug.noop")  # appears without a reload, at the top
    sync_api.expect(page.locator("tbody tr").first).to_have_attribute("data-job-id", second["id"])

    page.locator(f"tr[data-job-id='{first['id']}'] a").click()
    page.wait_for_url(re.compile(f"/ui/jobs/{first['id']}$"))
    status = page.locator("#job-status")
    sync_api.expect(status).to_have_attribute("data-status", "running")
    page.get_by_role("button", name="Cancel").click()
    dialog = page.locator("dialog.confirm")
    sync_api.expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel job").click()
    wait_for(lambda: db.job(first["id"])["status"] == "cancelled", 20, what="the job cancelled in the database")
    sync_api.expect(status).to_have_attribute("data-status", "cancelled")
    assert db.events(first["id"])[-1]["worker"] == "user:alice"

    # Retry by keyboard alone: Tab to the button, Enter, Tab past "Not now", Enter
    retry = page.get_by_role("button", name="Retry")
    sync_api.expect(retry).to_be_visible()
    page.locator("body").focus()
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Retry":
            break
    else:
        raise AssertionError("Retry is not reachable by keyboard")
    page.keyboard.press("Enter")
    sync_api.expect(dialog).to_be_visible()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    wait_for(lambda: db.job(first["id"])["status"] in ("queued", "running"), 20, what="the job queued again")
    assert "retried" in [e["kind"] for e in db.events(first["id"])]
    sync_api.expect(status).to_have_attribute("data-status", "running", timeout=60000)
    assert db.job(first["id"])["attempts"] == 1, "a retry starts a fresh set of attempts"


# --- upload ----------------------------------------------------------------------------------


def drop_file(page, selector: str, name: str, data: bytes, mime: str) -> None:
    page.evaluate("""([selector, name, b64, mime]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: mime}));
        document.querySelector(selector).dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true,
                                                                              cancelable: true}));
    }""", [selector, name, base64.b64encode(data).decode(), mime])


def test_upload_through_the_page_and_refusals_with_the_apis_reason(browser, api, worker, db, tmp_path):
    page = browser.page
    browser.allowed.append(REFUSED)  # the refusals below are 413/415/422 answers, on purpose
    worker.start()
    browser.open("/ui/upload", user_token("alice"))
    sync_api.expect(page.locator("#param-maxSize")).to_be_visible()

    # a PNG, dropped: the upload grant refuses its type before any byte is sent
    png = tmp_path / "photo.png"
    from PIL import Image
    Image.new("RGB", (8, 8), "red").save(png)
    drop_file(page, "#drop", "photo.png", png.read_bytes(), "image/png")
    sync_api.expect(page.locator("#chosen")).to_contain_text("photo.png")
    page.get_by_role("button", name="Upload and start").click()
    sync_api.expect(page.locator("#upload-message")).to_contain_text("declared as image/png, not a TIFF")
    # a PNG named .tif: the PUT itself is refused, after the upload
    fake = tmp_path / "fake.tif"
    fake.write_bytes(png.read_bytes())
    page.set_input_files("#file", str(fake))
    page.get_by_role("button", name="Upload and start").click()
    sync_api.expect(page.locator("#upload-message")).to_contain_text("not a TIFF")
    # too large for storage.max_file_size (150000 bytes here)
    big = rasters.write(tmp_path / "big.tif", rasters.gradient_rgb(300, 400))
    assert big.stat().st_size > 150000
    page.set_input_files("#file", str(big))
    page.get_by_role("button", name="Upload and start").click()
    sync_api.expect(page.locator("#upload-message")).to_contain_text("more than this service accepts")
    refused = db.rows("SELECT status, error_code FROM geo_jobs")
    assert refused and all(r["status"] == "cancelled" for r in refused), "a refused upload left a job waiting"

    src = geotiff(tmp_path / "plan.tif")
    page.set_input_files("#file", str(src))
    page.select_option("#task", "geotiff_to_png")
    page.fill("#param-maxSize", "64")
    page.get_by_role("button", name="Upload and start").click()
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    sync_api.expect(page.locator("#job-status")).to_have_attribute("data-status", "succeeded", timeout=90000)
    row = db.job(job_id)
    assert (row["owner"], row["params"], row["input"]["name"], row["input"]["size"]) == \
        ("alice", {"max_size": 64}, "plan.tif", src.stat().st_size)
    assert max(row["result"]["metadata"]["output"]["width"], row["result"]["metadata"]["output"]["height"]) == 64
    assert any(u.startswith(api.base + f"/api/uploads/{job_id}/plan.tif?") for u in browser.requests)


# --- privacy ---------------------------------------------------------------------------------


def test_a_users_pages_and_stream_never_show_another_users_job(browser, api, worker, db):
    page = browser.page
    mine = create(api, "alice", "debug.noop")
    theirs = create(api, "bob", "debug.sleep", {"seconds": 2})
    browser.open("/ui/jobs", user_token("alice"))
    sync_api.expect(page.locator(f"tr[data-job-id='{mine['id']}']")).to_have_count(1)
    page.evaluate("""() => { window.__ids = new Set();
        const note = () => document.querySelectorAll('[data-job-id]').forEach((el) => window.__ids.add(el.dataset.jobId));
        note(); new MutationObserver(note).observe(document.body, {subtree: true, childList: true, attributes: true}); }""")
    worker.start()  # bob's job runs: queued, running, progress, succeeded; none of it may reach alice
    wait_for(lambda: db.job(theirs["id"])["status"] == "succeeded", 60, what="bob's job to finish")
    sync_api.expect(page.locator(f"tr[data-job-id='{mine['id']}']")).to_have_attribute("data-status", "succeeded")
    page.wait_for_timeout(1500)  # what the stream might still carry
    assert page.evaluate("[...window.__ids]") == [mine["id"]]
    assert theirs["id"] not in page.content()

    browser.allowed.append(f"{REFUSED} 404")
    browser.open(f"/ui/jobs/{theirs['id']}")
    sync_api.expect(page.locator("h1")).to_have_text("No such job")
    assert theirs["id"] in page.locator("main").inner_text()  # the id it was asked for, and nothing about it
    assert "debug.sleep" not in page.locator("main").inner_text()

    browser.open("/ui/jobs", user_token("olga", role="operator"))  # an operator sees both
    sync_api.expect(page.locator("tbody tr")).to_have_count(2)


# --- restarts ---------------------------------------------------------------------------------


def test_the_page_reconnects_after_an_api_restart_and_catches_up(browser, api, worker):
    page = browser.page
    job = create(api, "alice", "debug.noop")
    browser.open(f"/ui/jobs/{job['id']}", user_token("alice"))
    status = page.locator("#job-status")
    sync_api.expect(status).to_have_attribute("data-status", "queued")
    sync_api.expect(page.locator("#live")).to_have_attribute("data-state", "live")
    record_statuses(page, "#job-status")
    browser.allowed += ["net::ERR_CONNECTION_REFUSED", "net::ERR_EMPTY_RESPONSE", "Failed to fetch"]
    api.stop()
    sync_api.expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")
    worker.start()  # the job runs while the API is down: nobody tells the page
    api.start()
    sync_api.expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30000)
    sync_api.expect(status).to_have_attribute("data-status", "succeeded", timeout=60000)
    assert page.evaluate("window.__noReload") is True


# --- layout -----------------------------------------------------------------------------------


PAGES = [("signin", "/ui/signin"), ("overview", "/ui/overview"), ("jobs", "/ui/jobs"), ("job", None),
         ("upload", "/ui/upload")]


def test_every_page_fits_a_desktop_and_a_phone(browser, api, worker, db, tmp_path):
    """Screenshots of every page at both sizes; nothing wider than the window; every button
    reachable by Tab. GEOWORKER_UI_SCREENSHOTS=<dir> keeps the pictures (docs/img)."""
    keep = os.environ.get("GEOWORKER_UI_SCREENSHOTS")
    out = Path(keep) if keep else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    worker.start()
    job = upload(api, "alice", geotiff(tmp_path / "site.tif", 150, 200))
    for n in range(4):
        create(api, "alice", "debug.sleep", {"seconds": 0.2 * n})
    failed = create(api, "bob", "debug.fail", {"permanent": True})
    wait_for(lambda: db.job(failed["id"])["status"] == "failed" and db.job(job["id"])["status"] == "succeeded", 60,
             what="the jobs to finish")
    create(api, "alice", "debug.sleep", {"seconds": 120})  # one running while the pictures are taken
    wait_for(lambda: db.statuses().get("running"), 30, what="a running job")
    page = browser.page
    token = user_token("olga", role="operator")
    browser.open("/ui/signin")
    page.evaluate("(t) => sessionStorage.setItem('geoworker.token', t)", token)
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        for name, path in PAGES:
            if name == "signin":
                page.evaluate("sessionStorage.clear()")
            browser.open(path or f"/ui/jobs/{job['id']}")
            ready = {"signin": "#token", "overview": "#workers tbody tr[data-worker-id]", "jobs": "tbody tr",
                     "job": "#map img.gw-overlay[data-loaded='true']", "upload": "#param-maxSize"}[name]
            page.locator(ready).first.wait_for()
            if name == "signin":
                page.evaluate("(t) => sessionStorage.setItem('geoworker.token', t)", token)
            page.wait_for_timeout(600)  # transitions (progress bars) settle
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= size["width"], f"{name} is {width} px wide in a {size['width']} px window"
            shot = out / f"ui-{name}-{size_name}.png"
            page.screenshot(path=str(shot), full_page=True)
            shrink(shot)
            check_keyboard(page, name)


def check_keyboard(page, name: str) -> None:
    buttons = page.evaluate("""() => [...document.querySelectorAll('button, a[href], select, input, textarea')]
        .filter((el) => el.offsetParent !== null && !el.disabled).length""")
    reached = set()
    page.locator("body").focus()
    for _ in range(buttons + 5):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("""() => { const el = document.activeElement;
            return el ? el.tagName + ':' + (el.id || el.textContent.trim().slice(0, 30)) : ''; }"""))
    assert len(reached) >= min(buttons, 3), f"{name}: Tab reached {sorted(reached)} of {buttons} controls"


def shrink(path: Path) -> None:
    """A 256-colour palette keeps a screenshot small enough for the repository."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                              dither=Image.Dither.FLOYDSTEINBERG)
    small.save(path, optimize=True)


# --- the tile layer ---------------------------------------------------------------------------


def show_tiles_job(browser, api, worker, db, src: Path, payload=None, *, zoom: int, tiles: int):
    """Run a real geotiff_to_tiles job on `src` and open its page; wait until the map is fitted and
    settled (zoom >= `zoom`, at least `tiles` tiles loaded: a tile seen during the zoom animation may
    be replaced by the next zoom's). Returns (the job, the tile URLs asked, {zoom, bounds} of the view)."""
    job = upload(api, "alice", src, "geotiff_to_tiles", payload)
    worker.start()
    wait_for(lambda: db.job(job["id"])["status"] == "succeeded", 90, what="the tiles job")
    page = browser.page
    asked: list[str] = []
    page.on("requestfinished", lambda r: asked.append(r.url) if "/tiles/" in r.url else None)
    browser.open(f"/ui/jobs/{job['id']}", user_token("alice"))
    sync_api.expect(page.locator("#map")).to_have_attribute("data-layer", "tiles")
    page.wait_for_function("""([zoom, tiles]) => { const m = window.geoworkerMap && window.geoworkerMap.map;
        return m && m.getZoom() >= zoom && document.querySelectorAll('#map .leaflet-tile-loaded').length >= tiles; }""",
                           arg=[zoom, tiles], timeout=20000)
    view = page.evaluate("""() => { const m = window.geoworkerMap.map, b = m.getBounds();
        return {zoom: m.getZoom(), bounds: [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]}; }""")
    return job, asked, view


def test_a_job_with_map_tiles_shows_the_tile_layer_its_tilejson_names(browser, api, worker, db, tmp_path):
    """A real geotiff_to_tiles job: the page reads its TileJSON (with the viewer's token) and Leaflet
    fetches the tiles from the template's signed URLs, without headers, from the API itself."""
    job, asked, view = show_tiles_job(browser, api, worker, db, geotiff(tmp_path / "site.tif", 150, 200),
                                      {"zoom": "13-16"}, zoom=13, tiles=1)
    pattern = re.escape(api.base + f"/api/geo-jobs/{job['id']}/tiles/") + r"1[3-6]/\d+/\d+\.png\?expires=\d+&signature=[0-9a-f]+"
    assert asked and all(re.fullmatch(pattern, u) for u in asked), asked
    tj = requests.get(api.url(f"{GEO_JOBS}/{job['id']}/tilejson.json"), headers=bearer("alice"), timeout=10).json()
    west, south, east, north = view["bounds"]
    assert west <= tj["bounds"][0] and south <= tj["bounds"][1] and east >= tj["bounds"][2] and north >= tj["bounds"][3]
    assert view["zoom"] >= 13, "the map was not fitted to the tiles' bounds"


def test_a_tiles_job_across_the_antimeridian_is_fitted_to_its_data_and_shows_both_sides(browser, api, worker, db,
                                                                                          tmp_path):
    """TileJSON's bounds span -180..180 for such a layer (map libraries request nothing for west > east);
    the page fits the view to the job's own bounds (178.7 to 184.2 E) and Leaflet fetches the tiles on
    both sides of the antimeridian (x = 63 and, wrapped, x = 0 at zoom 6)."""
    _, asked, view = show_tiles_job(browser, api, worker, db, rasters.across_antimeridian(tmp_path / "pacific.tif"),
                                    zoom=4, tiles=2)
    west, south, east, north = view["bounds"]
    assert west <= 178.8 and east >= 184.2 and south <= 58.5 and north >= 60.4, view  # the data, whole
    assert east - west < 60, view  # and not the whole width of the world
    columns = {int(re.search(r"/tiles/6/(\d+)/", u).group(1)) for u in asked if "/tiles/6/" in u}
    assert {0, 63} <= columns, asked
