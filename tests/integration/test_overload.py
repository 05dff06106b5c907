"""Overload: bounded queues answer 429 with Retry-After at once, admitted work completes, the
server stays healthy. Queue bound Q=2 per lane, C its slots: 10x(C+Q) requests at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ris import Client
from ris.scheduler import percentile

from .server import Server, make_config

pytestmark = pytest.mark.slow
Q = 2  # queue places per lane; the concurrency is each lane's slots


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("overload")
    cfg = make_config(tmp, llm={"max_queue": Q}, tts={"max_queue": Q}, image={"max_queue": Q})
    srv = Server(tmp, cfg).start()
    yield srv
    srv.stop()


def slots(srv: Server, lane: str) -> int:
    """Tasks the lane runs at once (the LLM lane's batch: several)."""
    n: int = httpx.get(f"{srv.url}/api/stats").json()["lanes"][lane]["slots"]
    return n


async def _burst(
    url: str, path: str, body: dict[str, object], n: int
) -> tuple[list[tuple[int, float, httpx.Response]], list[float]]:
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        health: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                r = await http.get("/health")
                assert r.status_code == 200
                health.append(time.perf_counter() - t)
                await asyncio.sleep(0.02)

        async def one() -> tuple[int, float, httpx.Response]:
            t = time.perf_counter()
            r = await http.post(path, json=body)
            return r.status_code, time.perf_counter() - t, r

        prober = asyncio.create_task(probe())
        results = await asyncio.gather(*(one() for _ in range(n)))
        stop.set()
        await prober
        return list(results), health


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/llm/generate", {"prompt": "Tell me about the sea.", "max_tokens": 24, "ignore_eos": True}),
        ("/api/tts/synthesize", {"text": "A short sentence to speak."}),
        ("/api/image/generate", {"prompt": "x", "width": 64, "height": 64, "steps": 2}),
    ],
)
def test_burst_of_ten_times_capacity(small: Server, path: str, body: dict[str, object]) -> None:
    lane = path.split("/")[2]
    c = slots(small, lane)
    n = 10 * (c + Q)
    rejected_before = small.stats()[lane]["rejected"]
    results, health = asyncio.run(_burst(small.url, path, body, n))
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 202, 429}, codes  # no 5xx, no resets (those would raise)
    refused = [(dt, r) for code, dt, r in results if code == 429]
    admitted = [r for code, _, r in results if code in (200, 202)]
    assert len(admitted) >= c + Q and len(refused) >= n - 3 * (c + Q)
    for _, r in refused:
        assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
    assert small.stats()[lane]["rejected"] - rejected_before == len(refused)  # the console's "429s"
    refuse_p99 = percentile([dt for dt, _ in refused], 99) or 0.0
    health_p99 = percentile(health, 99) or 0.0
    # The server's own time to answer each 429 (Server-Timing), without client and network.
    server_ms = [float(r.headers["server-timing"].split("dur=")[1]) for _, r in refused]
    server_p99 = percentile(server_ms, 99) or 0.0
    print(
        f"{path}: {len(admitted)} admitted, {len(refused)} refused; 429 p99 server {server_p99:.1f} ms, "
        f"at the client {1000 * refuse_p99:.1f} ms; /health p99 {1000 * health_p99:.1f} ms"
    )
    # Refusals never wait for work to finish: the queued work behind the full slots takes
    # seconds, so a refusal that waited for a slot would take that long. The bounds are far from
    # the typical figures (a few ms, printed above; the benchmarks measure them): a loaded
    # machine must not fail this, a refusal that waits must. Image admissions are fsync'd on the
    # event loop and a refusal can queue behind them; at the client, connection set-up and the
    # client's own loop on 2 cores add to it.
    assert server_p99 < 500.0
    assert refuse_p99 < 2.0
    assert health_p99 < 2.0
    if path == "/api/image/generate":  # asynchronous: every admitted task must still finish
        with Client(small.url, max_retries=0) as client:
            for r in admitted:
                assert client.wait(r.json()["task_id"], timeout=120)["status"] == "succeeded"


def test_sdk_retries_honouring_retry_after(small: Server) -> None:
    body = {"prompt": "x", "max_tokens": 40, "ignore_eos": True}
    capacity = slots(small, "llm") + Q

    async def fill() -> None:
        async with httpx.AsyncClient(base_url=small.url, timeout=300) as http:
            await asyncio.gather(*(http.post("/api/llm/generate", json=body) for _ in range(capacity)))

    import threading

    t = threading.Thread(target=lambda: asyncio.run(fill()))
    t.start()
    time.sleep(0.3)
    with Client(small.url, max_retries=10, max_retry_wait=2.0) as c:
        gen = c.generate("y", max_tokens=2, ignore_eos=True)
    t.join(120)
    assert gen.usage["completion_tokens"] == 2


def test_a_batch_of_images_is_queued_whole_or_not_at_all(small: Server) -> None:
    long = {"prompt": "busy", "width": 256, "height": 256, "steps": 100}
    with httpx.Client(base_url=small.url, timeout=60) as http:
        busy = [http.post("/api/image/generate", json=long).json()["task_id"] for _ in range(2)]
        before = {t["task_id"] for t in http.get("/api/image/tasks").json()["tasks"]}
        # One image runs and one waits: the queue (Q=2) has room for one, not for three.
        r = http.post("/v1/images/generations", json={"prompt": "x", "n": 3, "size": "64x64"})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        after = {t["task_id"] for t in http.get("/api/image/tasks").json()["tasks"]}
        assert after == before  # was: one of the three queued and ran, its id never told
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and "not the 3 asked for together" in err["message"]
        # Four: more than the lane ever holds at once (2 places, 1 slot), which no wait changes.
        r = http.post("/v1/images/generations", json={"prompt": "x", "n": 4, "size": "64x64"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "batch_too_large", r.text
        assert {t["task_id"] for t in http.get("/api/image/tasks").json()["tasks"]} == before
        for task_id in busy:
            http.post(f"/api/image/cancel/{task_id}")
