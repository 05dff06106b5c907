"""The load generator's image driver at a phase's end, against a scripted server: what it
cancels it waits for (the next phase, `ris bench --rounds`, must not meet its last sub-step),
and not past the drain."""

from __future__ import annotations

import asyncio
import json

import httpx

from ris.benchmark.loadgen import Phase, image_driver
from ris.benchmark.workload import Workload


def scripted(cancelled_after_polls: int | None) -> tuple[httpx.MockTransport, list[str]]:
    """Images that run until cancelled, then read "running" for `cancelled_after_polls` more
    looks before "cancelled" (None: never)."""
    log: list[str] = []
    state: dict[str, int] = {}

    def server(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        log.append(f"{request.method} {path}")
        if path == "/api/image/generate":
            task = f"t{len(state)}"
            state[task] = -1  # running, not asked to stop
            return httpx.Response(202, json={"task_id": task})
        task = path.split("/")[3]
        if path.endswith("/cancel"):
            state[task] = 0
            return httpx.Response(200, json={"outcome": "requested"})
        looks = state[task]
        if looks >= 0:
            state[task] += 1
        done = looks >= 0 and cancelled_after_polls is not None and looks >= cancelled_after_polls
        body = {"state": "cancelled" if done else "running", "started_at": 1.0, "submitted_at": 0.5,
                "progress_done": 1, "finished_at": 2.0 if done else None, "error": None}  # fmt: skip
        return httpx.Response(200, content=json.dumps(body))

    return httpx.MockTransport(server), log


def drive(transport: httpx.MockTransport, drain_s: float) -> float:
    w = Workload(duration_s=0.2, drain_s=drain_s, image_outstanding=2, poll_s=0.02)

    async def run() -> float:
        async with httpx.AsyncClient(base_url="http://ris.test", transport=transport) as client:
            ph = Phase(w)
            await image_driver(ph, client)
            assert all(s.get("unfinished") for s in ph.samples["image"])
            return ph.now()

    return asyncio.run(run())


def test_images_cancelled_at_the_windows_end_are_waited_for_until_they_end() -> None:
    transport, log = scripted(cancelled_after_polls=3)
    drive(transport, drain_s=30)
    cancels = [i for i, line in enumerate(log) if line.endswith("/cancel")]
    assert len(cancels) == 2
    after = [line for line in log[cancels[-1] + 1 :] if line.startswith("GET")]
    # Each looked at until it read cancelled: 3 more "running", then the end.
    assert len(after) >= 4 and all(not line.endswith("/cancel") for line in after)


def test_an_image_that_never_ends_holds_the_phase_no_longer_than_its_drain() -> None:
    transport, _log = scripted(cancelled_after_polls=None)
    took = drive(transport, drain_s=0.3)
    assert 0.2 + 0.3 <= took < 0.2 + 0.3 + 1.0
