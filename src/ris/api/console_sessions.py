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
bounded, never evicted, and in the data folder across restarts); changing `server.api_keys`
ends them all (the secret covers the keys, as result URLs' does). A restart keeps people logged
in.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ris.api.keys import key_fingerprint
from ris.runtime.tenancy import Principal

SESSION_TTL_S = 7 * 86400
PREFIX = "s1"
# The logouts, in the data folder: a restart forgot them, and a session another app on the
# host kept worked again after it.
LOGOUTS_FILE = "console_logouts.json"


class ConsoleSessions:
    def __init__(
        self,
        secret: bytes,
        principals: Mapping[str, Principal],
        wall: Callable[[], float] = time.time,
        ttl_s: float = SESSION_TTL_S,
        logouts: Path | None = None,
    ) -> None:
        """`secret`: made from the configured keys and the data folder's random key
        (`for_keys`); `principals`: each key and who it is (keys.key_principals); `logouts`:
        where the logouts are kept across restarts (none: in memory only)."""
        self._secret = secret
        self._wall = wall
        self.ttl_s = ttl_s
        self._ids = {key: self._key_id(key) for key in principals}
        self._by_id = {self._ids[key]: p for key, p in principals.items()}
        # The client a session counts as for fairness: its key's, as a bearer request's.
        self._clients = {self._ids[key]: "key:" + key_fingerprint(key)[:16] for key in principals}
        self._logouts_file = logouts
        # Key id -> the sessions made until then (ms) are ended: one entry per key, never evicted.
        self._logged_out: dict[str, int] = self._read_logouts()

    @classmethod
    def for_keys(
        cls, principals: Mapping[str, Principal], random_key: Callable[[], bytes], folder: Path | None = None
    ) -> ConsoleSessions | None:
        """The sessions of a server with these keys; None with none (no login then). `folder`:
        the data folder, where logouts are kept."""
        if not principals:
            return None
        material = b"\0".join(sorted(k.encode() for k in principals))
        secret = hmac.new(random_key(), b"console-session\0" + material, hashlib.sha256).digest()
        return cls(secret, principals, logouts=None if folder is None else folder / LOGOUTS_FILE)

    def issue(self, key: str) -> str:
        """The cookie value of a session for `key` (one of the configured keys)."""
        kid = self._ids[key]
        # After its key's last logout even where the clock stepped back since: such a session
        # would be ended at once.
        made = max(self._now_ms(), self._logged_out.get(kid, -1) + 1)
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
        """End the sessions of the key this one belongs to, made until now, this one included
        whatever the clock did since it was made (a value that is no session: nothing). Writes
        the data folder's file: call it off the event loop."""
        opened = self._open(value)
        if opened is None or opened[0] not in self._by_id:
            return
        kid, made = opened
        self._logged_out[kid] = max(self._now_ms(), made, self._logged_out.get(kid, -1))
        self._write_logouts()

    def _read_logouts(self) -> dict[str, int]:
        if self._logouts_file is None:
            return {}
        try:
            data = json.loads(self._logouts_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if k in self._by_id and isinstance(v, int)}

    def _write_logouts(self) -> None:
        """Atomically (a new file renamed over the old); a disk that refuses leaves the logout
        in memory, as before there was a file."""
        if self._logouts_file is None:
            return
        tmp = self._logouts_file.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._logged_out, f)
            os.replace(tmp, self._logouts_file)

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
