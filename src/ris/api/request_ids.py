"""Every answer names itself in `x-request-id`, errors included.

OpenAI's SDKs read the header into `_request_id` and into the exceptions they raise, and it is
what a user quotes in a report. A task's answer carries its task id there (routes set it); an
answer with no task (a 404, a refused body, a defect's 500) had none, so a report of a failure
named nothing an operator could find. Such an answer gets a fresh id, and a defect's 500 logs
the same id beside its traceback (errors._internal_error).
"""

from __future__ import annotations

import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Where the request's id is kept in its ASGI scope, for the error handlers.
REQUEST_ID = "ris.request_id"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def request_id(scope: Scope) -> str:
    """The id this request's answer is sent under (a fresh one outside the middleware)."""
    rid = scope.get(REQUEST_ID)
    if not isinstance(rid, str):
        rid = scope[REQUEST_ID] = new_request_id()
    return rid


class RequestIds:
    """Adds `x-request-id` to each HTTP answer that has none: the task's id where the answer
    names a task (X-Task-Id), else the request's own; `X-Content-Type-Options: nosniff`; and
    `Cache-Control: no-store` on JSON that says nothing of its caching.
    Outside the guards, so that their refusals carry both."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["x-request-id"] = headers.get("x-task-id", rid)
                # Every answer is what its type says: a browser sniffing an error's JSON (which
                # echoes what was asked: a model's name, a Host) as HTML would run what it names.
                if "x-content-type-options" not in headers:
                    headers["x-content-type-options"] = "nosniff"
                # JSON is live state (a task's view with its signed result URL, a user's list):
                # never kept by a shared cache or a browser's, unless its route says otherwise.
                if "cache-control" not in headers and headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, named)
