"""`GET /dashboard`: the one-page usage dashboard, served next to the usage API.

The page is static: HTML, four scripts and one stylesheet under `static/`, shipped inside the
wheel. It holds no data, so it needs no key; the scripts ask the user for the proxy key and call
the usage API (`/usage/summary`, `/usage/requests`, `/usage/calls`, `/usage/tags`,
`/usage/requests/{id}`, `/usage/export.csv`) on the same origin with it.

No build step and no CDN: the charts are inline SVG drawn by vanilla JavaScript, so
the dashboard works on an offline machine and in a locked-down network. The Content-Security-Policy
below pins every fetch, script and style to the proxy's own origin, which both documents and
enforces that promise.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

__all__ = ["ASSETS", "STATIC_DIR", "create_dashboard_router"]

STATIC_DIR = Path(__file__).with_name("static")

#: Asset name → media type. Only these names are served, so no request path ever reaches the file
#: system.
ASSETS: dict[str, str] = {
    "dashboard_format.js": "text/javascript; charset=utf-8",
    "dashboard_charts.js": "text/javascript; charset=utf-8",
    "dashboard_tables.js": "text/javascript; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

_PAGE = "dashboard.html"

_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The assets change with the installed version; revalidating is cheap and avoids a stale page
    # talking to a newer API after an upgrade.
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def create_dashboard_router() -> APIRouter:
    """A router serving `GET /dashboard` and its assets under `/dashboard/static/`.

    Files are read when the router is built, not at import, so a missing asset fails `serve` at
    start-up rather than the first visitor.
    """
    page = _read(_PAGE)
    assets = {name: _read(name) for name in ASSETS}
    router = APIRouter()

    @router.get("/dashboard", include_in_schema=False)
    async def dashboard() -> Response:
        return Response(content=page, media_type="text/html; charset=utf-8", headers=_HEADERS)

    @router.get("/dashboard/static/{name}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        body = assets.get(name)
        if body is None:
            return JSONResponse({"error": f"no dashboard asset {name!r}"}, status_code=404)
        return Response(content=body, media_type=ASSETS[name], headers=_HEADERS)

    return router
