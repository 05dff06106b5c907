"""The console's side of the guard (ris.api.security) and of the models page: the session
cookie the login sets (never the key itself) lets in as its key would, a browser without it is
sent to the login form while API clients get a JSON 401, and the config shown hides secret
values."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from ris.api.console_sessions import ConsoleSessions
from ris.api.keys import KeyChecker, key_principals
from ris.api.routes.console import _after_login, redact
from ris.api.security import KEY_COOKIE, Guard

from .fakes import FakeClock
from .guarded import ok, through, through_body

KEY = "k3y;with=odd chars"
SESSIONS = ConsoleSessions.for_keys(key_principals([KEY]), lambda: bytes(range(32)))
assert SESSIONS is not None
SESSION = SESSIONS.issue(KEY)


def answer(
    path: str, *headers: tuple[str, str], method: str = "GET", origins: tuple[str, ...] = ()
) -> tuple[int, dict[str, str]]:
    guard = Guard(ok, keys=KeyChecker([KEY], FakeClock()), allowed_origins=origins, sessions=SESSIONS)
    return through(guard, method, path, [("host", "127.0.0.1:8080"), *headers])


def cookie(value: str) -> tuple[str, str]:
    return ("cookie", f"other=1; {KEY_COOKIE}={quote(value, safe='')}")


def test_the_login_cookie_is_a_session_not_the_key() -> None:
    """A browser sends a host's cookies to every port of it: a cookie holding the key gave it,
    in clear, to any other web app on the machine."""
    assert answer("/api/console/state", cookie(SESSION))[0] == 200
    assert KEY not in SESSION and quote(KEY, safe="") not in SESSION
    assert answer("/api/console/state", cookie(KEY))[0] == 401  # an old console's cookie: log in again
    assert answer("/api/console/state", cookie("wrong"))[0] == 401
    assert answer("/api/stats", ("authorization", f"Bearer {KEY}"))[0] == 200
    assert answer("/api/stats", ("authorization", f"Bearer {SESSION}"))[0] == 401  # not a key
    assert answer("/api/console/state", ("cookie", "ris_key"))[0] == 401  # unreadable: no key
    forged = SESSION.rsplit(".", 1)[0] + "." + "0" * 64
    assert answer("/api/console/state", cookie(forged))[0] == 401


def test_a_logout_outlives_a_restart_and_a_clock_stepping_back(tmp_path: Path) -> None:
    """A restart forgot the logouts (a session another app kept worked again); a session made
    before the clock stepped back outlived a logout after it (a review)."""
    clock = FakeClock()
    principals = key_principals([KEY])
    sessions = ConsoleSessions.for_keys(principals, lambda: bytes(32), tmp_path)
    assert sessions is not None
    sessions._wall = clock  # noqa: SLF001 - the wall clock, faked
    kept_elsewhere = sessions.issue(KEY)
    clock.advance(-60)  # the clock steps back, then the person logs out
    sessions.log_out(kept_elsewhere)
    assert sessions.principal(kept_elsewhere) is None
    assert sessions.principal(sessions.issue(KEY)) is not None  # a login after it still works
    restarted = ConsoleSessions.for_keys(principals, lambda: bytes(32), tmp_path)
    assert restarted is not None
    restarted._wall = clock  # noqa: SLF001
    assert restarted.principal(kept_elsewhere) is None


def test_a_session_ends_at_its_expiry_at_logout_and_when_the_keys_change() -> None:
    clock = FakeClock()
    sessions = ConsoleSessions.for_keys(key_principals([KEY, "other"]), lambda: bytes(32))
    assert sessions is not None
    sessions._wall = clock  # noqa: SLF001 - the wall clock, faked
    a, b, theirs = sessions.issue(KEY), sessions.issue(KEY), sessions.issue("other")
    found = sessions.principal(a)
    assert found is not None and found == sessions.principal(b)
    assert found[1].startswith("key:")  # the client a session counts as: its key's, as a bearer's
    clock.advance(1)
    sessions.log_out(a)  # every session of that key made until now, none of another key's
    assert sessions.principal(a) is None and sessions.principal(b) is None
    assert sessions.principal(theirs) is not None
    clock.advance(1)
    again = sessions.issue(KEY)  # a login after the logout
    assert sessions.principal(again) is not None
    clock.advance(sessions.ttl_s + 1)
    assert sessions.principal(again) is None
    changed = ConsoleSessions.for_keys(key_principals([KEY]), lambda: bytes(32))  # "other" removed
    assert changed is not None and changed.principal(changed.issue(KEY)) is not None
    assert changed.principal(sessions.issue(KEY)) is None


def test_a_session_lets_in_on_the_consoles_routes_only() -> None:
    """Any other web app on the host receives the cookie: with it, no further than the
    console goes (a review: a replayed session pulled models and rewrote config.json)."""
    for path in (
        "/ui/work",
        "/api/console/state",
        "/api/tasks/a1/cancel",
        "/api/llm/generate",
        "/ready",
        "/docs",
    ):
        assert answer(path, cookie(SESSION))[0] == 200, path
    refused = (
        "/api/pull",
        "/metrics",
        "/v1/models",
        "/api/generate",
        "/api/chat",
        "/api/tasks",
        "/api/image/tasks",  # a task list too, under the playground's prefix
        "/api/stats",
    )
    for path in refused:
        assert answer(path, cookie(SESSION))[0] == 401, path
        assert answer(path, ("authorization", f"Bearer {KEY}"))[0] == 200, path


def test_a_session_on_a_route_it_does_not_open_is_told_a_key_is_needed_there() -> None:
    """Not "log in again", which would not help (a review)."""
    guard = Guard(ok, keys=KeyChecker([KEY], FakeClock()), sessions=SESSIONS)
    status, _, body = through_body(guard, "GET", "/v1/models", [("host", "127.0.0.1:8080"), cookie(SESSION)])
    assert status == 401 and "opens the console's own routes only" in body


def test_another_apps_unparsable_cookie_does_not_hide_the_key() -> None:
    """A browser sends every cookie of the host (any app on localhost): one that Python's
    http.cookies cannot parse made it drop the whole header, and the console looped to its
    login form."""
    key = f"{KEY_COOKIE}={SESSION}"
    for header in (f'foo={{"a": 1}}; {key}', f"a=b c; {key}", f"{key}; a=b c", f'q="unterminated; {key}'):
        assert answer("/api/console/state", ("cookie", header))[0] == 200, header
    assert answer("/api/console/state", ("cookie", f'{KEY_COOKIE}="{SESSION}"'))[0] == 200  # quoted


def test_a_browser_without_the_key_goes_to_the_login_form_and_a_client_gets_401() -> None:
    status, headers = answer("/ui/work", ("accept", "text/html,application/xhtml+xml"))
    assert (status, headers["location"]) == (303, "/ui/login?next=%2Fui%2Fwork")  # and back after
    assert answer("/", ("accept", "text/html"))[0] == 303
    # The API's interactive pages, which a session opens: a browser was shown a JSON 401.
    status, headers = answer("/docs", ("accept", "text/html"))
    assert (status, headers["location"]) == (303, "/ui/login?next=%2Fdocs")
    assert answer("/docs", ("accept", "application/json"))[0] == 401
    assert answer("/ui/work", ("accept", "application/json"))[0] == 401
    assert answer("/api/console/state", ("accept", "text/html"))[0] == 401  # data, not a page
    assert answer("/ui/logout", method="POST")[0] == 200  # it only clears the cookie


def test_the_login_form_and_its_files_need_no_key() -> None:
    assert answer("/ui/login")[0] == 200
    assert answer("/ui/static/console.css")[0] == 200
    assert answer("/ui/staticky")[0] == 401


def test_the_config_shown_hides_secret_values() -> None:
    config = {
        "server": {"api_keys": ["a", "b"], "max_new_tokens": 4096, "allowed_hosts": []},
        "lanes": {"llm": {"models": {"m": {"options": {"hf_token": "hf_x", "n_ctx": 2048}}}}},
    }
    shown = redact(config)
    assert shown["server"] == {"api_keys": "<2 hidden>", "max_new_tokens": 4096, "allowed_hosts": []}
    assert shown["lanes"]["llm"]["models"]["m"]["options"] == {"hf_token": "<1 hidden>", "n_ctx": 2048}
    assert redact({"server": {"api_keys": []}}) == {"server": {"api_keys": []}}


def test_the_cookie_is_a_key_on_same_origin_requests_only() -> None:
    # An allowed origin on the same site (another port of localhost) gets the console's cookie
    # from the browser: it must bring a key of its own.
    other = ("origin", "http://127.0.0.1:3000")
    allowed = ("http://127.0.0.1:3000",)
    assert answer("/api/console/state", cookie(SESSION), other, origins=allowed)[0] == 401
    assert answer("/api/stats", ("authorization", f"Bearer {KEY}"), other, origins=allowed)[0] == 200
    assert answer("/api/console/state", cookie(SESSION), ("origin", "http://127.0.0.1:8080"))[0] == 200


def test_a_same_site_page_without_an_origin_header_does_not_get_in_by_the_cookie() -> None:
    """A page on another port of the same host sends no Origin with an <img> or a no-cors
    fetch, and SameSite=Strict sends it the console's cookie: an admin's result showed in its
    <img>. Fetch Metadata tells such a request from the console's own."""
    site = ("sec-fetch-site", "same-site")
    assert (
        answer("/api/image/result/" + "a" * 32, cookie(SESSION), site, ("sec-fetch-mode", "no-cors"))[0]
        == 401
    )
    assert answer("/api/tasks", cookie(SESSION), ("sec-fetch-site", "cross-site"))[0] == 401
    assert answer("/api/stats", ("authorization", f"Bearer {KEY}"), site)[0] == 200  # a key of its own
    # The console's own requests, a person's navigation, and clients without Fetch Metadata.
    assert answer("/api/console/state", cookie(SESSION), ("sec-fetch-site", "same-origin"))[0] == 200
    assert (
        answer("/ui/work", cookie(SESSION), ("sec-fetch-site", "none"), ("sec-fetch-mode", "navigate"))[0]
        == 200
    )
    assert answer("/ui/work", cookie(SESSION), site, ("sec-fetch-mode", "navigate"))[0] == 200
    assert answer("/api/console/state", cookie(SESSION))[0] == 200


