"""The API process's memory ceiling (ris.api.memory): over it, new work is refused with 503
and Retry-After; reads, probes and cancels still answer; the size is read at most 4 times a
second."""

from __future__ import annotations

import asyncio

from starlette.types import Message

from ris.api.memory import MIB, READ_INTERVAL_S, MemoryCeiling, MemoryReading

from .fakes import FakeClock
from .guarded import ok


def answer(ceiling: MemoryCeiling, method: str, path: str) -> tuple[int, dict[str, str]]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(ceiling(scope, receive, send))
    return int(sent[0]["status"]), {k.decode(): v.decode() for k, v in sent[0]["headers"]}


def test_over_the_ceiling_new_work_is_refused_and_the_rest_answers() -> None:
    rss = [100 * MIB]
    ceiling = MemoryCeiling(ok, 200, MemoryReading(lambda: rss[0], FakeClock()))
    assert answer(ceiling, "POST", "/api/llm/generate")[0] == 200
    rss[0] = 300 * MIB
    ceiling = MemoryCeiling(ok, 200, MemoryReading(lambda: rss[0], FakeClock()))
    status, headers = answer(ceiling, "POST", "/v1/chat/completions")
    assert status == 503 and headers["retry-after"] == "5"
    task = "0" * 32
    for method, path in (
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("POST", f"/api/tasks/{task}/cancel"),
        ("POST", f"/api/image/cancel/{task}"),
        ("POST", "/ui/login"),
        ("POST", "/api/show"),  # Ollama's read of a model's facts
    ):
        assert answer(ceiling, method, path)[0] == 200, path
    assert answer(ceiling, "POST", "/api/image/generate")[0] == 503
    assert answer(MemoryCeiling(ok, 0, MemoryReading(lambda: rss[0], FakeClock())), "POST", "/x")[0] == 200


def test_the_size_is_read_again_only_after_the_interval() -> None:
    clock, reads = FakeClock(), []

    def read() -> int:
        reads.append(clock())
        return 1

    reading = MemoryReading(read, clock)
    for _ in range(10):
        reading.now()
        clock.advance(READ_INTERVAL_S / 5)
    assert len(reads) == 2
