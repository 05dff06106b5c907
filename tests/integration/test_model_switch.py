"""Several models in one LLM lane, loaded on demand under a RAM budget that holds one: the
embedded SmolLM2 GGUF under two names, a real server and a real worker process. Alternating
requests are all answered with at most one model resident (GET /api/models and the worker's
RSS), a running batch is never cut by a switch, Ollama's keep_alive 0 unloads a model once
idle, and a configured model that can never fit its budget keeps the server from starting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ris.lanes.llm import SMOLLM2_SOURCE

from .server import Server, with_plugins
from .waiting import wait_for

pytestmark = pytest.mark.slow
MIB = 2**20
N_CTX = 512
PARALLEL = 2
# One model: 92 MiB of weights, 2 x 11 MiB of KV cache (n_ctx 512, parallel 2), 48 MiB margin:
# 163 MiB. Two would need 325 MiB.
BUDGET_MB = 200


def _model(**options: Any) -> dict[str, Any]:
    return {"backend": "llama_cpp", "source": SMOLLM2_SOURCE, "options": {"n_ctx": N_CTX, **options}}


def _llm_lane(**extra: Any) -> dict[str, Any]:
    return {
        "cores": [0],
        "threads": 1,
        "parallel": PARALLEL,
        "memory_limit_mb": 1024,
        "memory_budget_mb": BUDGET_MB,
        "default_model": "smol-a",
        "models": {"smol-a": _model(), "smol-b": _model()},
        **extra,
    }


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = with_plugins(tmp_path_factory.mktemp("switch"), [], {"llm": _llm_lane()})
    yield server
    server.stop()


def running_tasks(srv: Server) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = httpx.get(f"{srv.url}/api/tasks", params={"state": "running"}).json()[
        "tasks"
    ]
    return tasks


def models(srv: Server) -> dict[str, dict[str, Any]]:
    listed = httpx.get(f"{srv.url}/api/models").json()["lanes"]["llm"]
    return {m["name"]: m for m in listed}


def resident(srv: Server) -> list[str]:
    return sorted(name for name, m in models(srv).items() if m["loaded"])


def lane_stats(srv: Server) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{srv.url}/api/stats").json()["lanes"]["llm"]
    return stats


def rss(srv: Server) -> int:
    return int(psutil.Process(lane_stats(srv)["worker"]["pid"]).memory_info().rss)


def generate(srv: Server, model: str, max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    body = {"prompt": "Count: one, two, three,", "model": model, "max_tokens": max_tokens, **extra}
    r = httpx.post(f"{srv.url}/api/llm/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_models_list_their_footprint_placement_and_load_time(srv: Server) -> None:
    listed = models(srv)
    a, b = listed["smol-a"], listed["smol-b"]
    assert (a["placement"], a["preload"], a["loaded"]) == ("cpu", True, True)
    assert (b["placement"], b["preload"], b["loaded"]) == ("not_loaded", False, False)
    fp = a["footprint"]
    assert 80 * MIB < fp["weights_bytes"] < 100 * MIB
    assert fp["kv_bytes"] == 23_040 * N_CTX * PARALLEL  # 30 layers x 3 KV heads x 64 x K,V x f16
    assert fp["total_bytes"] == fp["weights_bytes"] + fp["kv_bytes"] + fp["margin_bytes"]
    assert BUDGET_MB * MIB < 2 * fp["total_bytes"]  # the budget holds one, not two
    assert a["last_load_s"] > 0 and b["last_load_s"] is None
    # As the worker counts them: all in RAM on a CPU lane, nothing on a card.
    assert (a["in_ram_bytes"], a["on_gpu_bytes"]) == (fp["total_bytes"], None)
    assert (b["in_ram_bytes"], b["on_gpu_bytes"]) == (None, None)
    assert lane_stats(srv)["models"]["memory_budget_bytes"] == BUDGET_MB * MIB


def test_alternating_requests_are_answered_with_one_model_resident(srv: Server) -> None:
    generate(srv, "smol-a")
    one_model = rss(srv)
    before = lane_stats(srv)["models"]
    order = ["smol-b", "smol-a", "smol-b", "smol-a"]
    for model in order:
        answer = generate(srv, model)
        assert answer["model"] == model and answer["usage"]["completion_tokens"] > 0
        assert resident(srv) == [model]
        # a second model resident would add its KV cache and compute buffers (54 MiB) and its
        # weights' touched pages; half a footprint is far below that and far above noise
        assert rss(srv) < one_model + models(srv)[model]["footprint"]["total_bytes"] // 2
    after = lane_stats(srv)["models"]
    assert after["loads"] - before["loads"] == len(order)
    assert after["evictions"] - before["evictions"] == len(order)
    assert after["resident"] == ["smol-a"]
    assert models(srv)["smol-b"]["last_load_s"] > 0
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'ris_model_loads_total{lane="llm",model="smol-b"}' in metrics
    assert 'ris_model_unloads_total{lane="llm",model="smol-a",reason="evicted"}' in metrics


def test_a_switch_waits_for_the_running_batch_to_drain(srv: Server) -> None:
    generate(srv, "smol-a")  # resident
    http = httpx.Client(base_url=srv.url, timeout=120)
    long_body = {"prompt": "Tell me a long story about a cat.", "model": "smol-a", "max_tokens": 120}
    long_body |= {"stream": True, "temperature": 0}
    first_token = threading.Event()
    long_done: dict[str, Any] = {}

    def stream_long() -> None:
        with http.stream("POST", "/api/llm/generate", json=long_body) as r:
            for line in r.iter_lines():
                if line.startswith("event: token"):
                    first_token.set()
                if line.startswith("data:") and '"finish_reason"' in line:
                    long_done.update(json.loads(line[5:]))

    t = threading.Thread(target=stream_long)
    t.start()
    assert first_token.wait(60)  # the batch runs model a
    switched: dict[str, Any] = {}
    s = threading.Thread(target=lambda: switched.update(generate(srv, "smol-b")))
    s.start()  # dispatched to the second slot, held until a drains

    def held() -> dict[str, Any] | None:
        running = http.get("/api/tasks", params={"lane": "llm", "state": "running"}).json()["tasks"]
        return next((task for task in running if task["model"] == "smol-b"), None)

    # While a's batch runs, the switch's task is running as the scheduler counts it and says
    # what it waits for, its ETA counting the load.
    seen = []
    while not long_done and t.is_alive():
        view = held()
        if view is not None:
            seen.append(view)
        time.sleep(0.02)
    waiting = [v for v in seen if v["waiting_for"] == "model_load"]
    assert waiting, seen
    assert all(v["eta_s"] is not None and v["eta_s"] > 0 for v in waiting), waiting
    t.join(120)
    s.join(120)
    assert long_done["finish_reason"] == "length" and long_done["usage"]["completion_tokens"] == 120
    assert switched["usage"]["completion_tokens"] > 0
    assert http.get(f"/api/tasks/{switched['task_id']}").json()["waiting_for"] is None
    long_task = http.get(f"/api/tasks/{long_done['task_id']}").json()
    events = httpx.get(f"{srv.url}/api/console/state").json()["model_events"]
    evicted = [e for e in events if e["event"] == "evicted" and e["model"] == "smol-a"][-1]
    assert evicted["time"] >= long_task["finished_at"]  # a left only after its batch ended
    http.close()


def test_ollama_keep_alive_zero_unloads_once_idle(srv: Server) -> None:
    generate(srv, "smol-a")
    before = lane_stats(srv)["models"]["expiries"]
    body = {
        "model": "smol-a",
        "prompt": "Hi",
        "stream": False,
        "keep_alive": 0,
        "options": {"num_predict": 4},
    }
    r = httpx.post(f"{srv.url}/api/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    wait_for(lambda: resident(srv) == [], 30)
    assert lane_stats(srv)["models"]["expiries"] == before + 1
    bad = httpx.post(f"{srv.url}/api/generate", json={**body, "keep_alive": "soon"}, timeout=30)
    assert bad.status_code == 400 and "keep_alive 'soon' is not a duration" in bad.text
    # Ollama's load (nothing to generate, as `ollama run` sends first) answers once it is
    # loaded: it answered at once, loading nothing.
    load = httpx.post(f"{srv.url}/api/generate", json={"model": "smol-a"}, timeout=120)
    assert load.status_code == 200 and load.json()["done_reason"] == "load", load.text
    assert resident(srv) == ["smol-a"]
    generate(srv, "smol-a")
    assert resident(srv) == ["smol-a"]


def test_ollama_ps_says_when_keep_alive_unloads_a_model(srv: Server) -> None:
    """`ollama ps`'s UNTIL: the lane keeps models for ever (its NEVER) until a request asks
    for a keep_alive, which counts from that request's end; -1 is for ever again."""

    def expires_at(model: str) -> str:
        running = httpx.get(f"{srv.url}/api/ps", timeout=30).json()["models"]
        found: str = next(m["expires_at"] for m in running if m["name"] == f"{model}:latest")  # tagged
        return found

    def ollama_generate(keep_alive: str | int) -> None:
        body = {"model": "smol-a", "prompt": "Hi", "stream": False, "keep_alive": keep_alive}
        r = httpx.post(f"{srv.url}/api/generate", json=body | {"options": {"num_predict": 2}}, timeout=120)
        assert r.status_code == 200, r.text

    never = "2318-01-01T00:00:00Z"
    generate(srv, "smol-a")
    assert expires_at("smol-a") == never
    ollama_generate("5m")
    ended = time.time()
    # The worker tells the server right after the task's end: a moment after its answer.
    wait_for(lambda: expires_at("smol-a") != never, 10)
    until = datetime.fromisoformat(expires_at("smol-a")).timestamp()
    assert ended + 300 - 5 < until < ended + 300 + 5, until - ended
    ollama_generate(-1)
    wait_for(lambda: expires_at("smol-a") == never, 10)


