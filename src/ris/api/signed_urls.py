"""Result URLs that open without the API key, as OpenAI's image URLs do.

`/v1/images/generations` answers with URLs that chat UIs put in `<img src>` and download
without headers, and the seed API's `audio_url` and `result_url` go into `<audio src>` and
`<img src>` as they are: behind `server.api_keys` every such URL answered 401. With keys
configured, the URL carries an expiry and an HMAC of its path and expiry
(`?expires=...&signature=...`), so it opens for anyone holding it, for URL_TTL_S (OpenAI's are
valid for an hour), and for that result only: the signature covers the path, whose last part
is the task id (not the rest of the query: `?format=mp3` of the same audio is the same audio).

The secret is an HMAC, under a random key kept in the data folder (`url_signing.key`, mode
0600), of every configured key: a URL outlives a restart, changing the keys revokes every URL
made before, and one who holds a URL learns nothing to test guesses of the API keys against
(a secret derived from the keys alone would let them, offline, past the wrong-key throttle).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import parse_qs, unquote

# The routes that serve a finished task's file, the only ones a signature opens.
SIGNED_PREFIXES = ("/api/image/result/", "/api/tts/audio/")
URL_TTL_S = 3600
EXPIRY_STEP_S = 600
KEY_FILE = "url_signing.key"
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def data_folder_key(folder: Path) -> bytes:
    """The data folder's random signing key, made (32 bytes, mode 0600) the first time."""
    path = folder / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    return key


class UrlSigner:
    def __init__(
        self, secret: bytes, wall: Callable[[], float] = time.time, ttl_s: float = URL_TTL_S
    ) -> None:
        self._secret = secret
        self._wall = wall
        self.ttl_s = ttl_s

    @classmethod
    def for_keys(
        cls, keys: Iterable[str], random_key: Callable[[], bytes], wall: Callable[[], float] = time.time
    ) -> UrlSigner | None:
        """The signer of a server with these API keys (`random_key`: the data folder's, asked for
        only when there are keys); None with none (URLs need no signature then)."""
        material = sorted(k.encode() for k in keys)
        if not material:
            return None
        return cls(hmac.new(random_key(), b"\0".join(material), hashlib.sha256).digest(), wall)

    def sign(self, url: str) -> str:
        """`url` (a path, and perhaps a query) with the fields that open it until URL_TTL_S
        from now."""
        path, _, query = url.partition("?")
        # Up to the next whole EXPIRY_STEP_S: the same result asked for again within it (a
        # page polling GET /api/tasks/{id}) gets the same URL, which the browser has cached.
        expires = math.ceil((self._wall() + self.ttl_s) / EXPIRY_STEP_S) * EXPIRY_STEP_S
        return f"{path}?{query + '&' if query else ''}expires={expires}&signature={self._mac(path, expires)}"

    def opens(self, path: str, query: str) -> bool:
        """Whether a request's query signs its path and has not expired."""
        return self.verdict(path, query) == "valid"

    def verdict(self, path: str, query: str) -> str | None:
        """ "valid"; "expired" (signed here, past its time); "invalid" (a signature this
        server did not make for this path); None: not a result route, or no signature."""
        if not path.startswith(SIGNED_PREFIXES):
            return None
        fields = parse_qs(query)
        if "signature" not in fields and "expires" not in fields:
            return None
        expires, signature = fields.get("expires", [""])[-1], fields.get("signature", [""])[-1]
        # ASCII digits and hex only: "²" is a digit to str.isdigit and not to int(), and
        # compare_digest refuses a str that is not ASCII (a 500 for anyone, no key needed).
        if not (_EXPIRES.fullmatch(expires) and _SIGNATURE.fullmatch(signature)):
            return "invalid"
        if not hmac.compare_digest(signature, self._mac(path, int(expires))):
            return "invalid"
        return "expired" if int(expires) < self._wall() else "valid"

    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


class _SignatureHidden(logging.Filter):
    """The access log's request line with a result URL's query as "REDACTED": the line is the
    URL, and anyone who read the log could open the image without a key for an hour. The whole
    query: its names and values may come percent-encoded (parse_qs reads them all the same)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):
            path, mark, query = args[2].partition("?")
            # Decoded: the log line is the raw path ("/api/image/%72esult/..." opens it too).
            if mark and (unquote(path).startswith(SIGNED_PREFIXES) or "signature" in unquote(query)):
                record.args = (*args[:2], f"{path}?REDACTED", *args[3:])
        return True


def opened_by_url(signer: UrlSigner | None, url: str) -> str:
    """A result URL as a response gives it: signed where keys are configured (`signer`),
    so that a browser's `<audio src>` or `<img src>` opens it; as it is where none are."""
    return url if signer is None else signer.sign(url)


def hide_signatures_in_access_log() -> None:
    """Install the filter on uvicorn's access logger, once per process."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _SignatureHidden) for f in logger.filters):
        logger.addFilter(_SignatureHidden())
