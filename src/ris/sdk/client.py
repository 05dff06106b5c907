"""ris.Client and ris.AsyncClient: the Python SDK over the REST API (httpx).

Both take their methods from one definition (_ops.Operations); this module only runs them,
with blocking or with asynchronous I/O.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Generator
from typing import Any

import httpx

from ris.sdk._common import NOT_RETRIED, RETRY_STATUSES, RISError, backoff_delay, error_from, server_url
from ris.sdk._ops import AsyncRunner, Call, Op, Operations, Pause, StreamSpec, SyncRunner, T, Undo

DEFAULT_URL = "http://127.0.0.1:8080"


class _Base(Operations):
    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 300.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`base_url`: `http://host:port`, or `host:port` as curl takes it (ValueError for what
        cannot be a server's address); unset, $RIS_URL, else http://127.0.0.1:8080. `api_key`:
        unset, $RIS_API_KEY (as the `ris` command and the examples read them, and OpenAI's SDK
        reads its own). `transport`: httpx's (an httpx.MockTransport in tests)."""
        base_url = server_url(base_url or os.environ.get("RIS_URL") or DEFAULT_URL)
        api_key = api_key if api_key is not None else os.environ.get("RIS_API_KEY") or None
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._connect(dict(base_url=base_url, timeout=timeout, headers=headers, transport=transport))

    def _connect(self, http_options: dict[str, Any]) -> None:
        raise NotImplementedError

    def _retry_delay(self, call: Call, resp: httpx.Response, attempt: int) -> float | None:
        """None: hand `resp` back. Else the seconds to wait before asking again; raises RISError
        when the answer is an error that is not retried (or retries are used up)."""
        retry = self._retry(call, resp, attempt)
        return None if retry is None else retry[0]

    def _retry(self, call: Call, resp: httpx.Response, attempt: int) -> tuple[float, RISError] | None:
        """`_retry_delay`, with the error the retry answers."""
        if resp.status_code < 400 or not call.check:
            return None
        err = error_from(resp)
        retried = (
            call.retry
            and resp.status_code in RETRY_STATUSES
            and err.code not in NOT_RETRIED
            # The server's word on this answer (a lane the config disables, say), as OpenAI's
            # SDKs read it: a retry finds the same.
            and resp.headers.get("x-should-retry") != "false"
        )
        if not retried or attempt >= self.max_retries:
            raise err
        return backoff_delay(attempt, err.retry_after, self.max_retry_wait), err


def unreachable_on_retry(answered: RISError, e: httpx.TransportError) -> RISError:
    """What a retry that could not reach the server raises: the error the server answered
    before (its stop's server_shutdown, a full queue), saying the retry found no server. The
    app saw a bare ConnectError for a server that had said it was stopping."""
    return RISError(
        answered.status,
        answered.code,
        f"{answered.message}; retried, and the server could not be reached ({type(e).__name__}: {e})",
        answered.retry_after,
    )


# A stream whose connection broke after its 200 (a killed server leaves its chunked body cut
# short): what the caller hears is RISError stream_incomplete, as for one that ended cleanly
# before its end, not httpx's error, which a caller catching RISError as documented missed.
CUT_OFF = (httpx.RemoteProtocolError, httpx.ReadError)


def cut_off(e: httpx.TransportError) -> RISError:
    return RISError(
        502, "stream_incomplete", f"the stream broke off before its end ({type(e).__name__}: {e})"
    )


# How long the cancel of a task an operation gave up on may take (Undo): best effort, short.
UNDO_TIMEOUT_S = 2.0