def test_a_refusal_an_allowed_origin_gets_carries_its_cors_headers() -> None:
    """A wrong key from an allowed origin's page: the 401 (and the 429 after ten) came without
    Access-Control-Allow-Origin, so the browser hid it ("Failed to fetch"; the OpenAI SDK's
    "Connection error", retried, a guess spent each time)."""
    origin = ("origin", "http://127.0.0.1:3000")
    guard = Guard(ok, keys=KeyChecker([KEY], FakeClock()), allowed_origins=("http://127.0.0.1:3000",))
    headers = [("host", "127.0.0.1:8080"), origin, ("authorization", "Bearer wrong")]
    statuses = []
    for _ in range(12):
        status, got = through(guard, "GET", "/v1/models", headers)
        statuses.append(status)
        assert got["access-control-allow-origin"] == "http://127.0.0.1:3000", (status, got)
        assert "x-should-retry" in got["access-control-expose-headers"]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    # A foreign origin still gets no CORS headers with its 403.
    status, got = through(
        guard, "GET", "/v1/models", [("host", "127.0.0.1:8080"), ("origin", "http://evil.example")]
    )
    assert status == 403 and "access-control-allow-origin" not in got


def test_the_login_sends_a_person_back_only_to_a_console_page() -> None:
    """`next` is where the login form sends a person once in: a console page they came from,
    never another site or path (an open redirect a link could abuse)."""
    assert _after_login("/ui/work") == "/ui/work"
    assert _after_login("/ui/playground") == "/ui/playground"
    assert _after_login("/docs") == "/docs" and _after_login("/redoc") == "/redoc"  # a session opens them
    for asked in (
        None,
        "",
        "https://evil.example/",
        "//evil.example",
        "/ui/login",
        "/api/stats",
        "/ui/work?x",
    ):
        assert _after_login(asked) == "/ui", asked


