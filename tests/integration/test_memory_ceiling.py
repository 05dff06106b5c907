"""A worker over its memory ceiling is replaced, its task fails `worker_out_of_memory`, and the
lane serves on; the machine never pays for it. A real server and worker processes, with a test
backend whose memory grows on request (tests/plugins/ris_hog.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest

from .server import Server, with_plugins
from .waiting import finished_task, wait_for

pytestmark = pytest.mark.slow
CEILING_MB = 200


@pytest.fixture(scope="module")
def hog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    echo = {
        "cores": [0],
        "memory_limit_mb": CEILING_MB,
        "default_model": "hog",
        "models": {"hog": {"backend": "hog"}},
    }
    srv = with_plugins(tmp_path_factory.mktemp("hog"), ["ris_echo", "ris_hog"], {"echo": echo})
    yield srv
    srv.stop()


def run(srv: Server, request: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(base_url=srv.url, timeout=60) as http:
        r = http.post("/api/tasks", json={"lane": "echo", "request": request})
        assert r.status_code == 202, r.text
        return finished_task(http, r.json()["task_id"], 60)


def worker(srv: Server) -> dict[str, Any]:
    w: dict[str, Any] = httpx.get(f"{srv.url}/api/stats").json()["lanes"]["echo"]["worker"]
    return w


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def ready(srv: Server) -> bool:
    return bool(httpx.get(f"{srv.url}/ready").json()["lanes"]["echo"])


def test_memory_that_grows_past_the_ceiling_is_stopped_by_the_watchdog(hog: Server) -> None:
    first = worker(hog)
    assert first["memory_limit_bytes"] == CEILING_MB * 2**20
    task = run(hog, {"text": "grow", "times": 60})  # 600 MiB if nothing stopped it
    assert task["state"] == "failed" and task["error"]["code"] == "worker_out_of_memory"
    assert f"ceiling of {CEILING_MB} MiB" in task["error"]["message"]
    # SIGKILL is sent before the task fails, but a process unmapping 200 MiB takes a moment to go.
    wait_for(lambda: gone(first["pid"]), 10)
    wait_for(lambda: ready(hog), 60)
    again = run(hog, {"text": "still here"})
    assert again["state"] == "succeeded" and again["result"]["text"] == "still here"
    assert worker(hog)["restarts"] >= 1


def test_an_allocation_too_big_for_the_ceiling_fails_at_once(hog: Server) -> None:
    wait_for(lambda: ready(hog), 60)
    task = run(hog, {"text": "spike"})  # 4 GiB in one request: refused by the OS limit
    assert task["state"] == "failed" and task["error"]["code"] == "worker_out_of_memory"
    wait_for(lambda: ready(hog), 60)
    assert run(hog, {"text": "ok"})["state"] == "succeeded"
