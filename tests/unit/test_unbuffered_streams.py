"""Streamed answers say not to buffer or cache them (ris.api.streams.UnbufferedStreams): nginx
buffers a proxied answer whole unless told, and /v1's streams said nothing."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive, Scope, Send

from ris.api.streams import UnbufferedStreams


def answered(*headers: tuple[bytes, bytes]) -> dict[bytes, bytes]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    asyncio.run(UnbufferedStreams(app)({"type": "http", "method": "POST", "path": "/"}, receive, send))
    return dict(sent[0]["headers"])


STREAMS = [b"text/event-stream", b"text/event-stream; charset=utf-8", b"application/x-ndjson", b"audio/mpeg"]


@pytest.mark.parametrize("kind", STREAMS)
def test_a_stream_says_not_to_buffer_or_cache_it(kind: bytes) -> None:
    got = answered((b"content-type", kind))
    assert got[b"x-accel-buffering"] == b"no" and got[b"cache-control"] == b"no-cache"


def test_what_a_route_said_is_kept_and_other_answers_are_left_alone() -> None:
    got = answered((b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"))
    assert got[b"cache-control"] == b"no-store" and got[b"x-accel-buffering"] == b"no"
    assert b"x-accel-buffering" not in answered((b"content-type", b"application/json"))
    # Audio of a set length (a file): cacheable, and no stream to keep unbuffered.
    assert b"x-accel-buffering" not in answered((b"content-type", b"audio/wav"), (b"content-length", b"44"))
