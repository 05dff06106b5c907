"""The throttle on guessing API keys (ris.api.keys), alone with a fake clock and through the
guard in memory: a budget of wrong keys per address, then 429s with the key unchecked."""

from __future__ import annotations

from collections import Counter

from starlette.types import Receive, Scope, Send

from ris.api.keys import FREE_WRONG_KEYS, NETWORK_SHARE, REFILL_S, KeyChecker, key_fingerprint
from ris.api.security import CLIENT_STATE, Guard

from .fakes import FakeClock
from .guarded import ok, through

KEY = "the-right-key"


def test_a_thousand_wrong_keys_from_one_address_get_ten_checks() -> None:
    clock = FakeClock()
    guard = Guard(ok, keys=KeyChecker([KEY], clock))
    statuses: Counter[int] = Counter()
    retry_after = set()
    for i in range(1000):
        status, headers = through(
            guard,
            "GET",
            "/api/stats",
            [("host", "localhost"), ("authorization", f"Bearer guess{i}")],
            client="10.0.0.7",
        )
        statuses[status] += 1
        if status == 429:
            retry_after.add(headers["retry-after"])
            # OpenAI's SDKs retry a 429 unless told not to: each retry one more guess.
            assert headers["x-should-retry"] == "false"
    assert statuses == {401: FREE_WRONG_KEYS, 429: 1000 - FREE_WRONG_KEYS}
    assert retry_after == {str(int(REFILL_S))}
    # Another address is not held back, and its right key passes at once.
    assert (
        through(
            guard,
            "GET",
            "/api/stats",
            [("host", "localhost"), ("authorization", f"Bearer {KEY}")],
            client="10.0.0.8",
        )[0]
        == 200
    )


def test_a_spent_address_is_not_checked_even_with_the_right_key() -> None:
    """A check would tell the guesser which key was right, at full speed."""
    clock = FakeClock()
    keys = KeyChecker([KEY], clock)
    for _ in range(FREE_WRONG_KEYS):
        assert not keys.check("a", "wrong").ok
    verdict = keys.check("a", KEY)
    assert not verdict.ok and verdict.retry_after_s == REFILL_S
    clock.advance(REFILL_S)  # one more try earned
    assert keys.check("a", KEY).ok


def test_the_budget_refills_and_a_full_bucket_is_forgotten() -> None:
    clock = FakeClock()
    keys = KeyChecker([KEY], clock, free=3, refill_s=10.0)
    for _ in range(3):
        keys.check("a", "wrong")
    assert keys.check("a", "wrong").retry_after_s == 10.0
    clock.advance(4.0)
    assert keys.check("a", "wrong").retry_after_s == 6.0
    clock.advance(6.0)
    assert keys.check("a", "wrong").ok is False  # the earned try, spent on a wrong key
    assert keys.check("a", "wrong").retry_after_s == 10.0
    clock.advance(30.0)
    assert keys.check("a", KEY).ok
    assert keys.clients() == 0  # refilled: nothing kept about "a"


def test_right_keys_and_missing_keys_spend_nothing() -> None:
    clock = FakeClock()
    keys = KeyChecker([KEY], clock, free=2)
    for _ in range(100):
        assert keys.check("a", KEY).ok
    assert keys.clients() == 0
    guard = Guard(ok, keys=keys)
    for _ in range(100):  # no key at all: 401, not a guess
        assert through(guard, "GET", "/api/stats", [("host", "localhost")], client="b")[0] == 401
    assert keys.clients() == 0


def test_the_table_of_addresses_is_bounded() -> None:
    keys = KeyChecker([KEY], FakeClock(), max_clients=100)
    for i in range(10_000):
        keys.check(f"10.{i // 256}.{i % 256}.1", "wrong")
    assert keys.clients() == 100


def test_a_key_the_address_showed_right_still_passes_when_its_budget_is_spent() -> None:
    """Behind one NAT, a client with a stale key must not lock the others out."""
    keys = KeyChecker([KEY], FakeClock())
    assert keys.check("nat", KEY).ok
    for _ in range(FREE_WRONG_KEYS):
        keys.check("nat", "stale")
    assert keys.check("nat", KEY).ok  # known here: passes, and tells a guesser nothing
    assert keys.check("nat", "another-guess").retry_after_s is not None