def test_a_model_that_can_never_fit_refuses_the_start(tmp_path: Path) -> None:
    lane = _llm_lane()
    lane["models"]["smol-long"] = _model(n_ctx=8192)  # KV 2 x 180 MiB: over the 200 MiB alone
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "data"), "lanes": {"llm": lane}}))
    done = subprocess.run(
        [sys.executable, "-m", "ris", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2  # a configuration error
    assert (
        "lanes.llm.models.smol-long needs 500 MiB (weights 92 MiB, KV cache 360 MiB, working margin 48 MiB) "
        "but the lane's RAM budget is 200 MiB" in done.stderr
    )


def test_the_console_shows_footprints_and_model_events(srv: Server) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(srv.url + "/ui")
            generate(srv, "smol-b")  # a switch while the overview polls
            expect(page.locator("#events")).to_contain_text("llm: model smol-b loaded in", timeout=30_000)
            expect(page.locator("#events")).to_contain_text("llm: model smol-a evicted")
            page.goto(srv.url + "/ui/models")
            b_memory = page.locator('tr[data-model="smol-b"] td.memory')
            expect(b_memory).to_contain_text(
                re.compile(r"^cpu, 16\d\.\d MiB \(weights 92\.1 MiB, KV 22\.5 MiB\)$")
            )
            expect(page.locator('tr[data-model="smol-a"] td.memory')).to_contain_text("not loaded, 16")
            # A request held for a switch: the work page's running table says it waits for
            # its model's load (smol-b's long batch runs; smol-a loads once that drains).
            page.goto(srv.url + "/ui/work")
            body = {"prompt": "Tell a long story.", "model": "smol-b", "max_tokens": 400, "ignore_eos": True}
            long = threading.Thread(
                target=lambda: httpx.post(f"{srv.url}/api/llm/generate", json=body, timeout=120)
            )
            long.start()
            wait_for(lambda: any(t["model"] == "smol-b" for t in running_tasks(srv)), timeout=30)
            switch = threading.Thread(target=lambda: generate(srv, "smol-a"))
            switch.start()
            expect(page.locator("#running")).to_contain_text("loading smol-a", timeout=15_000)
            long.join(120)
            switch.join(120)
            assert not errors, errors
        finally:
            browser.close()
