"""A client that leaves a non-streaming request takes its task with it: the lane is free for
the next user within a bounded time, not after the abandoned answer is complete. (Streaming
routes cancel as they write; see test_llm and test_speak.)"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from ris import Client

from .server import Server
from .waiting import wait_for

pytestmark = pytest.mark.slow

LONG_TEXT = "and then the river turned again toward the old mill " * 60  # ~3,100 chars, no stops

CASES = [
    ("llm", "/api/llm/generate", {"prompt": "Count:", "max_tokens": 2000, "ignore_eos": True}),
    (
        "llm",
        "/v1/chat/completions",
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2000,
            "ignore_eos": True,
        },
    ),
    (
        "llm",
        "/v1/completions",
        {"model": "smollm2", "prompt": "Once", "max_tokens": 2000, "ignore_eos": True},
    ),
    ("tts", "/api/tts/synthesize", {"text": LONG_TEXT}),
]


def _abandon(url: str, body: dict[str, Any]) -> None:
    """Send the request, then hang up once its task is running (the client's timeout)."""
    try:
        r = httpx.post(url, json=body, timeout=httpx.Timeout(60, read=1.5))
    except httpx.ReadTimeout:
        return
    raise AssertionError(f"the request ended before the client left: {r.status_code} {r.text[:300]}")


@pytest.mark.parametrize(("lane", "path", "body"), CASES, ids=[c[1] for c in CASES])
def test_the_task_is_cancelled_when_its_client_leaves(
    server: Server, client: Client, lane: str, path: str, body: dict[str, Any]
) -> None:
    wait_for(lambda: not client.tasks(lane=lane, state="running"), 120)  # a free lane to start
    _abandon(server.url + path, body)
    left = time.monotonic()
    task_id = client.tasks(lane=lane)[0]["task_id"]  # newest first: the abandoned one
    wait_for(lambda: client.task(task_id)["state"] not in ("queued", "running"), 10)
    freed_s = time.monotonic() - left
    assert client.task(task_id)["state"] == "cancelled"
    print(f"{path}: lane free {freed_s:.2f} s after the client left")
