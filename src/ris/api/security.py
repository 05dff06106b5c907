"""Who may talk to the server: Host allow-list (DNS rebinding), cross-origin refusal, bearer keys.

One pure-ASGI guard in front of every route, so no endpoint can forget a check. Browsers let any
web page send requests to 127.0.0.1; a rebinding page does so under its own host name. So by
default only loopback names, addresses written as such and names no public DNS answers
(*.localhost, *.internal) are accepted as Host, cross-origin requests are refused unless their
origin is configured (or, on the Ollama listener, is one Ollama lets in), and with keys
configured every path but /health (and the Ollama listener's "/", its health check) needs one.

The web console (/ui) is let in by an HttpOnly, SameSite=Strict session cookie its login form
sets (routes/console.py, console_sessions.py: not the key); a browser page without it is sent to
the login form instead of getting a JSON 401.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections.abc import Iterable
from urllib.parse import unquote, urlencode

from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ris.api.console_sessions import ConsoleSessions
from ris.api.errors import dialect_of, error_response
from ris.api.keys import KeyChecker, Verdict, key_fingerprint
from ris.api.signed_urls import UrlSigner
from ris.config import Config, ConfigError
from ris.runtime.tenancy import Principal

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
OPEN_PATHS = frozenset({"/health", "/ui/login", "/ui/logout"})
# The console's scripts and styles: the login page needs them, and they hold no secrets.
OPEN_PREFIXES = ("/ui/static/",)
KEY_COOKIE = "ris_key"
# The response headers an allowed origin's script may read: what the API answers with.
EXPOSED_HEADERS = (
    "X-Task-Id, x-request-id, Retry-After, X-Sample-Rate, X-Duration-S, X-Ignored-Options, X-Warnings, "
    "x-should-retry, Content-Range, Accept-Ranges, ETag, Server-Timing"
)
# The origins Ollama lets in by default (its envconfig.AllowedOrigins): pages on this machine
# on any port, desktop apps (Electron's app://, Tauri's), editors' webviews. Its clients (Open
# WebUI in a browser, Obsidian, VS Code extensions) expect them on its port.
OLLAMA_ORIGINS = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ),
    # Desktop apps' schemes, as Ollama's envconfig lists them (file://: an Electron app's pages).
    *("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"),
)
# What a page let in by default_origins may not do (Guard).
OPERATOR_PATHS = frozenset({"/api/pull"})
CLIENT_STATE = "ris_client"  # scope["state"] key: the fingerprint of the key a request used
# scope["state"] key: who the key is (ris.runtime.tenancy.Principal): the owner of the tasks the
# request makes, and which tasks it sees. Absent with no key configured: the anonymous admin.
PRINCIPAL_STATE = "ris_principal"
# Who a signed result URL's request is: one who may see the task its signed path names (and,
# the signature covering that path, nothing else).
SIGNED_URL = Principal(owner="signed-url", admin=True)
_PORT = re.compile(r":[0-9]{1,5}")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config) -> None:
    """Refuse to listen beyond loopback with no API key: anyone on the network could use it."""
    host = config.server.host
    if not is_loopback(host) and not config.server.api_keys:
        raise ConfigError(
            f"server.host {host!r} exposes the service beyond this machine, but no "
            "server.api_keys are configured; set api_keys, or listen on 127.0.0.1"
        )


def served_hosts(config: Config) -> list[str]:
    """Host names accepted besides loopback names: the configured ones and the address the
    server listens on, whatever it is (127.0.0.2 is loopback, yet only 127.0.0.1 is among
    the loopback names). A wildcard address (0.0.0.0, ::) names no host of its own: behind
    it, only these and what the guard serves of any server (loopback names, addresses,
    *.localhost, *.internal) are."""
    srv = config.server
    hosts = list(srv.allowed_hosts)
    listening = _listen_name(srv.host)
    if listening is not None:
        hosts.append(listening)
    return hosts


# Shorter keys are said at start: 10 wrong keys a minute still guess a short one in time.
MIN_KEY_CHARS = 16


def short_key_hint(config: Config) -> str | None:
    """What to tell the operator of keys short enough to guess (named by their name or their
    place in the list, never quoted); None where there are none."""
    short = [
        (f"{entry.name!r}" if not isinstance(entry, str) else f"entry {i}")
        for i, entry in enumerate(config.server.api_keys)
        if len(entry if isinstance(entry, str) else entry.key) < MIN_KEY_CHARS
    ]
    if not short:
        return None
    return (
        f"server.api_keys: {', '.join(short)} {'is' if len(short) == 1 else 'are'} shorter than "
        f"{MIN_KEY_CHARS} characters, short enough to guess; use long random keys "
        "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
    )


def wildcard_host_hint(config: Config, addresses: Iterable[str]) -> str | None:
    """What to tell the operator of a server listening on every address (0.0.0.0, ::) with
    no server.allowed_hosts: a client on the network that writes this machine's address or
    name gets 403 host_not_allowed (the guard against DNS rebinding serves loopback names
    only), which looked like the server refusing everyone. `addresses`: this machine's own,
    named in the hint. None where there is nothing to say."""
    srv = config.server
    if _listen_name(srv.host) is not None or srv.allowed_hosts:
        return None
    own = [a for a in addresses if a.lower() not in LOOPBACK_NAMES and not _no_rebinding_name(a.lower())][:4]
    example = json.dumps(own or ["myhost", "myhost.lan"])
    return (
        f"server.host {srv.host!r} listens on every address; its addresses are served, but no name "
        "of this machine: a client that writes one in its URL gets 403 host_not_allowed. List the "
        f'names clients use in server.allowed_hosts (e.g. {example}), or "*"'
    )


def _origin(origin: str) -> str:
    """An origin as compared: lowercase, without a trailing "/" (a slip of the writer's), but
    "file://" (an app's page) keeps its own: stripped, it read "file:" and matched nothing."""
    o = origin.lower()
    return o[:-1] if o.endswith("/") and not o.endswith("://") else o


def _glob(pattern: str) -> re.Pattern[str]:
    """An origin pattern, everything but "*" as written (fnmatch read the brackets of
    "http://[::1]:*" as a character class, and "?" as any character). A "*" in the port's place
    (after a ":", ending the pattern) is a port, digits; elsewhere any run of characters but
    "/" and "@": "http://localhost:*" let in "http://localhost:3000.evil.com" and
    "http://localhost:@evil.com" (no browser sends those, but a pattern should not mean them),
    while "http://*" and "https://*:8443" still match "http://localhost:3000" and "[::1]"."""
    parts = pattern.split("*")
    out = re.escape(parts[0])
    for i, part in enumerate(parts[1:], 1):
        port = parts[i - 1].endswith(":") and i == len(parts) - 1 and part == ""
        out += ("[0-9]{1,5}" if port else "[^/@]*") + re.escape(part)
    return re.compile(out)


def _no_rebinding_name(host: str) -> bool:
    """A Host no DNS rebinding can put in a browser's request: an address written as one (a
    page that rebinds a name sends the name), or a name no public DNS answers (`.localhost`,
    and `.internal`, Docker's `host.docker.internal`). A client on the network that wrote the
    machine's address got 403 host_not_allowed, where Ollama serves it."""
    if host.endswith((".localhost", ".internal")):
        return True
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return True


def _listen_name(host: str) -> str | None:
    """The listen address as a client writes it in Host: an IPv6 address in brackets and in
    its shortest form; None for a wildcard address."""
    try:
        ip = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return host.strip().lower() or None  # a host name
    if ip.is_unspecified:
        return None
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


def _host_name(host: str) -> str:
    """'example.com:8080' -> 'example.com'; '[0:0::1]:8080' -> '[::1]' (one spelling per
    IPv6 address, the one served_hosts uses)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]") + 1
        name, port = (host[:end], host[end:]) if end else (host, "")
        if port and not _PORT.fullmatch(port):
            return host  # '[::1]:80@evil.example': not a Host of ours, whatever it starts with
        try:
            return f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            return name
    if host.count(":") == 1:
        name, port = host.split(":")
        # '127.0.0.1:8301@evil.example' is not 127.0.0.1: only digits may follow the colon.
        return name if _PORT.fullmatch(":" + port) else host
    return host


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: KeyChecker | None = None,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        signer: UrlSigner | None = None,
        sessions: ConsoleSessions | None = None,
        default_origins: Iterable[str] = (),
    ) -> None:
        """`keys`: the server's API keys and their guessing throttle (none: no key needed);
        `signer`: the result URLs that open without a key (signed_urls); `default_origins`:
        origins let in without the operator naming them (the Ollama listener's, Ollama's
        defaults), for all but OPERATOR_PATHS."""
        self.app = app
        self.keys = keys if keys is not None and keys.keys else None
        self.signer = signer
        self.sessions = sessions
        hosts = {h.lower() for h in allowed_hosts}
        self.any_host = "*" in hosts
        self.hosts = LOOPBACK_NAMES | hosts
        origins = {_origin(o) for o in allowed_origins}
        self.any_origin = "*" in origins
        # "http://localhost:*", "vscode-webview://*": a pattern, for origins that cannot be
        # listed one by one (a port chosen at random, a webview's id).
        self.origins = {o for o in origins if "*" not in o}
        self.origin_patterns = tuple(_glob(o) for o in origins if "*" in o and o != "*")
        self.default_origins = tuple(_glob(o.lower()) for o in default_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("headers") or []
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}
        path: str = scope.get("path", "")
        dialect = dialect_of(scope)
        if sum(1 for k, _ in raw if k.lower() == b"host") > 1:
            # RFC 9112: a request with more than one Host is answered 400. Here the last one
            # passed the allow-list while the app built its URLs from the first (a signed image
            # URL on a host of the sender's choosing).
            resp = error_response(
                400, "bad_request", "a request has one Host header; this one had several", dialect=dialect
            )
            await resp(scope, receive, send)
            return
        host = _host_name(headers.get("host", ""))
        if not self.any_host and host not in self.hosts and not _no_rebinding_name(host):
            resp = error_response(
                403,
                "host_not_allowed",
                f"Host {host!r} is not served here; allowed: "
                f"{', '.join(sorted(self.hosts))} (server.allowed_hosts)",
                dialect=dialect,
            )
            await resp(scope, receive, send)
            return
        origin = headers.get("origin")
        cors: dict[str, str] = {}
        same = True  # no Origin: not a cross-origin request from a browser
        if origin is not None:
            o = _origin(origin)
            scheme, _, rest = o.partition("://")
            # Same origin: this server's pages, over http(s); another scheme is another origin.
            same = scheme in ("http", "https") and rest == headers.get("host", "").lower()
            allowed = same or self.any_origin or o in self.origins
            allowed = allowed or any(p.fullmatch(o) for p in self.origin_patterns)
            # Ollama's default origins (any page on this machine, an editor's webview) may use
            # its API, as on Ollama, but not pull a model: that downloads gigabytes and rewrites
            # config.json, an act for an origin the operator named.
            by_default = not allowed and any(p.fullmatch(o) for p in self.default_origins)
            if not (allowed or (by_default and path not in OPERATOR_PATHS)):
                why = " to pull a model" if by_default else ""
                resp = error_response(
                    403,
                    "origin_not_allowed",
                    f"cross-origin requests from {origin!r}{why} "
                    "are refused; configure server.allowed_origins to allow one",
                    dialect=dialect,
                )
                await resp(scope, receive, send)
                return
            cors = {
                "Access-Control-Allow-Origin": origin,
                "Vary": "Origin",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                "Access-Control-Expose-Headers": EXPOSED_HEADERS,
            }
            if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
                asked = headers.get("access-control-request-headers", "")
                cors["Access-Control-Allow-Headers"] = allowed_headers(asked)
                await _preflight(cors, scope, receive, send)
                return
        # The Ollama listener's "/" is its health check ("Ollama is running"), open as /health
        # is: monitors and the Ollama CLI's heartbeat send no key.
        health = path == "/" and dialect == "ollama" and scope["method"] in ("GET", "HEAD")
        signature: str | None = None
        if self.keys is None or _open(path) or health:
            verdict = None
        elif (signature := self._signature(scope, path)) == "valid":
            verdict = None  # a result URL a response gave out, for that result alone
        else:
            verdict = self._authorized(scope, headers, cookie=same and _cookie_allowed(headers))
        # The refusals below carry the CORS headers an allowed origin gets: without them the
        # browser hides the answer, and the page saw "Failed to fetch", not "wrong key" (the
        # OpenAI SDK a "Connection error", which it retried, a guess spent each time).
        if verdict is not None and verdict.retry_after_s is not None:
            await throttled(verdict.retry_after_s, dialect=dialect, headers=cors)(scope, receive, send)
            return
        if verdict is not None and not verdict.ok:
            if _console_page(path, scope["method"], headers):
                # A person in a browser: to the login form, not a JSON error, which brings
                # them back to this page (console.py checks `next` is one of its pages).
                login = "/ui/login?" + urlencode({"next": path})
                await RedirectResponse(login, status_code=303)(scope, receive, send)
                return
            code, message = "unauthorized", _refusal(headers, cookie=same, session_path=_session_path(path))
            if signature in _URL_CODES:
                code, message = _URL_CODES[signature], _url_refusal(signature, path)
            resp = error_response(401, code, message, {"WWW-Authenticate": "Bearer", **cors}, dialect=dialect)
            await resp(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Server-Timing: how long the server took to start answering (excludes the
                # network and the client), e.g. the cost of a 429 under a burst.
                dur = f"app;dur={1000 * (time.perf_counter() - started):.2f}"
                extra = [(k.lower().encode(), v.encode()) for k, v in cors.items()]
                message["headers"] = [*message.get("headers", []), *extra, (b"server-timing", dur.encode())]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _signature(self, scope: Scope, path: str) -> str | None:
        """What a GET of a result URL's signature says (UrlSigner.verdict): "valid" lets it in
        as one who sees that task (the signature covers the path, which names it), as a client
        of its own; "expired" and "invalid" name the refusal if no key lets it in instead;
        None: no signature to read."""
        if self.signer is None or scope["method"] not in ("GET", "HEAD"):
            return None
        verdict = self.signer.verdict(path, scope.get("query_string", b"").decode("latin-1"))
        if verdict == "valid":
            state = scope.setdefault("state", {})
            state[CLIENT_STATE] = "signed-url"
            state[PRINCIPAL_STATE] = SIGNED_URL
        return verdict

    def _authorized(self, scope: Scope, headers: dict[str, str], *, cookie: bool) -> Verdict:
        """A bearer key, or (`cookie`: on a same-origin request) the console's key cookie. An
        origin allowed by server.allowed_origins may call the API with a key of its own; the
        browser would send it the console's cookie too (SameSite counts a site, not a port),
        which must not stand in for one."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip() if scheme.lower() == "bearer" and token else ""
        if not given and cookie and _session_path(scope.get("path", "")):
            # The console's session (console_sessions): no key in it, nothing to guess with.
            session = cookie_key(headers.get("cookie", ""))
            found = self.sessions.principal(session) if self.sessions and session else None
            if found is None:
                return Verdict(False)
            state = scope.setdefault("state", {})
            state[PRINCIPAL_STATE], state[CLIENT_STATE] = found
            return Verdict(True, principal=found[0])
        if not given:
            return Verdict(False)  # no key at all: not a guess, nothing spent
        assert self.keys is not None
        verdict = self.keys.check(client_address(scope), given)
        if verdict.ok:
            # Who this request is from, for fairness across clients (deps.client_of): the
            # key it came in with, as a fingerprint; and whose tasks it sees (deps.viewer_of).
            state = scope.setdefault("state", {})
            state[CLIENT_STATE] = "key:" + key_fingerprint(given)[:16]
            state[PRINCIPAL_STATE] = verdict.principal
        return verdict


# What the console's session lets in (console_sessions): its pages and the calls they make.
# Any other web app on the host receives the cookie too; it gets no further than the console
# does: not /v1, the Ollama routes, /api/pull or /metrics.
SESSION_PATHS = ("/ui", "/api/models", "/ready", "/docs", "/redoc", "/openapi.json")
SESSION_PREFIXES = ("/ui/", "/api/console/", "/api/tasks/", "/docs/") + (
    ("/api/llm/", "/api/tts/", "/api/image/", "/api/chat/")  # the playground's
)
# Under those prefixes, what the console never calls: a list of tasks (as /api/tasks is not).
SESSION_CLOSED = frozenset({"/api/image/tasks"})


def _session_path(path: str) -> bool:
    if path in SESSION_CLOSED:
        return False
    return path == "/" or path in SESSION_PATHS or path.startswith(SESSION_PREFIXES)


def _refusal(headers: dict[str, str], *, cookie: bool, session_path: bool = True) -> str:
    """Why a request was refused. A client with a key to hand wants to know it was refused,
    not that one is needed; a console whose session ended, to log in again; a session on a
    route it does not open, that the route wants a key (logging in again would not help)."""
    scheme, _, sent = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and sent.strip():
        return "the API key sent is not one this server accepts"
    if cookie and not session_path and cookie_key(headers.get("cookie", "")):
        return (
            "the console's login opens the console's own routes only; this one needs "
            "'Authorization: Bearer <key>'"
        )
    if cookie and cookie_key(headers.get("cookie", "")):
        return (
            "the console's session has ended (logged out, expired, or the server's keys changed): "
            "log in again at /ui/login"
        )
    return "this server needs an API key: send 'Authorization: Bearer <key>'"


# A signed result URL that did not open (UrlSigner.verdict), as its error code.
_URL_CODES = {"expired": "url_expired", "invalid": "url_invalid"}


def _url_refusal(signature: str, path: str) -> str:
    """Why a signed result URL did not open, and where a fresh one comes from."""
    task_id = path.rstrip("/").rsplit("/", 1)[-1]
    why = "has expired" if signature == "expired" else "has a signature this server did not make"
    return (
        f"this result URL {why} (signed URLs open for an hour, and not after the API keys change); "
        f"GET /api/tasks/{task_id} with a key gives a fresh one, or send 'Authorization: Bearer <key>'"
    )


def _cookie_allowed(headers: dict[str, str]) -> bool:
    """Whether the console's cookie may stand in for a key: on this server's own pages, a
    navigation, or a client that sends no Fetch Metadata. A page on another port of the same
    host is the same site, to which SameSite=Strict sends the cookie: its <img> of an admin's
    result, or a no-cors fetch, went through as the logged-in operator."""
    site = headers.get("sec-fetch-site")
    return site in (None, "same-origin", "none") or headers.get("sec-fetch-mode") == "navigate"


def client_address(scope: Scope) -> str:
    """The peer's address (a reverse proxy's, behind one)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def throttled(retry_after_s: float, *, dialect: str, headers: dict[str, str] | None = None) -> Response:
    """429 for an address that spent its budget of wrong keys (ris.api.keys); `headers`: the
    request's CORS headers."""
    retry = str(max(1, math.ceil(retry_after_s)))
    return error_response(
        429,
        "too_many_wrong_keys",
        f"too many wrong API keys from this address; keys are not checked for {retry} s",
        # OpenAI's SDKs retry a 429 unless told not to: each retry one more guess.
        {"Retry-After": retry, "x-should-retry": "false", **(headers or {})},
        dialect=dialect,
    )


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _console_page(path: str, method: str, headers: dict[str, str]) -> bool:
    """A browser asking for a console page (or /, or the API's interactive pages, /docs and
    /redoc, which a session opens: they were a bare JSON 401 a browser cannot answer)."""
    page = path == "/ui" or path.startswith("/ui/") or path in ("/", "/docs", "/redoc")
    return page and method == "GET" and "text/html" in headers.get("accept", "")


def cookie_key(header: str) -> str:
    """The console's key from the Cookie header ('' when absent or unreadable)."""
    if KEY_COOKIE not in header:
        return ""
    # Read by hand, pair by pair, as Starlette's cookie_parser does: http.cookies gives up on
    # the whole header at one cookie it cannot parse (a space or JSON in its value), and a
    # browser sends this server every cookie of its host, any other app's on localhost too: the
    # console then lost its key and looped between its pages and the login form.
    for pair in header.split(";"):
        name, _, value = pair.partition("=")
        if name.strip() == KEY_COOKIE:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return unquote(value)
    return ""


# A header name (RFC 9110's token), and how many an allowed origin's preflight may name.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_MAX_ASKED_HEADERS = 32


def allowed_headers(asked: str) -> str:
    """What a preflight from an allowed origin may send: the key and the body's type, and the
    headers it asks for. The OpenAI SDK for JavaScript sends its X-Stainless-* headers with every
    request; a fixed list failed its preflight in the browser (Ollama's own bug, ollama#4388).
    An allowed origin is trusted with any request header: the key still decides what it may do."""
    names = ["Authorization", "Content-Type"]
    for name in (x.strip() for x in asked.split(",")[:_MAX_ASKED_HEADERS]):
        if _HEADER_NAME.match(name) and name.lower() not in ("authorization", "content-type"):
            names.append(name)
    return ", ".join(names)


async def _preflight(cors: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
    from starlette.responses import Response

    await Response(status_code=204, headers={**cors, "Access-Control-Max-Age": "600"})(scope, receive, send)


# The peers whose X-Forwarded-Proto is read (uvicorn's own default for proxy headers).
_LOOPBACK_PEERS = frozenset({"127.0.0.1", "::1"})


class ForwardedProto:
    """The scheme a reverse proxy on this machine says the client used (X-Forwarded-Proto from
    a loopback peer, as uvicorn's proxy headers took it), so that a console behind TLS sets its
    key cookie Secure and image URLs say https. X-Forwarded-For is not read: the client is the
    connection's peer (uvicorn runs with proxy_headers=False)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope.get("client") or ("",))[0] in _LOOPBACK_PEERS:
            for name, value in scope["headers"]:
                if name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").split(",")[0].strip().lower()
                    if proto in ("http", "https"):
                        scope = {**scope, "scheme": proto}
                    break
        await self.app(scope, receive, send)
