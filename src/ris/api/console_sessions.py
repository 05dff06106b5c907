"""The web console's login, as a session cookie that is not the API key.

The console's login form once set the key itself as its cookie. A browser sends a host's
cookies to every port of that host: another web app on the same machine (a dev server, a chat
UI, another user's service) received the operator's key in clear, good as a bearer key on every
route until the configuration changed, and logging out revoked nothing. An outside security
test showed it (2026-12-07).

The cookie is now a session: which key logged in (an id made with a secret, so it is no hash to
test guesses of the key against offline), until when, and an HMAC of both. It holds for
SESSION_TTL_S; changing `server.api_keys` ends every session (the secret covers the keys, as
result URLs' does), logging out ends that one (remembered in memory until its expiry: a restart
forgets the logout, not the expiry). Stateless otherwise: a restart keeps people logged in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping

from ris.runtime.tenancy import Principal

SESSION_TTL_S = 7 * 86400
PREFIX = "s1"
# Sessions logged out and not yet expired that are remembered (past it, the oldest first go).
MAX_REVOKED = 10_000


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
        self._revoked: dict[str, int] = {}  # a logged-out session's MAC -> its expiry

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
        expires = int(self._wall() + self.ttl_s)
        nonce = secrets.token_hex(8)
        return f"{PREFIX}.{kid}.{expires}.{nonce}.{self._mac(kid, expires, nonce)}"

    def principal(self, value: str) -> Principal | None:
        """Who a cookie's session is; None for anything else (expired, logged out, made by
        another secret, a key's own text as an old console's cookie held)."""
        opened = self._open(value)
        if opened is None:
            return None
        kid, expires, mac = opened
        if expires < self._wall() or mac in self._revoked:
            return None
        return self._by_id.get(kid)

    def revoke(self, value: str) -> None:
        """Log a session out (a value that is no session: nothing)."""
        opened = self._open(value)
        if opened is None:
            return
        _, expires, mac = opened
        now = self._wall()
        self._revoked = {m: e for m, e in self._revoked.items() if e >= now}
        while len(self._revoked) >= MAX_REVOKED:
            self._revoked.pop(next(iter(self._revoked)))
        self._revoked[mac] = expires

    def _open(self, value: str) -> tuple[str, int, str] | None:
        parts = value.split(".")
        if len(parts) != 5 or parts[0] != PREFIX:
            return None
        _, kid, expires, nonce, mac = parts
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12 and mac.isascii()):
            return None
        if not hmac.compare_digest(mac, self._mac(kid, int(expires), nonce)):
            return None
        return kid, int(expires), mac

    def _key_id(self, key: str) -> str:
        return hmac.new(self._secret, b"key\0" + key.encode(), hashlib.sha256).hexdigest()[:32]

    def _mac(self, kid: str, expires: int, nonce: str) -> str:
        return hmac.new(self._secret, f"{kid}\n{expires}\n{nonce}".encode(), hashlib.sha256).hexdigest()
