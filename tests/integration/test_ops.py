"""Health, readiness, statistics, metrics, the OpenAPI schema, task calls and admission."""

from __future__ import annotations

import http.client
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from ris import Client, RISError

from .server import ROOT, Server, ris_status
from .waiting import post_in_background, running_task, wait_for

pytestmark = pytest.mark.slow

LONG = {"prompt": "Tell me everything about the sea.", "max_tokens": 1500, "ignore_eos": True}


def test_health_and_ready(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready == {"ready": True, "lanes": {"llm": True, "tts": True, "image": True}}


def test_stats_report_every_lane(client: Client) -> None:
    client.synthesize("Stats.")
    lanes = client.stats()["lanes"]
    assert set(lanes) == {"llm", "tts", "image"}
    tts = lanes["tts"]
    assert tts["worker"]["state"] == "ready" and tts["worker"]["rss_bytes"] > 10_000_000
    assert tts["succeeded"] >= 1 and tts["latency_s"]["p50"] > 0
    assert lanes["image"]["worker"]["state"] == "ready" and lanes["image"]["worker"]["cpu_affinity"] == [0, 1]


def test_prometheus_metrics(server: Server) -> None:
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'ris_worker_up{lane="llm"} 1' in text
    assert "# TYPE ris_tasks_total counter" in text
    assert 'ris_queue_depth{lane="tts"} 0' in text


def test_openapi_schema_lists_the_seed_api(server: Server) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in (
        "/api/llm/generate",
        "/api/tts/synthesize",
        "/api/image/generate",
        "/api/tasks/{task_id}",
        "/health",
        "/ready",
        "/api/stats",
        "/metrics",
    ):
        assert path in paths


PNG = "image/png"


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"swagger-ui-bundle.js": "javascript", "swagger-ui.css": "text/css", "favicon.png": PNG}),
        ("/redoc", {"redoc.standalone.js": "javascript", "favicon.png": PNG}),
    ],
)
def test_docs_pages_work_offline(server: Server, page: str, assets: dict[str, str]) -> None:
    """Everything a docs page loads comes from this server (no CDN: a blank page offline)."""
    r = httpx.get(f"{server.url}{page}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.findall(r"https?://", html), "the page names another host"
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {u.rsplit("/", 1)[1] for u in urls} == set(assets), urls
    for url in urls:
        assert url.startswith("/docs/assets/"), url
        asset = httpx.get(f"{server.url}{url}")
        assert asset.status_code == 200, url
        assert assets[url.rsplit("/", 1)[1]] in asset.headers["content-type"], (url, asset.headers)
        assert len(asset.content) > 1000
    assert "/openapi.json" in html
    missing = httpx.get(f"{server.url}/docs/assets/..%2fcore.py")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_models_list(client: Client) -> None:
    lanes = client.models()["lanes"]
    assert [m["name"] for m in lanes["llm"]] == ["smollm2", "tiny-dummy"]
    assert lanes["llm"][0]["default"] and not lanes["llm"][1]["default"]
    tts = {m["name"]: m for m in lanes["tts"]}
    assert "zh-CN" in tts["espeak"]["voices"] and "en-US" in tts["piper"]["voices"]


def test_cancel_a_running_generation(server: Server, client: Client) -> None:
    thread, out = post_in_background(f"{server.url}/api/llm/generate", LONG)
    task_id = running_task(client, "llm")
    assert client.cancel(task_id)["outcome"] == "requested"
    thread.join(60)
    assert out[0].status_code == 409 and out[0].json()["error"]["code"] == "cancelled"
    assert client.task(task_id)["state"] == "cancelled"


def test_full_queue_answers_429_with_retry_after_and_loses_nothing(server: Server, client: Client) -> None:
    slots = httpx.get(f"{server.url}/api/stats").json()["lanes"]["llm"]["slots"]
    background = [post_in_background(f"{server.url}/api/llm/generate", LONG) for _ in range(slots)]
    wait_for(lambda: len(client.tasks(lane="llm", state="running")) == slots, 30)  # every slot busy
    running = [t["task_id"] for t in client.tasks(lane="llm", state="running")]
    http = httpx.Client(base_url=server.url, timeout=60)
    queued = []
    for _ in range(3):  # the test server's LLM queue holds 3
        body = {**LONG, "max_tokens": 2, "stream": True}
        req = http.build_request("POST", "/api/llm/generate", json=body)
        queued.append(http.send(req, stream=True))
    # A streamed response names its task in a header before any token is generated.
    ids = [r.headers["x-task-id"] for r in queued]
    positions = [client.task(i)["queue_position"] for i in ids]
    assert positions == [0, 1, 2]
    r = httpx.post(f"{server.url}/api/llm/generate", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"
    with pytest.raises(RISError) as exc:
        client.generate("x")
    assert exc.value.status == 429 and exc.value.retry_after is not None
    for task_id in running:
        client.cancel(task_id)
    for thread, _ in background:
        thread.join(60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [client.task(i)["state"] for i in ids]
        if all(s == "succeeded" for s in states):
            break
        time.sleep(0.1)
    assert states == ["succeeded"] * 3
    for r in queued:
        assert b"event: done" in r.read()
        r.close()
    http.close()


def test_unknown_task(server: Server) -> None:
    r = httpx.get(f"{server.url}/api/tasks/{'f' * 32}")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"{server.url}/api/tasks/not-an-id")
    assert r.status_code == 404 and "32 lowercase hex" in r.json()["error"]["message"]


def test_oversize_body(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/api/llm/generate",
        content=b"x" * 2_000_000,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def post_chunked(server: Server, path: str, body: bytes, chunk: int = 64 * 1024) -> httpx.Response:
    """POST with Transfer-Encoding: chunked and no Content-Length, on a raw socket (clients add
    a length whenever they can). A thread writes while the answer is read: the server may
    answer before the body ends."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def write() -> None:
        try:
            sock.sendall(head.encode())
            for i in range(0, len(body), chunk):
                part = body[i : i + chunk]
                sock.sendall(b"%x\r\n" % len(part) + part + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed first

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        raw = http.client.HTTPResponse(sock)
        raw.begin()
        return httpx.Response(raw.status, headers=raw.getheaders(), content=raw.read())
    finally:
        sock.close()
        writer.join(timeout=60)


def test_oversize_chunked_body_is_the_same_413(server: Server) -> None:
    body = b'{"text": "' + b"x" * 1_200_000 + b'"}'
    for path in ("/api/llm/generate", "/api/tts/synthesize", "/v1/chat/completions"):
        sized = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"})
        chunked = post_chunked(server, path, body)
        assert chunked.status_code == sized.status_code == 413, (path, chunked.text)
        assert chunked.json() == sized.json(), path
        assert chunked.json()["error"]["code"] == "body_too_large"
    small = post_chunked(
        server, "/api/llm/generate", b'{"prompt": "Hi", "max_tokens": 2, "ignore_eos": true}'
    )
    assert small.status_code == 200 and small.json()["usage"]["completion_tokens"] == 2


def test_ris_status_cli(server: Server) -> None:
    lines = ris_status(server.url).splitlines()
    assert lines[0].split()[:3] == ["lane", "worker", "pid"]
    assert any(line.startswith("llm") and "ready" in line for line in lines)
    assert any(line.startswith("image") and "ready" in line for line in lines)


def test_bad_config_refuses_to_start_with_a_clear_message(tmp_path: object) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "bad.json"
    p.write_text('{"lanes": {"llm": {"cores": [99]}, "tts": {}, "image": {}}}')
    out = subprocess.run(
        [sys.executable, "-m", "ris", "serve", "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "core 99 does not exist" in out.stderr
