"""API keys and the throttle on guessing them: pure, with an injected clock.

Each client address has a budget of wrong keys, a token bucket: `free` wrong keys at full
speed, then one more every `refill_s` seconds. With the budget spent, the address's keys are
not checked at all (a check would tell a guesser whether the key was right, at full speed):
it is answered 429 with the seconds until its next try, until the bucket refills. A right key
costs nothing and is never delayed while the budget lasts, and one the address has already
shown to be right still passes when it is spent (a stale client behind the same NAT locks no
one else out); a request with no key is not a guess and costs nothing either. IPv6 addresses
spend the budget of their /64, and loopback addresses one budget. The addresses of one IPv4 /24
(an IPv6 /48) also spend a wider budget together (NETWORK_SHARE addresses' worth, refilled as
fast): a host given many addresses guesses no faster than that many hosts. The price: a host
with a few addresses there can keep that wider budget spent, and a neighbour's key not used
rightly from its address before then waits too. Behind a reverse proxy every
client has the proxy's address: the budget is then the proxy's, and the proxy should limit its
own clients.

A key is also who the request is (`Verdict.principal`, ris.runtime.tenancy): a named key
(`{"name", "key", "role"}`) is its name, with its role; a plain string key is an admin, owner
"key:" and the start of its fingerprint (so existing single-key setups see what they saw).

The table of addresses is bounded: an address whose bucket is full again is forgotten, and
past `max_clients` the longest-quiet address goes first, so no stream of addresses grows it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ris.config import NamedKey
from ris.runtime.tenancy import Principal

log = logging.getLogger("ris.security")

FREE_WRONG_KEYS = 10
REFILL_S = 6.0  # one more wrong key every 6 s: ten a minute
MAX_CLIENTS = 10_000


def key_fingerprint(key: str) -> str:
    """A key as it may be kept and logged: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_principals(entries: Iterable[str | NamedKey]) -> dict[str, Principal]:
    """Each configured key (server.api_keys) and who it is."""
    out: dict[str, Principal] = {}
    for entry in entries:
        if isinstance(entry, NamedKey):
            out[entry.key] = Principal(entry.name, admin=entry.role == "admin")
        else:
            # Plain strings are admins: a setup with keys from before named keys keeps seeing
            # every task (docs/DEPLOYMENT_GUIDE.md, Security).
            out[entry] = Principal("key:" + key_fingerprint(entry)[:16], admin=True)
    return out


def address_group(client: str) -> str:
    """The budget an address spends (and its open connections count against): its own for
    IPv4, its /64 for IPv6 (one host's share of a network, which it may fill with addresses),
    and every loopback address one (any local process may send from all of 127/8: an outside
    test sent 10 wrong keys from each of 50 of them, 350 guesses a second, without one 429)."""
    ip = _ip(client)
    if ip is None:
        return client
    if ip.is_loopback:
        return "loopback"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def network_group(client: str) -> str:
    """The wider budget many addresses of one network spend together (NETWORK_SHARE times an
    address's): an IPv4 address's /24, an IPv6 one's /48 (a site's: 65,536 /64s), else as
    address_group. One host with many addresses then guesses no faster than a few, and a
    neighbour on the network keeps its own budget until the network's is spent."""
    ip = _ip(client)
    if ip is None or ip.is_loopback:
        return address_group(client)
    return str(ipaddress.ip_network(f"{ip}/{48 if ip.version == 6 else 24}", strict=False))


def _ip(client: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class Verdict:
    ok: bool
    retry_after_s: float | None = None  # set when the address may not try now: answer 429
    principal: Principal | None = None  # who the key is, when ok


# How many addresses' budget of wrong keys the addresses of one IPv4 /24 share.
NETWORK_SHARE = 10


@dataclass
class _Bucket:
    tokens: float
    at: float  # when `tokens` was last brought up to date


class KeyChecker:
    def __init__(
        self,
        keys: Iterable[str | NamedKey],
        clock: Callable[[], float],
        *,
        free: int = FREE_WRONG_KEYS,
        refill_s: float = REFILL_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        principals = key_principals(keys)
        self.keys = [(k.encode(), p) for k, p in principals.items()]
        # Which key (its place in self.keys) a fingerprint is: what an address is known by.
        self._by_fingerprint = {key_fingerprint(k): i for i, k in enumerate(principals)}
        self._clock = clock
        self._free = free
        self._refill_s = refill_s
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # The keys (places in self.keys) each address has shown to be right: every one, since
        # many people may share an address (a NAT, the reverse proxy in front): at most the
        # configured keys per address, which no caller without a key can add to. (Four were
        # kept: behind one proxy a guesser locked out all users but the first four.)
        self._known: OrderedDict[str, set[int]] = OrderedDict()

    def check(self, client: str, given: str) -> Verdict:
        """Whether `given` (non-empty) is a key, for a request from address `client`."""
        network = network_group(client)
        client = address_group(client)
        bucket = self._bucket(client)
        wide = self._bucket(network, NETWORK_SHARE) if network != client else None
        spent = [
            (1 - b.tokens) * self._refill_s / share
            for b, share in ((bucket, 1), (wide, NETWORK_SHARE))
            if b is not None and b.tokens < 1
        ]
        if spent:
            # Unchecked, but for a key this address already showed to be right: that tells a
            # guesser nothing, and a stale client behind the same NAT locks no one else out.
            which = self._by_fingerprint.get(key_fingerprint(given))
            if which is not None and which in self._known.get(client, ()):
                return Verdict(True, principal=self.keys[which][1])
            return Verdict(False, max(spent))
        # Constant-time comparison against every key, all of them whichever matches: timing
        # reveals neither a prefix nor which key it was.
        found: int | None = None
        for i, (key, _) in enumerate(self.keys):
            if hmac.compare_digest(given.encode(), key):
                found = i
        if found is not None:
            self._remember(client, found)
            return Verdict(True, principal=self.keys[found][1])
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self._free), self._clock())
        if wide is None and network != client:
            wide = self._buckets[network] = _Bucket(float(self._free * NETWORK_SHARE), self._clock())
        self._bound()
        bucket.tokens -= 1
        if wide is not None:
            wide.tokens -= 1
            if wide.tokens < 1:
                log.warning(
                    "the addresses of %s sent %d wrong API keys; keys from there that were not "
                    "used rightly before go unchecked (429) for a while",
                    network,
                    self._free * NETWORK_SHARE,
                )
        if bucket.tokens < 1:
            # Logged once per lockout, with the address and never the key.
            log.warning(
                "%s sent %d wrong API keys; its keys go unchecked (429) for a while", client, self._free
            )
        return Verdict(False)

    def _bucket(self, client: str, share: int = 1) -> _Bucket | None:
        """`client`'s bucket brought up to date (`share`: a network's, that many addresses'
        budget, refilled as fast as theirs together); None while full."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return None
        now = self._clock()
        full = float(self._free * share)
        bucket.tokens = min(full, bucket.tokens + (now - bucket.at) * share / self._refill_s)
        bucket.at = now
        if bucket.tokens >= full:
            del self._buckets[client]  # all forgiven: nothing to remember
            return None
        self._buckets.move_to_end(client)
        return bucket

    def _bound(self) -> None:
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)

    def _remember(self, client: str, key: int) -> None:
        self._known.setdefault(client, set()).add(key)
        self._known.move_to_end(client)
        while len(self._known) > self._max_clients:
            self._known.popitem(last=False)

    def clients(self) -> int:
        """How many addresses and networks have spent some of their budget (bounded by
        max_clients)."""
        return len(self._buckets)
