"""The recipes of docs/DEVELOPER_GUIDE.md, followed once each through the real server: a TTS
engine added as one backend file plus one registration, an LLM backend that batches added the
same way (its abilities declared at registration), and a lane kind added as one module plus one
registration, all loaded from config.json's `plugins`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx
import pytest

from ris import Client
from ris.config.load import load_config
from ris.machine import MachineInfo

from .server import PLUGINS, ROOT, Server, with_plugins
from .waiting import finished_task

pytestmark = pytest.mark.slow
BATCH = 4


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lanes = {  # image is not mentioned: it stays off
        "tts": {"cores": [1], "default_model": "beep", "models": {"beep": {"backend": "tone"}}},
        "echo": {"cores": [0], "default_model": "up", "models": {"up": {"backend": "upper"}}},
        "llm": {
            "cores": [0],
            "exclusive_cores": False,  # shares the echo lane's core: this machine may have two
            "parallel": BATCH,
            "default_model": "lock",
            "models": {"lock": {"backend": "lockstep"}},
        },
    }
    srv = with_plugins(tmp_path_factory.mktemp("recipes"), ["ris_tone", "ris_lockstep", "ris_echo"], lanes)
    yield srv
    srv.stop()


def test_a_new_tts_engine_speaks_through_the_api(plugged: Server) -> None:
    assert httpx.get(f"{plugged.url}/ready").json()["lanes"] == {"tts": True, "echo": True, "llm": True}
    with Client(plugged.url, max_retries=0) as c:
        speech = c.synthesize("abc", voice="tone")
        assert speech.model == "beep" and speech.sample_rate == 16_000
        assert speech.duration_s == pytest.approx(0.3)
        assert len(speech.audio) == 44 + 3 * 1600 * 2  # a WAV header and 3 x 100 ms of 16-bit PCM
        beep = c.models()["lanes"]["tts"][0]
        assert beep["name"] == "beep" and beep["voices"] == ["tone", "en-US"]


def test_a_new_llm_backend_batches_concurrent_requests(plugged: Server) -> None:
    def generate(prompt: str) -> dict[str, Any]:
        body = {"prompt": prompt, "max_tokens": 8}
        r = httpx.post(f"{plugged.url}/api/llm/generate", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return cast(dict[str, Any], r.json())

    with ThreadPoolExecutor(BATCH) as pool:
        answers = list(pool.map(generate, [f"request {n}" for n in range(BATCH)]))
    # Each token is the size of the batch it was decoded in (tests/plugins/ris_lockstep.py).
    sizes = [[int(token) for token in answer["text"].split()] for answer in answers]
    assert all(
        len(s) == 8 and answer["finish_reason"] == "length" for s, answer in zip(sizes, answers, strict=True)
    )
    assert max(max(s) for s in sizes) > 1, f"no two requests shared a step: {sizes}"
    assert max(max(s) for s in sizes) <= BATCH

    lock = httpx.get(f"{plugged.url}/api/models").json()["lanes"]["llm"][0]
    assert lock["name"] == "lock" and lock["backend"] == "lockstep" and lock["loaded"]
    # Declared at registration: it batches (the lane's parallel), it does not constrain.
    assert lock["parallel"] == BATCH
    assert lock["structured_output"] is False and lock["tools"] == "unsupported"
    refused = httpx.post(
        f"{plugged.url}/api/llm/generate",
        json={"prompt": "x", "json_schema": {"type": "object"}},
        timeout=30,
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "unsupported_for_model"


def test_a_new_lane_runs_tasks_through_the_generic_task_api(plugged: Server) -> None:
    with httpx.Client(base_url=plugged.url, timeout=30) as http:
        r = http.post("/api/tasks", json={"lane": "echo", "request": {"text": "hi", "times": 3}})
        assert r.status_code == 202, r.text
        task = finished_task(http, r.json()["task_id"], 30)
        assert task["state"] == "succeeded" and task["lane"] == "echo" and task["model"] == "up"
        assert task["result"]["text"] == "HI HI HI" and task["result"]["parts"] == 3
        stats = http.get("/api/stats").json()["lanes"]["echo"]
        assert stats["succeeded"] == 1 and stats["worker"]["cpu_affinity"] == [0]

        bad = http.post("/api/tasks", json={"lane": "echo", "request": {"text": "hi", "loud": True}})
        assert bad.status_code == 422 and "unknown field 'loud'" in bad.json()["error"]["message"]
        bad = http.post("/api/tasks", json={"lane": "echo", "request": {"times": "x"}})
        assert bad.status_code == 422 and "request.text: Field required" in bad.json()["error"]["message"]
        bad = http.post("/api/tasks", json={"lane": "tts", "request": {"text": "hi"}})
        assert bad.status_code == 422 and "its own routes" in bad.json()["error"]["message"]


def test_a_config_written_before_the_lane_existed_still_loads() -> None:
    sys.path.insert(0, str(PLUGINS))
    try:
        import ris_echo  # noqa: F401 - registers the echo lane in this process

        cfg = load_config(ROOT / "config.json", MachineInfo(cores=(0, 1), gpus=0))
        assert "echo" in cfg.lanes and not cfg.lanes["echo"].enabled
        assert json.loads((ROOT / "config.json").read_text())["lanes"].keys() == {"llm", "tts", "image"}
    finally:
        from ris import lanes

        lanes.unregister("echo")
        sys.path.remove(str(PLUGINS))
