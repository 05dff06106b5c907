"""HTTP answers counted by status code, for /metrics: a 400, 404 or 422 was in the access log
only (the task counters see no request refused before it became a task), and an operator's
alert on a client sending bad requests, or on 5xx answers, had nothing to read.

A probe's expected answers (GET or HEAD of /health, /ready, /metrics answered 2xx, and /ready's
503 "not ready") are not counted: its status is the probe's answer, not a failure. A load
balancer polling /ready while a worker restarted made the 5xx alert go off at every start and
restart (18 answers 503 before one server was ready). A probe refused (401, 403) or failing
(500) is counted as any answer."""

from __future__ import annotations

from collections import Counter

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ris.api.access_log import PROBE_PATHS

# The statuses an operator's alerts watch (a full queue, the server's own failures): their series
# start at 0 on each listener, so `increase()` sees the first one (a series born at 1 shows none).
ALERTED_STATUSES = ("429", "500", "502", "503", "504", "507")


class ResponseCounts:
    """Counts each answer's status in `counts`, keyed (listener, status code): the main port's
    as "main", the Ollama listener's as "ollama". Outermost, so refusals of the guards count."""

    def __init__(self, app: ASGIApp, counts: Counter[tuple[str, str]], listener: str) -> None:
        self.app = app
        self.counts = counts
        self.listener = listener

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        probe = scope["method"] in ("GET", "HEAD") and scope["path"] in PROBE_PATHS
        ready = scope["path"] == "/ready"
        started = False

        async def counted(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if not (probe and (200 <= status < 300 or (ready and status == 503))):
                    self.counts[(self.listener, str(status))] += 1
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            # A defect's 500 is sent by Starlette's error middleware, outside this one: counted
            # here, where the exception passes on its way there.
            if not started:
                self.counts[(self.listener, "500")] += 1
            raise
