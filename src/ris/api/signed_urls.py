"""Image URLs that open without the API key, as OpenAI's do.

`/v1/images/generations` answers with URLs that chat UIs put in `<img src>` and download
without headers: behind `server.api_keys` every such URL answered 401. With keys configured,
the URL carries an expiry and an HMAC of its path and expiry (`?expires=...&signature=...`), so
it opens for anyone holding it, for URL_TTL_S (OpenAI's are valid for an hour), and for that
image only: the signature covers the path, whose last part is the task id.

The secret is derived from every configured key: nobody who lacks one of them can make a URL,
it needs no file of its own, a URL outlives a restart, and changing the keys revokes every URL
made before.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

SIGNED_PREFIX = "/api/image/result/"
URL_TTL_S = 3600


class UrlSigner:
    def __init__(
        self, secret: bytes, wall: Callable[[], float] = time.time, ttl_s: float = URL_TTL_S
    ) -> None:
        self._secret = secret
        self._wall = wall
        self.ttl_s = ttl_s

    @classmethod
    def for_keys(cls, keys: Iterable[str], wall: Callable[[], float] = time.time) -> UrlSigner | None:
        """The signer of a server with these API keys; None with none (URLs need no signature)."""
        material = sorted(k.encode() for k in keys)
        if not material:
            return None
        return cls(hashlib.sha256(b"ris signed urls\0" + b"\0".join(material)).digest(), wall)

    def sign(self, path: str) -> str:
        """`path` with the query that opens it until URL_TTL_S from now."""
        expires = int(self._wall() + self.ttl_s)
        return f"{path}?expires={expires}&signature={self._mac(path, expires)}"

    def opens(self, path: str, query: str) -> bool:
        """Whether a request's query signs its path and has not expired."""
        if not path.startswith(SIGNED_PREFIX):
            return False
        fields = parse_qs(query)
        expires, signature = fields.get("expires", [""])[-1], fields.get("signature", [""])[-1]
        if not (expires.isdigit() and len(expires) <= 12) or not signature or int(expires) < self._wall():
            return False
        return hmac.compare_digest(signature, self._mac(path, int(expires)))

    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()
