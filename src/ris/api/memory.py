"""The API process's memory ceiling (`server.memory_limit_mb`): over it, new work is refused.

Nothing the server does holds memory by a request's size any more (bodies are bounded, audio
streams from disk), so the ceiling is a safety net, not a budget: if the API process's
resident memory is over it, requests that would start work (POST) answer 503
`server_memory_full` with Retry-After until it is back under. Probes, reads (/health, /ready,
/metrics, stats, task lookups, results), cancels and the console's login still answer: they
are how an operator sees why, and how memory is given back. (The C allocator may keep memory
a spike freed: if the process stays over the ceiling with nothing running, restart it.)
The resident size is read at most every READ_INTERVAL_S (a psutil call), on the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from ris.api.errors import dialect_of, error_response

READ_INTERVAL_S = 0.25
RETRY_AFTER_S = 5
MIB = 2**20


_STATM = "/proc/self/statm"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def own_rss() -> int:
    """This process's resident size: on Linux one small read of /proc/self/statm (a fresh
    psutil.Process per reading cost the no-op POST path 5% of its samples), else psutil."""
    try:
        with open(_STATM, "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        rss: int = psutil.Process(os.getpid()).memory_info().rss
        return rss


def starts_work(method: str, path: str) -> bool:
    """A request that would take memory to serve: a POST, but a cancel, the console's login
    and logout (how an operator sees why, and gives memory back), or Ollama's POST /api/show
    (a model's facts: a read sent as a POST)."""
    if method != "POST" or path in ("/ui/login", "/ui/logout", "/api/show"):
        return False
    return not (path.endswith("/cancel") or path.startswith("/api/image/cancel/"))


class MemoryReading:
    """The process's resident size, read again once READ_INTERVAL_S has passed (pure but for
    the injected reader and clock)."""

    def __init__(self, read: Callable[[], int], clock: Callable[[], float]) -> None:
        self._read = read
        self._clock = clock
        self._at = float("-inf")
        self._bytes = 0

    def now(self) -> int:
        t = self._clock()
        if t - self._at >= READ_INTERVAL_S:
            self._bytes, self._at = self._read(), t
        return self._bytes


class MemoryCeiling:
    def __init__(self, app: ASGIApp, limit_mb: int, reading: MemoryReading) -> None:
        self.app = app
        self.limit = limit_mb * MIB
        self.reading = reading

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not self.limit
            or not starts_work(scope["method"], scope.get("path", ""))
        ):
            await self.app(scope, receive, send)  # reads, probes, cancels and the login always answer
            return
        rss = self.reading.now()
        if rss <= self.limit:
            await self.app(scope, receive, send)
            return
        resp = error_response(
            503,
            "server_memory_full",
            f"the server's API process holds {rss // MIB} MiB, over its ceiling of {self.limit // MIB} MiB "
            "(server.memory_limit_mb); new work is refused until it is back under",
            {"Retry-After": str(RETRY_AFTER_S)},
            dialect=dialect_of(scope),
        )
        await resp(scope, receive, send)
