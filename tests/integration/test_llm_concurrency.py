"""The LLM lane serves several users at once (continuous batching, `parallel` sequences per
worker), on the real server and the real model: streams start together, a seed's text does
not depend on who else is being served, and one stream's cancel leaves the others intact."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from .server import Server

pytestmark = pytest.mark.slow


class Stream:
    """One streamed /api/llm/generate in a thread: when its first token and its end came."""

    def __init__(self, url: str, body: dict[str, Any], stop_after: int | None = None) -> None:
        self.body = {"stream": True, **body}
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.text = ""
        self.done: dict[str, Any] | None = None
        self._url = url
        self._stop_after = stop_after
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tokens = 0
        with httpx.stream("POST", f"{self._url}/api/llm/generate", json=self.body, timeout=120) as r:
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "token":
                    self.first_token_at = self.first_token_at or time.monotonic()
                    self.text += json.loads(line[6:])["text"]
                    tokens += 1
                    if self._stop_after is not None and tokens >= self._stop_after:
                        break  # hang up mid-stream
                elif line.startswith("data: ") and event == "done":
                    self.done = json.loads(line[6:])
        self.ended_at = time.monotonic()


def run_together(streams: list[Stream]) -> None:
    for s in streams:
        s.thread.start()
    for s in streams:
        s.thread.join(180)


def story(i: int, **kw: Any) -> dict[str, Any]:
    return {"prompt": f"Story number {i}:", "max_tokens": 48, "ignore_eos": True, **kw}


def test_four_streams_all_start_before_the_first_one_finishes(server: Server) -> None:
    streams = [Stream(server.url, story(i)) for i in range(4)]
    run_together(streams)
    assert all(s.done and s.done["usage"]["completion_tokens"] == 48 for s in streams)
    last_start = max(s.first_token_at or float("inf") for s in streams)
    first_end = min(s.ended_at or 0.0 for s in streams)
    assert last_start < first_end, "a request waited for another to finish: no batching"


def test_a_seed_gives_the_same_text_whoever_else_is_served(server: Server) -> None:
    seeded = {"prompt": "Once upon a time", "max_tokens": 32, "temperature": 0.9, "seed": 1234}
    alone = httpx.post(f"{server.url}/api/llm/generate", json=seeded, timeout=120).json()["text"]
    others = [Stream(server.url, story(i)) for i in range(3)]
    again = Stream(server.url, seeded)
    run_together([*others, again])
    assert again.done is not None and again.done["text"] == alone
    assert len(alone) > 20


def test_cancelling_one_stream_mid_batch_leaves_the_others_intact(server: Server) -> None:
    keep = [Stream(server.url, story(i, max_tokens=64)) for i in range(2)]
    dropped = Stream(server.url, story(9, max_tokens=64), stop_after=3)
    run_together([*keep, dropped])
    assert dropped.done is None and dropped.text
    for s in keep:
        assert s.done is not None and s.done["usage"]["completion_tokens"] == 64
        assert s.done["finish_reason"] == "length"
    stats = httpx.get(f"{server.url}/api/stats").json()["lanes"]["llm"]
    assert stats["slots"] == stats["worker"]["slots"] >= 3 and stats["outputs_per_s"] > 0


def test_models_say_how_many_requests_each_serves_at_once(server: Server) -> None:
    models = {m["name"]: m for m in httpx.get(f"{server.url}/api/models").json()["lanes"]["llm"]}
    assert models["smollm2"]["parallel"] == 8  # llama.cpp batches: the lane's default
    assert models["tiny-dummy"]["parallel"] == 8  # transformers' continuous batching: the same
