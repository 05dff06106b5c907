"""The formats responses are written in: JSON bodies, server-sent events and WAV headers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from fastapi.responses import FileResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ris.lanes.llm import TextDelta
from ris.runtime.views import TaskHandle


def to_json(content: Any) -> bytes:
    """Compact UTF-8 JSON, as the hot paths write it: orjson, a tenth of the standard
    library's cost per body (6.4 -> 0.5 us for a generation's answer, measured), paid once per
    answer and once per streamed token. A NaN or infinity becomes null (json.dumps writes
    `NaN`, which no JSON parser takes). What orjson refuses and JSON allows (an integer past 64
    bits, nesting past 254 levels: a model's tool arguments may hold either) is written by the
    standard library, rather than failing an answer that was generated."""
    try:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(content), status_code, headers, media_type="application/json")


def warnings_header(warnings: list[str]) -> dict[str, str]:
    """An answer's warnings where its body is not JSON (audio bytes): the `X-Warnings` header,
    a JSON array of strings, non-ASCII escaped (header values are Latin-1); none when empty."""
    return {"X-Warnings": json.dumps(warnings)} if warnings else {}


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event of the seed API's streams (a named event, JSON data)."""
    return b"event: " + name.encode() + b"\ndata: " + to_json(data) + b"\n\n"


def sse_data(obj: Any) -> bytes:
    """One unnamed server-sent event (OpenAI's stream format)."""
    return b"data: " + to_json(obj) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def texts(handle: TaskHandle[Any]) -> AsyncIterator[str]:
    """The text pieces of an LLM task as they come."""
    while (item := await handle.events.get()) is not None:
        if isinstance(item, TextDelta):
            yield item.text


class StreamBroken(Exception):
    """Raised by an audio body that already began, when what it was sending failed. Raw audio
    has no place for an error event: the server then closes the connection mid-body, so the
    client sees a truncated response (an error) rather than a clean end it would take for
    complete audio."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class BrokenStreamLog(logging.Filter):
    """uvicorn logs the StreamBroken that breaks an audio body off as "Exception in ASGI
    application" with a 40-line traceback, at ERROR: for a break that is the answer's designed
    end (its task failed, or the server stops). The record becomes one WARNING line, with the
    code and message; any other exception is left as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        broken = _broken(record.exc_info[1] if record.exc_info else None)
        if broken is not None:
            record.msg, record.args = "an audio stream was broken off mid-body: %s", (broken,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _broken(exc: BaseException | None) -> StreamBroken | None:
    """The StreamBroken `exc` is, or the one an exception group (anyio's, around a streaming
    body) holds as its only kind of exception."""
    if isinstance(exc, StreamBroken):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found = [_broken(e) for e in exc.exceptions]
        if found and all(f is not None for f in found):
            return found[0]
    return None


# A finished task's file (an image, a synthesis's audio) never changes: its id is its own. A
# browser keeps it (a page polling a task re-rendered its <img> with a fresh download each
# time); private: it may be one key's.
RESULT_CACHING = {"Cache-Control": "private, max-age=86400, immutable"}


class ResultFile(FileResponse):
    """A finished task's file (RESULT_CACHING's), answered 304 Not Modified, without the
    body, when the client's copy is this one: its `If-None-Match` names the file's ETag (or
    `*`), or, without one, its `If-Modified-Since` is not before the file's time. A page or a
    proxy revalidating an image got all of its bytes again each time."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stat_result is None:
            try:
                self.stat_result = await asyncio.to_thread(os.stat, self.path)
            except OSError:
                # Deleted since the route found it (DELETE /api/tasks/{id}, a retention sweep):
                # gone, as the next lookup answers. FileResponse's own answer was a 500.
                from ris.api.errors import error_response

                gone = error_response(404, "not_found", "the result file is no longer on disk")
                return await gone(scope, receive, send)
            self.set_stat_headers(self.stat_result)
        if not _current(Headers(scope=scope), self.headers, self.stat_result.st_mtime):
            return await super().__call__(scope, receive, send)
        kept = {k: v for k, v in self.headers.items() if k not in ("content-length", "content-type")}
        await Response(status_code=304, headers=kept)(scope, receive, send)


def _current(asked: Headers, said: MutableHeaders, mtime: float) -> bool:
    """Whether the client's copy is the file (RFC 9110 13.1.2 and 13.1.3: If-None-Match, a weak
    comparison, decides when present; If-Modified-Since only without it)."""
    tags = asked.get("if-none-match")
    if tags is not None:
        etag = said.get("etag", "").removeprefix("W/")
        return any(t.strip() == "*" or t.strip().removeprefix("W/") == etag for t in tags.split(","))
    since = asked.get("if-modified-since")
    if since is None:
        return False
    try:
        return int(mtime) <= parsedate_to_datetime(since).timestamp()
    except (TypeError, ValueError):  # not a date: ignored, as the RFC says
        return False


# Streamed answers whose parts must reach the client as they are made.
_STREAMED_TYPES = (b"text/event-stream", b"application/x-ndjson")


class UnbufferedStreams:
    """Every streamed answer (SSE, NDJSON, audio of no set length) says not to buffer or
    cache it: nginx buffers a
    proxied answer whole unless told `X-Accel-Buffering: no`, and a cache may keep an event
    stream, so tokens came all at the end behind a proxy. Said here once for every route
    (/v1's streams said neither, /api/llm/generate one of them), where a route left it unsaid."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_unbuffered(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                kind = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                kind = kind.split(b";")[0].strip().lower()
                audio = kind.startswith(b"audio/") and b"content-length" not in names
                if kind in _STREAMED_TYPES or audio:
                    if b"cache-control" not in names:
                        headers.append((b"cache-control", b"no-cache"))
                    if b"x-accel-buffering" not in names:
                        headers.append((b"x-accel-buffering", b"no"))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_unbuffered)