def test_wide_patterns_keep_their_meaning() -> None:
    """ "http://*" and a "*" in the host's place match a host and port, as before the port's own
    rule (a review of the change)."""
    pattern = ("http://*", "https://*:8443", "http://localhost*")
    for origin, status in (
        ("http://localhost:3000", 200),
        ("https://[::1]:8443", 200),
        ("http://localhost:5173", 200),
        ("http://x@evil.example", 403),
    ):
        got = answer("/api/stats", ("authorization", f"Bearer {KEY}"), ("origin", origin), origins=pattern)
        assert got[0] == status, origin


def test_an_allowed_origin_may_be_a_pattern() -> None:
    """A web UI's port, or a webview's id, cannot always be listed: "http://localhost:*"."""
    pattern = ("http://localhost:*", "https://*.example.com", "http://[::1]:*")
    for origin, status in (
        ("http://localhost:5173", 200),
        ("http://[::1]:3000", 200),  # brackets as written (fnmatch read them as a class)
        ("http://1:3000", 403),
        ("https://app.example.com", 200),
        ("http://localhost.evil.example:80", 403),
        ("https://example.com.evil.example", 403),
        # A port is digits; "*" spans no "/", ":" or "@" (an outside security test's origins).
        ("http://localhost:3000.evil.com", 403),
        ("http://localhost:@evil.com", 403),
        ("http://localhost:x/evil", 403),
        ("https://evil.com/.example.com", 403),
        ("https://a.b.example.com", 200),
    ):
        got = answer("/api/stats", ("authorization", f"Bearer {KEY}"), ("origin", origin), origins=pattern)
        assert got[0] == status, origin


def test_an_operators_file_origin_is_compared_as_written() -> None:
    """`"allowed_origins": ["file://"]` was stored as "file:" (every "/" stripped) and matched
    no request; a request's "file://" is kept whole too, and "http://a.example/" is the origin
    without its slip of a "/"."""
    guard = Guard(ok, keys=KeyChecker([KEY], FakeClock()), allowed_origins=("file://", "http://a.example/"))
    for origin, allowed in (("file://", True), ("http://a.example", True), ("file:", False)):
        headers = [("host", "127.0.0.1:8080"), ("origin", origin), ("authorization", f"Bearer {KEY}")]
        status, _ = through(guard, "GET", "/v1/models", headers)
        assert (status == 200) is allowed, (origin, status)
