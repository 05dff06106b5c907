"""The interactive API docs, /docs (Swagger UI) and /redoc (ReDoc), with no network needed.

FastAPI's own pages load their scripts and styles from a CDN: blank on a machine without
internet. These pages are FastAPI's, pointed at files served here, at /docs/assets/, from
the fastapi-offline package (a pinned dependency; only its files are used). It ships Swagger
UI 5 and ReDoc 2; swagger-ui-bundle ships Swagger UI 4, which cannot read the OpenAPI 3.1
that FastAPI writes.

ReDoc's bundle has one address of its own on the internet: the Redocly logo in its sidebar's
"API docs by Redocly" link, an <img> it always draws. The bundle is served with that address
rewritten to a file here, so /redoc makes no request that leaves the server.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

from ris.api.errors import APIError

ASSETS_URL = "/docs/assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
# The files served, by name, with their media types: nothing else in that folder is.
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
    "redoc-logo.svg": "image/svg+xml",
}
# The one address ReDoc's bundle fetches by itself, and the file served in its place: the
# console's icon (this package's own picture, not Redocly's logo).
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"
LOCAL_LOGO = Path(__file__).resolve().parent.parent / "ui" / "static" / "favicon.svg"

router = APIRouter(include_in_schema=False)


def _asset(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSETS_URL}/{name}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=_asset(request, "swagger-ui-bundle.js"),
        swagger_css_url=_asset(request, "swagger-ui.css"),
        swagger_favicon_url=_asset(request, "favicon.png"),
        # Swagger UI would send the schema to validator.swagger.io for a badge.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=_asset(request, "redoc.standalone.js"),
        redoc_favicon_url=_asset(request, "favicon.png"),
        with_google_fonts=False,
    )


@functools.cache
def _redoc_bundle() -> bytes:
    """ReDoc's bundle with its logo's address pointed here (read once, about 1 MB)."""
    text = (ASSETS_DIR / "redoc.standalone.js").read_text(encoding="utf-8")
    if REDOC_LOGO_URL not in text:
        # A new fastapi-offline may move it: the browser test that records /redoc's requests
        # says where it now goes.
        return text.encode()
    return text.replace(REDOC_LOGO_URL, f"{ASSETS_URL}/redoc-logo.svg").encode()


@router.get(ASSETS_URL + "/{name}")
async def docs_asset(name: str) -> Response:
    media_type = ASSET_TYPES.get(name)
    if media_type is None:
        raise APIError(404, "not_found", f"no docs asset {name!r}; there are {', '.join(ASSET_TYPES)}")
    headers = {"Cache-Control": "max-age=86400"}
    if name == "redoc.standalone.js":
        # Read and rewritten off the event loop the first time.
        body = await asyncio.to_thread(_redoc_bundle)
        return Response(body, media_type=media_type, headers=headers)
    if name == "redoc-logo.svg":
        return FileResponse(LOCAL_LOGO, media_type=media_type, headers=headers)
    # The files change only with the pinned package: browsers may keep them a day.
    return FileResponse(ASSETS_DIR / name, media_type=media_type, headers=headers)
