"""The web console's login, as a session cookie that is not the API key.

The console's login form once set the key itself as its cookie. A browser sends a host's
cookies to every port of that host: another web app on the same machine (a dev server, a chat
UI, another user's service) received the operator's key in clear, good as a bearer key on every
route until the configuration changed, and logging out revoked nothing. An outside security
test showed it (2026-12-07).

The cookie is now a session: which key logged in (an id made with a secret, so it is no hash to
test guesses of the key against offline), when, and an HMAC of both. What such an app receives
still lets it in as that key for as long as the session lasts, so a session is bounded: it lets
in on the console's own routes only (SESSION_PATHS, Guard), never on /v1, the Ollama routes,
/api/pull or /metrics; it lasts SESSION_TTL_S at most, and the browser forgets it when it
closes (no Max-Age); logging out ends every session of that key made until then (kept per key:
bounded, never evicted; a restart forgets it, not the expiry); changing `server.api_keys` ends
them all (the secret covers the keys, as result URLs' does). Stateless otherwise: a restart keeps
people logged in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping

from ris.api.keys import key_fingerprint
from ris.runtime.tenancy import Principal

SESSION_TTL_S = 7 * 86400
PREFIX = "s1"


class ConsoleSessions:
    def __init__(
        self,
        secret: bytes,
        principals: Mapping[str, Principal],
        wall: Callable[[], float] = time.time,
        ttl_s: float = SESSION_TTL_S,
    ) -> None:
        """`secret`: made from the configured keys and the data folder's random key
        (`for_keys`); `principals`: each key and who it is (keys.key_principals)."""
        self._secret = secret
        self._wall = wall
        self.ttl_s = ttl_s
        self._ids = {key: self._key_id(key) for key in principals}
        self._by_id = {self._ids[key]: p for key, p in principals.items()}
        # The client a session counts as for fairness: its key's, as a bearer request's.
        self._clients = {self._ids[key]: "key:" + key_fingerprint(key)[:16] for key in principals}
        self._logged_out: dict[str, int] = {}  # key id -> sessions made until then (ms) ended

    @classmethod
    def for_keys(
        cls, principals: Mapping[str, Principal], random_key: Callable[[], bytes]
    ) -> ConsoleSessions | None:
        """The sessions of a server with these keys; None with none (no login then)."""
        if not principals:
            return None
        material = b"\0".join(sorted(k.encode() for k in principals))
        secret = hmac.new(random_key(), b"console-session\0" + material, hashlib.sha256).digest()
        return cls(secret, principals)

    def issue(self, key: str) -> str:
        """The cookie value of a session for `key` (one of the configured keys)."""
        kid = self._ids[key]
        made = self._now_ms()
        nonce = secrets.token_hex(8)
        return f"{PREFIX}.{kid}.{made}.{nonce}.{self._mac(kid, made, nonce)}"

    def principal(self, value: str) -> tuple[Principal, str] | None:
        """Who a cookie's session is, and the client it counts as; None for anything else
        (expired, logged out, made by another secret, a key's own text as an old console's
        cookie held)."""
        opened = self._open(value)
        if opened is None:
            return None
        kid, made = opened
        if made + self.ttl_s * 1000 < self._now_ms() or made <= self._logged_out.get(kid, -1):
            return None
        principal = self._by_id.get(kid)
        return None if principal is None else (principal, self._clients[kid])

    def log_out(self, value: str) -> None:
        """End the sessions of the key this one belongs to, made until now (a value that is no
        session: nothing)."""
        opened = self._open(value)
        if opened is not None and opened[0] in self._by_id:
            self._logged_out[opened[0]] = self._now_ms()

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    def _open(self, value: str) -> tuple[str, int] | None:
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != PREFIX:
            return None
        _, kid, made, nonce, mac = parts
        if not (made.isascii() and made.isdigit() and len(made) <= 15 and mac.isascii()):
            return None
        if not hmac.compare_digest(mac, self._mac(kid, int(made), nonce)):
            return None
        return kid, int(made)

    def _key_id(self, key: str) -> str:
        return hmac.new(self._secret, b"key\0" + key.encode(), hashlib.sha256).hexdigest()[:32]

    def _mac(self, kid: str, made: int, nonce: str) -> str:
        return hmac.new(self._secret, f"{kid}\n{made}\n{nonce}".encode(), hashlib.sha256).hexdigest()
