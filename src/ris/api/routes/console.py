"""The web console: /ui (overview), /ui/work, /ui/playground, /ui/models, the key login, its
static files, and /api/console/state, the one body its pages poll.

Pages are Jinja2 templates rendered here; everything live is done by the page's own script
through the public API (the console has no private way in). Every page is sent with a strict
Content-Security-Policy: scripts and styles only from this server, no inline code, so a task's
text shown on a page cannot run as script. With API keys configured, security.Guard sends a
browser without the key cookie to /ui/login, and the login stores the key in an HttpOnly,
SameSite=Strict cookie (never in the URL, never readable by the page's script).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from ris import __version__
from ris.api.chart_history import ChartHistory
from ris.api.console_sessions import ConsoleSessions
from ris.api.console_state import console_state
from ris.api.deps import engine_of, viewer_of
from ris.api.errors import APIError
from ris.api.keys import KeyChecker, Verdict
from ris.api.security import KEY_COOKIE, client_address, cookie_key

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
# The version in the path: a browser never mixes files of two releases from its cache.
STATIC_URL = f"/ui/static/{__version__}"
# The files served, by name, with their media types: nothing else in the folder is.
STATIC_TYPES = {
    "console.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "work.js": "text/javascript; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "models.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Scripts, styles, pictures, audio and requests only from this server; no inline script or
# style, no plugins, no framing (clickjacking), forms post only here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: under it a browser sends "Origin: null" with the login form, which the
    # guard refuses as cross-origin.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
PAGES = {"overview": "Overview", "work": "Work", "playground": "Playground", "models": "Models"}
# Config fields whose values are secrets: shown as how many there are, never what they are.
SECRET_NAME = re.compile(r"(^|_)(api_?keys?|keys|secrets?|password|token|credentials?)$", re.IGNORECASE)

templates = Jinja2Templates(directory=str(UI_DIR / "templates"))
router = APIRouter(include_in_schema=False)


def _page(request: Request, page: str, **context: Any) -> HTMLResponse:
    engine = engine_of(request)
    return templates.TemplateResponse(
        request,
        f"{page}.html",
        {
            "page": page,
            "pages": PAGES,
            "static": STATIC_URL,
            "version": __version__,
            "keys_required": bool(engine.config.server.api_keys),
            "lanes": list(engine.config.lanes),
            **context,
        },
        headers=PAGE_HEADERS,
    )


# HEAD too: Ollama's CLI checks a server is up with HEAD / (it was 405 on the main port).
@router.api_route("/", methods=["GET", "HEAD"])
async def root(request: Request) -> Response:
    """A browser goes to the console; an API client is told where things are."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui", status_code=303)
    return JSONResponse({"service": "ris", "version": __version__, "console": "/ui", "docs": "/docs"})


@router.get("/ui")
async def overview(request: Request) -> HTMLResponse:
    return _page(request, "overview")


@router.get("/ui/work")
async def work(request: Request) -> HTMLResponse:
    return _page(request, "work")


@router.get("/ui/playground")
async def playground(request: Request) -> HTMLResponse:
    return _page(request, "playground")


@router.get("/ui/models")
async def models(request: Request) -> HTMLResponse:
    engine = engine_of(request)
    # The configuration (paths, hosts, limits) is the operator's: a user key sees the models
    # (/api/models) and not the file layout behind them, as /metrics is an admin's too.
    config = redact(json.loads(engine.config.model_dump_json())) if viewer_of(request).admin else None
    return _page(
        request,
        "models",
        config_json=None if config is None else json.dumps(config, indent=2, ensure_ascii=False),
        # No route reloads the config: it is read once, at start, and refused then if invalid.
        reload_note="The configuration is read and validated when the server starts; "
        "to change it, edit the file and restart the server (an invalid file is refused with "
        "its errors then).",
    )


@router.get("/ui/login")
async def login_form(request: Request) -> Response:
    if not engine_of(request).config.server.api_keys:
        return RedirectResponse("/ui", status_code=303)
    return _page(request, "login", error=None, next=_after_login(request.query_params.get("next")))


def _after_login(asked: str | None) -> str:
    """Where the login form sends a person: the console page they were sent from (`next`),
    only ever one of the console's own pages (never another site: an open redirect)."""
    return asked if (asked in PAGE_PATHS and asked != "/ui/login") or asked in API_PAGES else "/ui"


