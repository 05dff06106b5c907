"""The Host allow-list (ris.api.security): the address the server listens on is always served,
a wildcard address serves no Host of its own, IPv6 addresses match in any spelling."""

from __future__ import annotations

import pytest

from ris.api.security import Guard, served_hosts, wildcard_host_hint
from ris.config import Config

from .guarded import ok, through


def hosts_for(listen: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return served_hosts(Config.model_validate({"server": {"host": listen, "allowed_hosts": list(allowed)}}))


@pytest.mark.parametrize(
    ("listen", "name"),
    [
        ("127.0.0.2", "127.0.0.2"),
        ("192.168.1.5", "192.168.1.5"),
        ("::2", "[::2]"),
        ("fd00:0:0::7", "[fd00::7]"),
        ("[fd00::7]", "[fd00::7]"),
        ("Box.Example", "box.example"),
    ],
)
def test_the_listen_address_is_served(listen: str, name: str) -> None:
    assert name in hosts_for(listen)


@pytest.mark.parametrize("listen", ["0.0.0.0", "::", "[::]"])
def test_a_wildcard_address_serves_only_configured_hosts(listen: str) -> None:
    assert hosts_for(listen) == []
    assert hosts_for(listen, ("api.example",)) == ["api.example"]


def status(listen: str, host_header: str) -> int:
    guard = Guard(ok, allowed_hosts=hosts_for(listen))
    return through(guard, "GET", "/api/stats", [("host", host_header)])[0]


def test_guard_serves_requests_addressed_to_the_listen_address() -> None:
    assert status("127.0.0.2", "127.0.0.2:8080") == 200
    assert status("127.0.0.2", "127.0.0.1:8080") == 200  # loopback names stay served
    # An address written as one: no DNS rebinding sends it (a page that rebinds sends its
    # name); a client on the network that wrote the machine's address got 403.
    assert status("127.0.0.2", "127.0.0.3:8080") == 200
    assert status("::2", "[::2]:8080") == 200
    assert status("::2", "[0:0:0:0:0:0:0:2]:8080") == 200
    assert status("0.0.0.0", "192.168.1.5:8080") == 200
    assert status("0.0.0.0", "[fd00::7]:8080") == 200
    assert status("0.0.0.0", "evil.example") == 403
    # Names no public DNS answers: Docker's host.docker.internal (Open WebUI's set-up), *.localhost.
    assert status("127.0.0.1", "host.docker.internal:11434") == 200
    assert status("127.0.0.1", "app.localhost") == 200
    assert status("127.0.0.1", "localhost.evil.example") == 403
    assert status("127.0.0.1", "192.168.1.5.evil.example") == 403


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8301@evil.example", "localhost:80x", "[::1]:80@evil.example", "[::1]x", "127.0.0.1:"],
)
def test_a_host_with_more_than_a_port_after_the_name_is_refused(host: str) -> None:
    assert status("127.0.0.1", host) == 403


def test_a_request_with_two_host_headers_is_refused() -> None:
    """The allow-list read the last Host while the app built its URLs from the first: a signed
    image URL came back on evil.example (an outside security test). RFC 9112: 400."""
    guard = Guard(ok)
    two = [("host", "evil.example:80"), ("host", "127.0.0.1:8080")]
    assert through(guard, "GET", "/api/stats", two)[0] == 400
    assert through(guard, "GET", "/api/stats", two[1:])[0] == 200


def test_an_origin_of_another_scheme_is_another_origin() -> None:
    guard = Guard(ok)
    host = ("host", "127.0.0.1:8080")
    assert through(guard, "GET", "/api/stats", [host, ("origin", "http://127.0.0.1:8080")])[0] == 200
    for origin in ("ftp://127.0.0.1:8080", "chrome-extension://127.0.0.1:8080", "127.0.0.1:8080"):
        assert through(guard, "GET", "/api/stats", [host, ("origin", origin)])[0] == 403, origin


def test_a_preflight_is_allowed_the_header_names_it_asks_for_and_no_more() -> None:
    from ris.api.security import allowed_headers

    assert allowed_headers("") == "Authorization, Content-Type"
    assert allowed_headers("authorization, X-Stainless-OS ,x-stainless-lang") == (
        "Authorization, Content-Type, X-Stainless-OS, x-stainless-lang"
    )
    # Not header names (a value smuggled in, a space, a line break) are left out.
    assert allowed_headers("x-ok, bad name, a\r\nSet-Cookie: x, x:y") == "Authorization, Content-Type, x-ok"
    assert allowed_headers(",".join(f"x-{i}" for i in range(100))).count(",") == 1 + 32


def test_a_wildcard_address_without_allowed_hosts_is_said_at_start() -> None:
    """host 0.0.0.0 and no allowed_hosts: every client on the network that wrote the machine's
    address got 403 host_not_allowed, and the log said nothing at start to explain it."""

    def hint(listen: str, allowed: tuple[str, ...] = ()) -> str | None:
        config = Config.model_validate({"server": {"host": listen, "allowed_hosts": list(allowed)}})
        return wildcard_host_hint(config, ["box", "127.0.0.1", "192.168.1.5"])

    said = hint("0.0.0.0")
    assert said is not None and "server.allowed_hosts" in said and "403 host_not_allowed" in said
    assert '["box"]' in said  # this machine's own names (its addresses are served)
    assert hint("::") is not None
    assert hint("0.0.0.0", ("box",)) is None and hint("0.0.0.0", ("*",)) is None
    assert hint("127.0.0.1") is None and hint("192.168.1.5") is None  # its own address is served
