"""The body-size guard (ris.api.app.BodyLimit) as plain ASGI: a chunked body over the limit gets
the same 413 as one with Content-Length, and no more than the limit and one chunk is read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.types import Message

from ris.api import app as app_module
from ris.api.app import BodyLimit
from ris.api.errors import HANDLERS

LIMIT = 10_000
CHUNK = 4_096


class Client:
    """Sends a body in chunks and records what the server answers."""

    def __init__(self, body: bytes) -> None:
        self.chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
        self.pulled = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.pulled == len(self.chunks):
            return {"type": "http.disconnect"}
        self.pulled += 1
        return {
            "type": "http.request",
            "body": self.chunks[self.pulled - 1],
            "more_body": self.pulled < len(self.chunks),
        }

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def error(self) -> dict[str, Any]:
        return dict(json.loads(self.sent[1]["body"])["error"])


class Text(BaseModel):
    text: str


def text_length_app() -> FastAPI:
    """The app behind the guard, a route with a body parameter as FastAPI parses it (FastAPI
    turns any exception while reading a body into a 400)."""
    app = FastAPI()
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)

    @app.post("/{path:path}")
    async def text_length(body: Text) -> int:
        return len(body.text)

    return app


APP = text_length_app()


def json_text(total: int) -> bytes:
    return b'{"text": "' + b"x" * (total - 12) + b'"}'


def request(total: int, length_header: bool, path: str = "/api/tts/synthesize") -> Client:
    body = json_text(total)
    client = Client(body)
    framing = (b"content-length", str(len(body)).encode()) if length_header else CHUNKED
    headers = [(b"content-type", b"application/json"), framing]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b""}
    asyncio.run(BodyLimit(APP, LIMIT)(scope, client.receive, client.send))
    return client


CHUNKED = (b"transfer-encoding", b"chunked")


def test_chunked_body_over_the_limit_is_413_read_no_further_than_one_chunk() -> None:
    client = request(10 * LIMIT, length_header=False)
    assert client.status == 413 and client.error["code"] == "body_too_large"
    assert str(LIMIT) in client.error["message"]
    assert client.pulled * CHUNK <= LIMIT + CHUNK


def test_chunked_and_content_length_bodies_over_the_limit_get_the_same_answer() -> None:
    chunked = request(LIMIT + 1, length_header=False)
    sized = request(LIMIT + 1, length_header=True)
    assert sized.pulled == 0
    assert (chunked.status, chunked.error) == (sized.status, sized.error)


def test_on_v1_the_413_is_in_openai_shape() -> None:
    client = request(LIMIT + 1, length_header=False, path="/v1/audio/speech")
    assert client.status == 413
    assert client.error["code"] == "body_too_large" and client.error["type"] == "invalid_request_error"


def test_bodies_within_the_limit_reach_the_app_whole() -> None:
    for length_header in (False, True):
        client = request(LIMIT, length_header)
        assert client.status == 200 and client.sent[1]["body"] == str(LIMIT - 12).encode()


class Stalling(Client):
    """Sends part of its body, then nothing (or leaves: `leaves`)."""

    def __init__(self, leaves: bool) -> None:
        super().__init__(b'{"text": "hal')
        self.leaves = leaves

    async def receive(self) -> Message:
        if self.pulled == 0:
            self.pulled = 1
            return {"type": "http.request", "body": self.chunks[0], "more_body": True}
        if self.leaves:
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        raise AssertionError("not reached")


def test_a_body_that_stops_arriving_is_a_408_and_one_whose_client_left_is_not_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Half a body and then nothing held its connection for ever (100 s seen), and the route
    reading it logged a 70-line traceback once the client left."""
    monkeypatch.setattr(app_module, "BODY_IDLE_TIMEOUT_S", 0.2)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/tts/synthesize",
        "headers": headers,
        "query_string": b"",
    }
    stalled = Stalling(leaves=False)
    asyncio.run(asyncio.wait_for(BodyLimit(APP, LIMIT)(scope, stalled.receive, stalled.send), 5))
    assert stalled.status == 408 and stalled.error["code"] == "body_timeout"
    assert "0.2 s" in stalled.error["message"]
    gone = Stalling(leaves=True)
    asyncio.run(BodyLimit(APP, LIMIT)(scope, gone.receive, gone.send))
    assert gone.sent == []  # no one to answer, and the route never ran on half a body


class Trickling(Client):
    """Sends a byte at a time, each well within the pause allowed, for ever."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def receive(self) -> Message:
        await asyncio.sleep(0.05)
        self.pulled += 1
        return {"type": "http.request", "body": b" ", "more_body": True}


def test_a_body_trickled_within_each_pause_still_ends_at_the_total_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A byte every 12 s (each pause under 20 s) held a keyed connection with no end."""
    monkeypatch.setattr(app_module, "BODY_TOTAL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(app_module, "BODY_MIN_RATE", LIMIT)  # the limit's body in a second: 1 s
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/tts/synthesize",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "query_string": b"",
    }
    slow = Trickling()
    asyncio.run(asyncio.wait_for(BodyLimit(APP, LIMIT)(scope, slow.receive, slow.send), 5))
    assert slow.status == 408 and slow.error["code"] == "body_timeout"
    assert "the whole arrive within 1 s" in slow.error["message"] and slow.pulled >= 3
    # A server that takes larger bodies gives them as long as the slowest pace allowed needs.
    assert BodyLimit(APP, 100 * LIMIT).total_s == 100
