"""Stopping the service while answers are being written: each client hears `server_shutdown`
in its API's words (a JSON 503, a stream's error event), not a plain-text 500 or a cut
connection, once uvicorn's grace for them is nearly over."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from .server import Server, make_config
from .waiting import post_in_background, wait_for

pytestmark = pytest.mark.slow

LONG = {"prompt": "Write a very long story about a lighthouse.", "max_tokens": 1500, "ignore_eos": True}


def stream_in_background(url: str, body: dict[str, Any]) -> tuple[threading.Thread, list[str]]:
    lines: list[str] = []

    def read() -> None:
        try:
            with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as r:
                for line in r.iter_lines():
                    lines.append(line)
        except httpx.HTTPError as e:  # a cut connection: what the test must not see
            lines.append(f"cut: {type(e).__name__}")

    t = threading.Thread(target=read)
    t.start()
    return t, lines


def test_answers_in_flight_at_a_stop_end_with_server_shutdown(tmp_path: Path) -> None:
    config = make_config(tmp_path, tts={"enabled": False}, image={"enabled": False}, llm={"parallel": 2})
    srv = Server(tmp_path, config).start()
    url = f"{srv.url}/api/llm/generate"
    try:
        plain, answer = post_in_background(url, LONG, timeout=120)
        streamed, lines = stream_in_background(url, LONG)
        wait_for(lambda: any(line.startswith("event: token") for line in lines), 60)
    finally:
        srv.stop()  # SIGTERM; the answers still run for a minute or more
    plain.join(60)
    streamed.join(60)
    (r,) = answer
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/json"), r.text
    assert r.json()["error"]["code"] == "server_shutdown"
    assert "event: error" in lines and not any(line.startswith("cut:") for line in lines), lines[-5:]
    assert any("server_shutdown" in line for line in lines[lines.index("event: error") :])


def test_a_longer_grace_lets_an_answer_finish_across_a_stop(tmp_path: Path) -> None:
    """The grace was 5 s, fixed: every chat running at a restart was cut. server.shutdown_grace_s
    lets it finish (the stop waits for it, not for the grace's end)."""
    config = make_config(tmp_path, tts={"enabled": False}, image={"enabled": False})
    config["server"] = {"shutdown_grace_s": 60}
    srv = Server(tmp_path, config).start()
    url = f"{srv.url}/api/llm/generate"
    body = {**LONG, "max_tokens": 600}  # past the old 5 s of decoding, well inside this grace
    try:
        streamed, lines = stream_in_background(url, body)
        wait_for(lambda: any(line.startswith("event: token") for line in lines), 60)
    finally:
        srv.stop()  # SIGTERM: returns once the server has exited
    streamed.join(60)
    assert "event: done" in lines and "event: error" not in lines, lines[-5:]
