"""The two recipes of docs/DEVELOPER_GUIDE.md, followed once each through the real server: a TTS
engine added as one backend file plus one registration, and a lane kind added as one module
plus one registration, both loaded from config.json's `plugins`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator

import httpx
import pytest

from ris import Client
from ris.config.load import load_config
from ris.machine import MachineInfo

from .server import PLUGINS, ROOT, Server, with_plugins
from .waiting import finished_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def plugged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    lanes = {  # llm and image are not mentioned: they stay off
        "tts": {"cores": [1], "default_model": "beep", "models": {"beep": {"backend": "tone"}}},
        "echo": {"cores": [0], "default_model": "up", "models": {"up": {"backend": "upper"}}},
    }
    srv = with_plugins(tmp_path_factory.mktemp("recipes"), ["ris_tone", "ris_echo"], lanes)
    yield srv
    srv.stop()


def test_a_new_tts_engine_speaks_through_the_api(plugged: Server) -> None:
    assert httpx.get(f"{plugged.url}/ready").json()["lanes"] == {"tts": True, "echo": True}
    with Client(plugged.url, max_retries=0) as c:
        speech = c.synthesize("abc", voice="tone")
        assert speech.model == "beep" and speech.sample_rate == 16_000
        assert speech.duration_s == pytest.approx(0.3)
        assert len(speech.audio) == 44 + 3 * 1600 * 2  # a WAV header and 3 x 100 ms of 16-bit PCM
        beep = c.models()["lanes"]["tts"][0]
        assert beep["name"] == "beep" and beep["voices"] == ["tone", "en-US"]


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
