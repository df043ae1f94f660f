"""The dashboard's pages and files, served at /ui by `geoworker api` itself.

No build step and no third-party host: the pages are one HTML shell (templates/index.html)
and ES modules (ui/static/js), Leaflet comes from the XStatic-Leaflet package, and a
Content-Security-Policy tells the browser to fetch from this origin only (plus the tile host
of `[ui] basemap_url` when one is configured). The token never reaches the server in a URL:
the sign-in link carries it in the fragment, and the pages send it as `Authorization: Bearer`.

    /ui, /ui/signin, /ui/overview, /ui/jobs, /ui/jobs/{id}, /ui/upload   the shell (the pages
                                        route themselves in the browser)
    /ui/static/...                      the dashboard's own CSS and JavaScript
    /ui/vendor/leaflet/...              Leaflet (XStatic-Leaflet), its CSS and images
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from geoworker import __version__

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
PAGES = ("/ui", "/ui/", "/ui/signin", "/ui/overview", "/ui/jobs", "/ui/upload")
router = APIRouter(include_in_schema=False)


def leaflet_dir() -> Path:
    import xstatic.pkg.leaflet  # the XStatic-Leaflet package: Leaflet's release files, no build step

    return Path(xstatic.pkg.leaflet.BASE_DIR)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def content_security_policy(settings) -> str:
    """This origin only; images also from the basemap's host and api.base_url (signed URLs start with it)."""
    extra = " ".join(sorted({o for o in (_origin(settings.ui.basemap_url), _origin(settings.api.base_url)) if o}))
    images = f"'self' data: blob: {extra}".strip()
    connect = f"'self' {_origin(settings.api.base_url)}".strip()
    return ("default-src 'self'; script-src 'self'; style-src 'self'; font-src 'self'; "
            f"img-src {images}; connect-src {connect}; object-src 'none'; base-uri 'none'; "
            "form-action 'self'; frame-ancestors 'none'")


@functools.lru_cache(maxsize=1)
def _template() -> str:
    return (UI_DIR / "templates" / "index.html").read_text(encoding="utf-8")


def render_shell(settings) -> str:
    """The page shell with what the scripts need to know (no secret: anyone may load it)."""
    prefix = urlsplit(settings.api.base_url).path.rstrip("/") if settings.api.base_url else ""
    config = {"base": prefix, "version": __version__, "basemapUrl": settings.ui.basemap_url,
              "basemapAttribution": settings.ui.basemap_attribution}
    # "<" escaped: the JSON sits in a <script> element and must not be able to close it
    text = json.dumps(config).replace("<", "\\u003c")
    return _template().replace("{{config}}", text).replace("{{base}}", prefix).replace("{{version}}", __version__)


def _page(request: Request) -> HTMLResponse:
    return HTMLResponse(render_shell(request.app.state.api.settings), headers={"Cache-Control": "no-store"})


# HEAD too, as for the static files: link checkers and load balancers probe pages with it
for _path in (*PAGES, "/ui/jobs/{job_id}"):
    router.add_api_route(_path, _page, methods=["GET", "HEAD"])


class UiHeaders:
    """Security headers on everything under /ui: the policy above, no sniffing, no referrer
    (a page URL must not travel to a basemap host), no framing; and revalidated caching, since
    the files keep their names across releases."""

    def __init__(self, app, policy: str):
        self.app = app
        self.headers = [(b"content-security-policy", policy.encode()), (b"x-content-type-options", b"nosniff"),
                        (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not (scope["path"] == "/ui" or scope["path"].startswith("/ui/")):
            return await self.app(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-cache"))
                message = {**message, "headers": headers + self.headers}
            await send(message)

        await self.app(scope, receive, sending)


def install(app: FastAPI, settings) -> None:
    """The pages, the static files, and their headers."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=UI_DIR / "static"), name="ui-static")
    app.mount("/ui/vendor/leaflet", StaticFiles(directory=leaflet_dir()), name="ui-leaflet")
    app.add_middleware(UiHeaders, policy=content_security_policy(settings))