class Client(_Base, SyncRunner):
    """Synchronous client. Retries 429/503 up to `max_retries` times, honouring Retry-After."""

    def _connect(self, http_options: dict[str, Any]) -> None:
        self._http = httpx.Client(**http_options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, operation: Op[T]) -> T:
        reply: Any = None
        failed: httpx.TransportError | None = None  # thrown into the operation: its to handle
        undo: Call | None = None
        try:
            while True:
                step = operation.send(reply) if failed is None else operation.throw(failed)
                failed = None
                if isinstance(step, Undo):
                    undo, reply = step.call, None
                elif isinstance(step, Pause):
                    time.sleep(step.seconds)
                    reply = None
                else:
                    try:
                        reply = self._call(step)
                    except httpx.TransportError as e:
                        failed = e
        except StopIteration as done:
            result: T = done.value
            return result
        except GeneratorExit:  # the operation itself dropped (its loop gone): nothing to send
            raise
        except BaseException:  # given up (a timeout, Ctrl-C) or failed: what it started, stopped
            if undo is not None and not self._http.is_closed:
                try:
                    self._http.request(undo.method, undo.url, json=undo.json, timeout=UNDO_TIMEOUT_S)
                except Exception:  # noqa: BLE001 - best effort: the caller gets what ended it
                    pass
            raise

    def _call(self, call: Call) -> httpx.Response:
        attempt, answered = 0, None
        while True:
            try:
                resp = self._http.request(call.method, call.url, json=call.json, params=call.params)
            except httpx.TransportError as e:
                if answered is None:
                    raise
                raise unreachable_on_retry(answered, e) from e
            retry = self._retry(call, resp, attempt)
            if retry is None:
                return resp
            time.sleep(retry[0])
            attempt, answered = attempt + 1, retry[1]

    def _iterate(self, spec: StreamSpec[T]) -> Generator[T, None, None]:
        call, attempt = spec.call, 0
        while True:
            with self._http.stream(call.method, call.url, json=call.json, params=call.params) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    delay = self._retry_delay(call, resp, attempt)
                    if delay is not None:
                        time.sleep(delay)
                        attempt += 1
                        continue
                decoder = spec.decoder()
                try:
                    for line in resp.iter_lines():
                        yield from decoder.feed(line)
                except CUT_OFF as e:
                    raise cut_off(e) from e
                yield from decoder.end()
                return


class AsyncClient(_Base, AsyncRunner):
    """Asynchronous twin of Client: the same methods, awaited (streams: `async for`)."""

    def _connect(self, http_options: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(**http_options)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, operation: Op[T]) -> T:
        reply: Any = None
        failed: httpx.TransportError | None = None  # as Client._run
        undo: Call | None = None
        try:
            while True:
                step = operation.send(reply) if failed is None else operation.throw(failed)
                failed = None
                if isinstance(step, Undo):
                    undo, reply = step.call, None
                elif isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    reply = None
                else:
                    try:
                        reply = await self._call(step)
                    except httpx.TransportError as e:
                        failed = e
        except StopIteration as done:
            result: T = done.value
            return result
        except GeneratorExit:
            raise
        except BaseException:  # as Client._run; a cancelled task (asyncio.wait_for) included
            if undo is not None and not self._http.is_closed:
                try:  # one deadline for it all (httpx's timeout is per phase: connect, read, ...)
                    request = self._http.request(undo.method, undo.url, json=undo.json)
                    await asyncio.wait_for(request, UNDO_TIMEOUT_S)
                except Exception:  # noqa: BLE001 - as Client._run
                    pass
            raise

    async def _call(self, call: Call) -> httpx.Response:
        attempt, answered = 0, None
        while True:
            try:
                resp = await self._http.request(call.method, call.url, json=call.json, params=call.params)
            except httpx.TransportError as e:
                if answered is None:
                    raise
                raise unreachable_on_retry(answered, e) from e
            retry = self._retry(call, resp, attempt)
            if retry is None:
                return resp
            await asyncio.sleep(retry[0])
            attempt, answered = attempt + 1, retry[1]

    async def _iterate(self, spec: StreamSpec[T]) -> AsyncGenerator[T, None]:
        call, attempt = spec.call, 0
        while True:
            async with self._http.stream(call.method, call.url, json=call.json, params=call.params) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    delay = self._retry_delay(call, resp, attempt)
                    if delay is not None:
                        await asyncio.sleep(delay)
                        attempt += 1
                        continue
                decoder = spec.decoder()
                try:
                    async for line in resp.aiter_lines():
                        for item in decoder.feed(line):
                            yield item
                except CUT_OFF as e:
                    raise cut_off(e) from e
                for item in decoder.end():
                    yield item
                return
