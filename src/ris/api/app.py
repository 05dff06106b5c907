"""The ASGI application: routes, error handlers, a body-size guard and the engine's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic.json_schema import models_json_schema
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ris import __version__
from ris.api.access_log import quiet_probes_in_access_log
from ris.api.chart_history import ChartHistory
from ris.api.console_sessions import ConsoleSessions
from ris.api.console_state import keep_chart_history
from ris.api.deps import DOCUMENTED_BODIES
from ris.api.errors import HANDLERS, OLLAMA_ONLY, dialect_of, error_response
from ris.api.keys import KeyChecker, key_principals
from ris.api.memory import MemoryCeiling, MemoryReading, own_rss
from ris.api.request_ids import RequestIds
from ris.api.response_counts import ALERTED_STATUSES, ResponseCounts
from ris.api.routes import (
    console,
    docs,
    image,
    llm,
    ollama,
    ollama_models,
    openai_media,
    openai_other,
    openai_text,
    ops,
    speak,
    tasks,
    tts,
)
from ris.api.schemas import ErrorBody
from ris.api.security import OLLAMA_ORIGINS, ForwardedProto, Guard, served_hosts
from ris.api.signed_urls import UrlSigner, data_folder_key, hide_signatures_in_access_log
from ris.api.streams import BrokenStreamLog, UnbufferedStreams
from ris.config import Config
from ris.runtime.engine import Engine
from ris.services import speech_encoding

# Every route module's router; this order is that of the paths in the OpenAPI schema (and so in
# docs/API_REFERENCE.md).
ROUTERS: tuple[APIRouter, ...] = tuple(
    m.router
    for m in (
        llm,
        tts,
        image,
        speak,
        tasks,
        ops,
        openai_text,
        openai_media,
        openai_other,
        ollama,
        ollama_models,
        docs,
        console,
    )
)
# The image result route, for the URLs the listener's /v1/images/generations answers with.
_LISTENER_IMAGES = APIRouter(include_in_schema=False)
# HEAD as on the main port (a browser or a proxy asking the type and length first): it was 405.
_LISTENER_IMAGES.add_api_route("/api/image/result/{task_id}", image.image_result, methods=["GET", "HEAD"])
# What the Ollama listener (server.ollama_port) serves: the Ollama API, and the OpenAI API under
# /v1 as Ollama serves it on its port (tools set up for Ollama use http://localhost:11434/v1).
OLLAMA_ROUTERS: tuple[APIRouter, ...] = (
    ollama.router,
    ollama_models.router,
    ollama_models.listener_router,
    openai_text.router,
    openai_media.router,
    openai_other.router,
    _LISTENER_IMAGES,
)


# How long a request body may pause between two of its pieces: past it the request is answered
# 408 `body_timeout` (a body that stopped half-way held its connection for ever, and the route
# reading it logged a traceback when the client finally left).
BODY_IDLE_TIMEOUT_S = 20.0
# How long a whole request body may take: a byte every 12 s kept a keyed connection open with
# no end (each pause within the one above). At the default max_body_bytes (1 MB), 8 KB/s; a
# server that takes larger bodies gives them as long as that pace needs (BODY_MIN_RATE).
BODY_TOTAL_TIMEOUT_S = 120.0
BODY_MIN_RATE = 8192  # bytes a second


class BodyLimit:
    """Refuse request bodies over the limit with 413 `body_too_large`, never reading more than
    the limit (and one chunk) into memory, and bodies that stall with 408 `body_timeout`.

    With Content-Length the header decides the size before anything is read. Every body is
    read here, up to the limit, each piece within BODY_IDLE_TIMEOUT_S of the last and the whole
    within BODY_TOTAL_TIMEOUT_S, and handed
    on whole: refused from inside the app instead, as a route read it, FastAPI's body parsing
    turned the refusal into a 400 'error parsing the body'. A client that leaves before its
    body ends is not answered, and no route sees half a body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.total_s = max(BODY_TOTAL_TIMEOUT_S, max_bytes / BODY_MIN_RATE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        if b"transfer-encoding" not in headers and length in (None, b"0"):
            await self.app(scope, receive, send)  # no body
            return
        body = bytearray()
        loop = asyncio.get_running_loop()
        whole_by = loop.time() + self.total_s
        while True:
            piece_by = min(loop.time() + BODY_IDLE_TIMEOUT_S, whole_by)
            try:
                async with asyncio.timeout_at(piece_by):  # no task per piece, as wait_for made
                    message = await receive()
            except TimeoutError:
                await self._stalled(scope, receive, send)
                return
            if message["type"] != "http.request":
                return  # the client left before its body ended: no one to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _stalled(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(
            408,
            "body_timeout",
            f"the request body stopped arriving: each part must follow the last within "
            f"{BODY_IDLE_TIMEOUT_S:g} s, and the whole arrive within {self.total_s:g} s",
            {"Connection": "close"},
            dialect=dialect_of(scope),
        )
        await resp(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        resp = error_response(
            413,
            "body_too_large",
            f"request bodies are limited to {self.max_bytes} bytes (server.max_body_bytes)",
            dialect=dialect_of(scope),
        )
        await resp(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read ahead as one message, then the client's own
    (a stream learns of a disconnect from it)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _document_bodies(app: FastAPI) -> None:
    """Add the schemas of bodies that routes parse themselves (deps.json_body) to OpenAPI."""
    make_default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = make_default()
            _, defs = models_json_schema(
                [(m, "validation") for m in DOCUMENTED_BODIES], ref_template="#/components/schemas/{model}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            _document_body_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_body_errors(schema: dict[str, Any]) -> None:
    """What any operation that takes a body may answer besides its own list: 408
    `body_timeout` (BodyLimit: the body stopped coming) and 507 (the work it queues found the
    disk full, `storage_full`, or its model's GPU budget short, `gpu_out_of_memory`), in the
    shape of the operation's other errors (Ollama's on its routes)."""
    for operation in (op for item in schema.get("paths", {}).values() for op in item.values()):
        if not isinstance(operation, dict) or "requestBody" not in operation:
            continue
        answers = operation.setdefault("responses", {})
        shape = answers.get("422") or answers.get("400")
        if shape is not None:
            for code in ("408", "507"):
                answers.setdefault(code, shape)


def create_app(
    config: Config,
    engine: Engine | None = None,
    config_path: Path | None = None,
    ollama_sockets: list[socket.socket] | None = None,
) -> FastAPI:
    """`config_path`: the file the config was read from, where /api/pull adds what it pulls.
    `ollama_sockets`: server.ollama_port bound already (`bind_ollama_port`; else it is bound
    once the engine has started)."""
    eng = engine or Engine(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=speech_encoding.preload, name="ris-preload-av", daemon=True).start()
        await eng.start()
        charts = asyncio.create_task(keep_chart_history(eng, app.state.charts))
        try:
            async with _ollama_listener(app):
                yield
        finally:
            charts.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await charts
            await eng.stop()

    app = FastAPI(
        title="RIS: Resource Isolation Scheduler",
        version=__version__,
        description="LLM, TTS and image lanes, each in its own worker process bound to its "
        "own resources, behind one scheduler.",
        lifespan=lifespan,
        # FastAPI's pages load Swagger UI and ReDoc from a CDN; routes/docs.py serves them here.
        docs_url=None,
        redoc_url=None,
        # Every operation may answer these, in the error shape (OpenAI's on /v1).
        responses={code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 422, 429, 500, 503, 504)},
    )
    app.state.engine = eng
    app.state.responses = Counter()  # (listener, status code): HTTP answers, for /metrics
    _quiet_broken_streams()
    # The console's charts over the last 15 minutes, sampled while the server runs.
    app.state.charts = ChartHistory(time.time, ticker=time.monotonic)
    app.state.config_path = config_path
    app.state.ollama_sockets = ollama_sockets
    # One checker for the API, the console's login and the Ollama listener: one budget of
    # wrong keys per address.
    app.state.keys = KeyChecker(config.server.api_keys, time.monotonic)
    app.state.url_signer = UrlSigner.for_keys(
        key_principals(config.server.api_keys), lambda: data_folder_key(Path(config.data_dir))
    )
    app.state.sessions = ConsoleSessions.for_keys(
        key_principals(config.server.api_keys),
        lambda: data_folder_key(Path(config.data_dir)),
        Path(config.data_dir),
    )
    hide_signatures_in_access_log()
    if not config.server.log_probes:
        quiet_probes_in_access_log()
    _serve(app, config, ROUTERS)
    _document_bodies(app)
    return app


def _quiet_broken_streams() -> None:
    """One WARNING line, not an ERROR traceback, for an audio body broken off by design."""
    log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, BrokenStreamLog) for f in log.filters):
        log.addFilter(BrokenStreamLog())


