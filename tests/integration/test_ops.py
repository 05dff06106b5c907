"""Health, readiness, statistics, metrics, the OpenAPI schema, task calls and admission."""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from ris import Client, RISError

from .server import ROOT, Server, make_config, refused_serve, ris_status
from .waiting import post_in_background, running_task, wait_for

pytestmark = pytest.mark.slow

LONG = {"prompt": "Tell me everything about the sea.", "max_tokens": 1500, "ignore_eos": True}


def test_health_and_ready(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready").json()
    assert ready == {"ready": True, "lanes": {"llm": True, "tts": True, "image": True}}
    # HEAD too, as health checkers send it: the status, no body.
    for path in ("/health", "/ready", "/metrics"):  # /metrics: an uptime checker on the scrape URL
        head = httpx.head(f"{server.url}{path}")
        assert head.status_code == 200 and head.content == b"", (path, head)


def test_stats_report_every_lane(client: Client) -> None:
    client.synthesize("Stats.")
    lanes = client.stats()["lanes"]
    assert set(lanes) == {"llm", "tts", "image"}
    tts = lanes["tts"]
    assert tts["worker"]["state"] == "ready" and tts["worker"]["rss_bytes"] > 10_000_000
    assert tts["succeeded"] >= 1 and tts["latency_s"]["p50"] > 0
    assert lanes["image"]["worker"]["state"] == "ready" and lanes["image"]["worker"]["cpu_affinity"] == [0, 1]


def test_prometheus_metrics(server: Server, client: Client) -> None:
    """After real LLM, TTS and image work, /metrics parses as Prometheus reads it: base units,
    counters ending in _total, histograms whose buckets only grow, no family without samples."""
    generation = client.generate("Count to five.", max_tokens=8, ignore_eos=True)
    speech = client.synthesize("Metrics, please.")
    client.image("a red square", steps=2, width=64, height=64)
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name, family in found.items():
        assert family.samples, f"{name}: a family with no sample"
        assert not re.search(r"percent|_ms$|milli", name), name
        if family.type == "counter":
            assert all(s.name == f"{name}_total" for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
            check_histogram(family)
    kinds = {name: f.type for name, f in found.items()}
    for name in ("ris_task_latency_seconds", "ris_time_to_first_output_seconds", "ris_inter_output_seconds"):
        assert kinds[name] == "histogram", name
    for name in (
        "ris_tasks",
        "ris_generated_tokens",
        "ris_prompt_tokens",
        "ris_audio_seconds",
        "ris_image_steps",
    ):
        assert kinds[name] == "counter", name
    assert kinds["ris_worker_cpu_seconds"] == "counter" and kinds["ris_build_info"] == "gauge"

    def value(family: str, name: str, **labels: str) -> float:
        hits = [
            s.value for s in found[family].samples if s.name == name and labels.items() <= s.labels.items()
        ]
        assert hits, (family, name, labels)
        return sum(hits)

    assert value("ris_worker_up", "ris_worker_up", lane="llm") == 1
    assert value("ris_tasks_queued", "ris_tasks_queued", lane="tts") == 0
    assert value("ris_worker_cpu_seconds", "ris_worker_cpu_seconds_total", lane="llm") > 0
    assert (
        value("ris_generated_tokens", "ris_generated_tokens_total", lane="llm")
        >= generation.usage["completion_tokens"]
    )
    assert value("ris_audio_seconds", "ris_audio_seconds_total", lane="tts") >= speech.duration_s > 0
    assert value("ris_image_steps", "ris_image_steps_total", lane="image") >= 2
    assert value("ris_tasks", "ris_tasks_total", lane="image", outcome="succeeded") >= 1
    # The first token came from the default model; so did its next ones. 8 tokens are 1 to 7
    # gaps: a piece of text that may begin a stop string ("\n" before "\nuser:") leaves with
    # the token after it, and the sampled text differs from run to run.
    ttft = value("ris_time_to_first_output_seconds", "ris_time_to_first_output_seconds_count", lane="llm")
    assert ttft >= 1
    assert value("ris_inter_output_seconds", "ris_inter_output_seconds_count", lane="llm") >= 1
    # No GPU on this machine: no GPU family at all (with one, each has a sample).
    assert all(f.samples for n, f in found.items() if n.startswith("ris_gpu_"))

    # The LLM worker's engine, from its heartbeat (every 0.5 s): what llama-server's /metrics
    # tells its users, decode calls and prompt tokens computed or reused, the KV cache's use.
    generated = "ris_llm_engine_generated_tokens"
    deadline = time.monotonic() + 10
    while generated not in found or value(generated, generated + "_total", lane="llm") < 8:
        assert time.monotonic() < deadline, sorted(found)
        time.sleep(0.2)
        found = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
    prompt = generation.usage["prompt_tokens"]
    computed = value("ris_llm_engine_prompt_tokens", "ris_llm_engine_prompt_tokens_total", lane="llm")
    reused = value(
        "ris_llm_engine_reused_prompt_tokens", "ris_llm_engine_reused_prompt_tokens_total", lane="llm"
    )
    assert computed + reused >= prompt > 0
    assert value("ris_llm_engine_decode_steps", "ris_llm_engine_decode_steps_total", lane="llm") >= 8
    capacity = value(
        "ris_llm_engine_kv_cache_capacity_tokens", "ris_llm_engine_kv_cache_capacity_tokens", lane="llm"
    )
    assert (
        0 < value("ris_llm_engine_kv_cache_tokens", "ris_llm_engine_kv_cache_tokens", lane="llm") <= capacity
    )
    engine = client.stats()["lanes"]["llm"]["workers"][0]["engine"]
    assert engine["kv_cache_capacity_tokens"] == capacity and engine["generated_tokens"] >= 8


def check_histogram(family: Metric) -> None:
    """Per series: buckets cumulative (never falling as le grows), +Inf equal to _count."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for s in family.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        if s.name.endswith("_bucket"):
            series.setdefault(key, []).append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            counts[key] = s.value
    assert series and set(series) == set(counts), family.name
    for key, buckets in series.items():
        buckets.sort()
        values = [v for _, v in buckets]
        assert values == sorted(values), (family.name, key, buckets)
        assert buckets[-1] == (float("inf"), counts[key]), (family.name, key)


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


def test_ris_status_cli(server: Server, client: Client) -> None:
    client.generate("Hi", max_tokens=4, ignore_eos=True)  # finished within the throughput window
    lines = ris_status(server.url).splitlines()
    assert lines[0].split()[:3] == ["lane", "state", "pid"] and "cancel" in lines[0].split()
    states = ("idle", "busy", "prefill", "decode", "yielding")
    assert any(line.startswith("llm") and line.split()[1] in states for line in lines)
    assert any(line.startswith("image") and line.split()[1] in states for line in lines)
    throughput = [line for line in lines if "throughput over the last 60 s" in line]
    assert any("generated tokens/s" in line and "tasks/s" in line for line in throughput), lines


@pytest.mark.parametrize("flags", [[], ["--json"]], ids=["table", "json"])
def test_ris_status_into_a_pipe_its_reader_closed_prints_no_traceback(
    server: Server, flags: list[str]
) -> None:
    command = [sys.executable, "-m", "ris", "status", "--url", server.url, *flags]
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first byte: every write meets EPIPE
    try:
        done = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")
    # As a user types it: `head -1` takes the first line and leaves.
    piped = subprocess.run(
        f"{shlex.join(command)} | head -1", shell=True, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert piped.stderr == "" and piped.stdout.startswith("{" if flags else "lane")


def test_bad_config_refuses_to_start_with_a_clear_message(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('{"lanes": {"llm": {"cores": [99]}, "tts": {}, "image": {}}}')
    out = refused_serve(p)
    assert out.returncode == 2
    assert "lanes.llm.cores: core 99 is not one this server may run on (its CPU affinity: " in out.stderr
    assert "leave out --config for a layout built for this machine" in out.stderr


def test_a_model_loaded_at_start_that_is_not_there_refuses_the_start(tmp_path: Path) -> None:
    """Its worker would fail the load and be restarted in a loop while the server ran on;
    one not loaded at start (preload false) is refused when asked for instead."""
    cfg = make_config(tmp_path)
    cfg["lanes"]["llm"]["models"]["smollm2"]["source"] = "/nonexistent/x.gguf"
    cfg["lanes"]["tts"]["models"]["piper"]["source"] = "package:no_such_voice_pkg"
    path = tmp_path / "missing.json"
    path.write_text(json.dumps(cfg))
    out = refused_serve(path)
    assert out.returncode == 2, out.stderr
    assert "lanes.llm.models.smollm2.source: model source '/nonexistent/x.gguf'" in out.stderr
    assert "the Python package 'no_such_voice_pkg' is not installed" in out.stderr
    assert "Traceback" not in out.stderr