@router.post("/ui/login")
async def login(request: Request) -> Response:
    keys = engine_of(request).config.server.api_keys
    if not keys:
        return RedirectResponse("/ui", status_code=303)
    if not _from_own_page(request):
        # Login CSRF: a page elsewhere (an allowed origin included) that posts its own key here
        # logs the browser's console in as that key, and what the person then asks becomes its
        # owner's tasks to read.
        raise APIError(
            403,
            "origin_not_allowed",
            "the console's login form takes posts from its own page only (/ui/login on this server)",
        )
    # A plain form post (application/x-www-form-urlencoded): parsed here, so the server needs
    # no multipart library for one field.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("key") or [""])[0].strip()
    after = _after_login((form.get("next") or [""])[0])
    checker: KeyChecker = request.app.state.keys
    verdict = checker.check(client_address(request.scope), given) if given else Verdict(False)
    if verdict.retry_after_s is not None:
        retry = max(1, math.ceil(verdict.retry_after_s))
        error = f"Too many wrong keys from your address: try again in {retry} s."
        refused = _page(request, "login", error=error, next=after)
        refused.status_code = 429
        refused.headers["Retry-After"] = str(retry)
        return refused
    if not verdict.ok:
        refused = _page(request, "login", error="That key is not one of this server's API keys.", next=after)
        refused.status_code = 401
        return refused
    sessions: ConsoleSessions = request.app.state.sessions
    resp = RedirectResponse(after, status_code=303)
    resp.set_cookie(
        KEY_COOKIE,
        sessions.issue(given),  # a session, not the key: every port of the host gets it
        # No Max-Age: the browser forgets it when it closes (the server's own bound is the TTL).
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return resp


def _from_own_page(request: Request) -> bool:
    """Whether a form post came from this server's own page: its Origin, where the browser
    sends one (every current browser does on a POST), is this host and port, and its Fetch
    Metadata, where sent, says same-origin (another port of the host is "same-site")."""
    origin = request.headers.get("origin")
    if origin is not None:
        scheme, _, rest = origin.rstrip("/").lower().partition("://")
        if scheme not in ("http", "https") or rest != request.headers.get("host", "").lower():
            return False
    return request.headers.get("sec-fetch-site") in (None, "same-origin", "none")


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    sessions: ConsoleSessions | None = request.app.state.sessions
    # Another page of the site (an allowed origin on another port gets the cookie) may not end
    # the key's sessions everywhere; the browser's own cookie is cleared whoever asks.
    if sessions is not None and _from_own_page(request):
        # As the guard read it; the logout written to the data folder, off the event loop.
        await asyncio.to_thread(sessions.log_out, cookie_key(request.headers.get("cookie", "")))
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return resp


@router.get(STATIC_URL + "/{name}")
async def static(name: str) -> FileResponse:
    media_type = STATIC_TYPES.get(name)
    if media_type is None:
        raise APIError(404, "not_found", f"no console file {name!r}; there are {', '.join(STATIC_TYPES)}")
    # Their URL changes with the package version: a browser may keep them an hour.
    return FileResponse(
        UI_DIR / "static" / name,
        media_type=media_type,
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/api/console/state")
async def state(request: Request) -> dict[str, Any]:
    """Every lane's live state and the tasks queued, running and recently finished, in one
    body: what the console polls about once a second."""
    return console_state(engine_of(request), viewer_of(request))


@router.get("/api/console/history")
async def history(request: Request) -> dict[str, Any]:
    """The overview's charts over the last 15 minutes, sampled every few seconds since the
    server started: what a page draws when it loads, before its first tick."""
    charts: ChartHistory = request.app.state.charts
    return charts.view()


PAGE_PATHS = frozenset({"/ui", "/ui/work", "/ui/playground", "/ui/models", "/ui/login"})
# The API's interactive pages (routes/docs.py), which a session opens too: a login sent from
# one goes back to it.
API_PAGES = frozenset({"/docs", "/redoc"})


# Registered last, so every /ui page above answers first: any other path under /ui is a page
# that does not exist, shown as one in the console's look (an API client's paths are JSON).
@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def not_found(request: Request, path: str) -> Response:
    page = f"/ui/{path}".rstrip("/")
    if (path == "" or path.endswith("/")) and page in PAGE_PATHS:  # `/ui/`, `/ui/work/`: the page
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(page + query, status_code=307)
    resp = _page(request, "not_found", path=request.url.path)
    resp.status_code = 404
    return resp


def redact(value: Any, name: str = "") -> Any:
    """The config with secret values replaced: a list of keys becomes '<n keys hidden>'."""
    if SECRET_NAME.search(name) and value:
        count = len(value) if isinstance(value, list) else 1
        return f"<{count} hidden>"
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, name) for v in value]
    return value