def _serve(app: FastAPI, config: Config, routers: tuple[APIRouter, ...]) -> None:
    """The routers, error handlers and guards of an app (the main one, or the Ollama listener's)."""
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    for router in routers:
        app.include_router(router)
    reading = MemoryReading(own_rss, time.monotonic)
    app.add_middleware(UnbufferedStreams)
    app.add_middleware(BodyLimit, max_bytes=config.server.max_body_bytes)
    # Outside the body's read-ahead: a server over its memory ceiling refuses a POST before
    # it buffers the body.
    app.add_middleware(MemoryCeiling, limit_mb=config.server.memory_limit_mb, reading=reading)
    # Added last, so it runs first: nothing is parsed for a request it refuses.
    srv = config.server
    app.add_middleware(
        Guard,
        keys=app.state.keys,
        allowed_hosts=served_hosts(config),
        allowed_origins=srv.allowed_origins,
        # The Ollama listener lets in the origins Ollama does by default (a local web UI, an
        # editor's webview, a desktop app): its clients expect it, as they expect port 11434.
        default_origins=OLLAMA_ORIGINS if getattr(app.state, OLLAMA_ONLY, False) else (),
        signer=app.state.url_signer,
        # The console's sessions let in on the main port only: the Ollama listener has no
        # console, and its routes are none a session opens.
        sessions=None if getattr(app.state, OLLAMA_ONLY, False) else app.state.sessions,
    )
    app.add_middleware(ForwardedProto)  # the scheme a local TLS proxy says, before anything reads it
    app.add_middleware(RequestIds)  # outside the guards: their refusals are named too
    # Outermost: every answer counted, the guards' refusals too (one counter for both ports).
    listener = "ollama" if getattr(app.state, OLLAMA_ONLY, False) else "main"
    app.add_middleware(ResponseCounts, counts=app.state.responses, listener=listener)
    for code in ALERTED_STATUSES:  # from 0: an alert on their increase sees the first one
        app.state.responses.setdefault((listener, code), 0)


