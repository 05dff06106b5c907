"""deps.unless_gone: a wait that ends when its work does, or when the client leaves (then the
work is cancelled and ClientGone raised). The watch on the client begins after WATCH_AFTER_S:
work that ends sooner is answered without it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ris.api import deps
from ris.api.deps import WATCH_AFTER_S, ClientGone, unless_gone

from .fakes import run


class FakeRequest:
    """What unless_gone reads of a request: receive(), which answers `http.disconnect` once
    the client has left (as the server's does once the body is read)."""

    def __init__(self) -> None:
        self.left = asyncio.Event()
        self.receives = 0
        self.waiting = 0  # receive() calls not returned yet: a watcher still running

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        self.waiting += 1
        try:
            await self.left.wait()
        finally:
            self.waiting -= 1
        return {"type": "http.disconnect"}


async def _work(seconds: float, started: list[asyncio.Task[Any]]) -> str:
    task = asyncio.current_task()
    assert task is not None
    started.append(task)
    await asyncio.sleep(seconds)
    return "answer"


def test_work_that_ends_before_the_watch_is_answered_unwatched(monkeypatch: pytest.MonkeyPatch) -> None:
    # The watch put far off: a loop stalled past 50 ms on a busy machine would start it.
    monkeypatch.setattr(deps, "WATCH_AFTER_S", 0.5)

    async def body() -> None:
        request = FakeRequest()
        assert await unless_gone(request, _work(0.001, [])) == "answer"  # type: ignore[arg-type]
        await asyncio.sleep(0.6)
        assert request.receives == 0  # no watcher was started, and none is left behind

    asyncio.run(body())


@run
async def test_a_client_gone_before_the_watch_is_seen_when_it_begins() -> None:
    request, started = FakeRequest(), []  # type: ignore[var-annotated]
    request.left.set()  # gone at once
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(ClientGone):
        await unless_gone(request, _work(30, started))  # type: ignore[arg-type]
    assert loop.time() - t0 < WATCH_AFTER_S + 1.0
    await asyncio.sleep(0)
    assert started[0].cancelled()  # the work went with the client


@run
async def test_a_client_that_leaves_later_cancels_the_work_at_once() -> None:
    request, started = FakeRequest(), []  # type: ignore[var-annotated]
    loop = asyncio.get_running_loop()
    loop.call_later(WATCH_AFTER_S * 4, request.left.set)
    t0 = loop.time()
    with pytest.raises(ClientGone):
        await unless_gone(request, _work(30, started))  # type: ignore[arg-type]
    assert WATCH_AFTER_S * 4 <= loop.time() - t0 < WATCH_AFTER_S * 4 + 1.0
    await asyncio.sleep(0)
    assert started[0].cancelled() and request.receives == 1


@run
async def test_the_waiter_cancelled_cancels_the_work_and_stops_watching() -> None:
    request, started = FakeRequest(), []  # type: ignore[var-annotated]
    waiter = asyncio.ensure_future(unless_gone(request, _work(30, started)))  # type: ignore[arg-type]
    await asyncio.sleep(WATCH_AFTER_S * 2)  # watching by now
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)
    assert started[0].cancelled()
    assert request.receives == 1 and request.waiting == 0  # the watcher it started is gone too


@run
async def test_the_waiter_cancelled_as_its_client_leaves_stays_cancelled() -> None:
    # The server stopping (or a timeout around the wait) while the client goes: a
    # cancellation, not the client's 499.
    request, started = FakeRequest(), []  # type: ignore[var-annotated]
    waiter = asyncio.ensure_future(unless_gone(request, _work(30, started)))  # type: ignore[arg-type]
    await asyncio.sleep(WATCH_AFTER_S * 2)
    request.left.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
