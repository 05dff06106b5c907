"""One request through the guard (ris.api.security) in memory, with an app behind it that
answers 200: what the guard lets through, refuses or redirects, before any route runs."""

from __future__ import annotations

import asyncio

from starlette.types import Message, Receive, Scope, Send

from ris.api.security import Guard


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    """The app behind the guard: 200 with an empty body."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def through(
    guard: Guard, method: str, path: str, headers: list[tuple[str, str]], client: str = "127.0.0.1"
) -> tuple[int, dict[str, str]]:
    """The status and headers the client gets for one request with these headers."""
    status, got, _ = through_body(guard, method, path, headers, client)
    return status, got


def through_body(
    guard: Guard, method: str, path: str, headers: list[tuple[str, str]], client: str = "127.0.0.1"
) -> tuple[int, dict[str, str], str]:
    """The status, headers and body the client gets for one request with these headers."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in headers],
        "client": (client, 50000),
    }
    asyncio.run(guard(scope, receive, send))
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return int(start["status"]), {k.decode(): v.decode() for k, v in start["headers"]}, body.decode()