def create_ollama_app(main: FastAPI) -> FastAPI:
    """The Ollama listener's app: the Ollama routes at the root, as Ollama's clients expect
    them on port 11434, and the OpenAI routes under /v1, over the main app's engine, keys and
    config, behind the same guards. Every answer outside /v1, errors included, is in Ollama's
    shape (errors.OLLAMA_ONLY)."""
    engine: Engine = main.state.engine
    app = FastAPI(
        title="RIS: Ollama API", version=__version__, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.engine = engine
    app.state.config_path = main.state.config_path
    app.state.keys = main.state.keys
    app.state.url_signer = main.state.url_signer
    app.state.sessions = main.state.sessions
    app.state.responses = main.state.responses
    setattr(app.state, OLLAMA_ONLY, True)
    _serve(app, engine.config, OLLAMA_ROUTERS)
    return app


def bind_ollama_port(config: Config) -> list[socket.socket]:
    """server.ollama_port's sockets, bound as the main port's are, one per address server.host
    names (none when it is off). `ris serve` binds them first of all, so a port in use is one
    line before any worker starts (OSError)."""
    srv = config.server
    return [] if srv.ollama_port is None else bind_port(srv.host, srv.ollama_port)


def bind_main_port(config: Config) -> list[socket.socket]:
    """server.port's sockets, bound (bind_port). `ris serve` binds them before the app starts:
    uvicorn runs the app's startup (every lane's worker, its models loaded) before it binds,
    so a port in use was found only after all that (OSError)."""
    return bind_port(config.server.host, config.server.port)


def bind_port(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to `port`, one per address `host` names (a name such as localhost: its
    IPv4 and IPv6 ones), as uvicorn's own binding would make them. With port 0, every address
    gets the one port the OS chose for the first."""
    host = host.strip("[]")
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):  # in order, once each
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this system cannot open: its other addresses serve
                continue
            sockets.append(sock)
            if os.name == "posix":  # as asyncio: a port left in TIME_WAIT by a restart is free
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio: IPv4 on its own socket, never mapped
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                # Bound, not listening: until uvicorn listens, once the workers have started,
                # a client is refused at once, as before, not left waiting in the backlog.
                sock.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL and len(infos) > 1:
                    sockets.pop().close()  # ::1 where IPv6 is off: the other addresses serve
                    continue
                raise
        if not sockets:
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def http_parser(config: Config) -> str:
    """uvicorn's `http` for server.http_parser: "auto" is httptools when it is installed (its C
    parser costs the event loop less per request than h11's Python; bench/api_overhead.py
    measures both), else h11. Raises RuntimeError for "httptools" where it is missing."""
    wanted = config.server.http_parser
    if wanted == "h11":
        return "h11"
    if importlib.util.find_spec("httptools") is not None:
        return "httptools"
    if wanted == "httptools":
        raise RuntimeError(
            "server.http_parser is 'httptools' but httptools is not installed: pip install httptools"
        )
    return "h11"


@asynccontextmanager
async def _ollama_listener(main: FastAPI) -> AsyncIterator[None]:
    """server.ollama_port's listener, in this process and event loop, for the main server's
    life. It is uvicorn's Server without its signal handling: the main server's handles
    SIGTERM and, leaving its lifespan, stops this one."""
    import uvicorn

    from ris.api import http_bounds

    srv = main.state.engine.config.server
    if srv.ollama_port is None:
        yield
        return
    sockets: list[socket.socket] = main.state.ollama_sockets or bind_port(srv.host, srv.ollama_port)
    config = uvicorn.Config(
        create_ollama_app(main),
        host=srv.host,
        port=srv.ollama_port,
        lifespan="off",
        http=http_bounds.protocol(http_parser(main.state.engine.config)),
        # The client is the TCP peer: X-Forwarded-For, trusted by uvicorn from any local
        # process, would let one set the address the wrong-key throttle counts (the scheme a
        # local proxy says is still read: security.ForwardedProto). No websocket is served.
        proxy_headers=False,
        ws="none",
        # uvicorn's loggers are the main server's, configured by it: left as they are.
        log_config=None,
        log_level=None,
        timeout_graceful_shutdown=srv.shutdown_grace_s,  # as the main server's
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)  # "off": what Server._serve would set
    try:
        await server.startup(sockets=sockets)
        ticking = asyncio.ensure_future(server.main_loop())  # uvicorn's Date header, once a second
        for sock in sockets:
            host, port = sock.getsockname()[:2]
            logging.getLogger("ris.api").info("Ollama API listening on %s port %d", host, port)
        try:
            yield
        finally:
            server.should_exit = True
            await ticking
            await server.shutdown(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