def test_every_key_an_address_used_rightly_passes_when_its_budget_is_spent() -> None:
    """Behind one reverse proxy every user has its address: a guesser there locked out all but
    the first four users whose keys it had seen (only four were kept per address)."""
    users = [f"user-{i}-key" for i in range(40)]
    keys = KeyChecker(users, FakeClock())
    assert all(keys.check("proxy", k).ok for k in users)
    for i in range(FREE_WRONG_KEYS):
        keys.check("proxy", f"guess{i}")
    assert keys.check("proxy", "guess").retry_after_s is not None  # spent
    assert all(keys.check("proxy", k).ok for k in users)
    for i in range(FREE_WRONG_KEYS):
        keys.check("elsewhere", f"guess{i}")
    assert keys.check("elsewhere", users[0]).retry_after_s is not None  # known per address only


def test_an_ipv6_site_spends_a_wider_budget_of_its_48() -> None:
    keys = KeyChecker([KEY], FakeClock())
    for i in range(FREE_WRONG_KEYS * NETWORK_SHARE):
        assert keys.check(f"2001:db8:1:{i + 1:x}::1", "guess").retry_after_s is None  # a /64 each
    assert keys.check("2001:db8:1:ffff::1", "guess").retry_after_s is not None  # the /48's spent
    assert keys.check("2001:db8:2::1", KEY).ok  # another /48


def test_an_ipv6_host_spends_the_budget_of_its_64() -> None:
    keys = KeyChecker([KEY], FakeClock())
    for i in range(FREE_WRONG_KEYS):
        keys.check(f"2001:db8:1:2::{i + 1:x}", "guess")  # a new address for every guess
    assert keys.check("2001:db8:1:2::ffff", "guess").retry_after_s is not None
    assert keys.check("2001:db8:1:3::1", KEY).ok  # another /64


def test_loopback_addresses_spend_one_budget_and_an_ipv4_24_a_wider_one() -> None:
    """A local process may send from any of 127/8: 10 wrong keys from each of 50 loopback
    addresses were 500 guesses at 350/s without one 429 (an outside security test). A host
    given many addresses of one /24 spends its network's wider budget; a neighbour on it keeps
    its own until that is gone (a review: one /24 budget locked whole offices out)."""
    keys = KeyChecker([KEY], FakeClock())
    for i in range(FREE_WRONG_KEYS):
        keys.check(f"127.0.9.{i + 2}", "guess")
    assert keys.check("127.0.9.200", "guess").retry_after_s is not None
    assert keys.check("::1", "guess").retry_after_s is not None
    spread = [keys.check(f"203.0.113.{i % 250 + 1}", "guess") for i in range(FREE_WRONG_KEYS * NETWORK_SHARE)]
    assert all(v.retry_after_s is None for v in spread)  # each address far from its own 10
    assert keys.check("203.0.113.251", "guess").retry_after_s is not None  # the /24's 100 spent
    assert keys.check("203.0.114.1", KEY).ok  # another /24
    keys = KeyChecker([KEY], FakeClock())
    for _ in range(FREE_WRONG_KEYS):
        keys.check("198.51.100.7", "guess")
    assert keys.check("198.51.100.7", "guess").retry_after_s is not None
    assert keys.check("198.51.100.8", KEY).ok  # its neighbour: its own budget


def test_the_guard_leaves_the_keys_fingerprint_for_fairness_never_the_key() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await ok(scope, receive, send)

    guard = Guard(app, keys=KeyChecker([KEY], FakeClock()))
    assert (
        through(guard, "GET", "/api/stats", [("host", "localhost"), ("authorization", f"Bearer {KEY}")])[0]
        == 200
    )
    client = seen[0]["state"][CLIENT_STATE]
    assert client == "key:" + key_fingerprint(KEY)[:16] and KEY not in client
