"""The pyttsx3 backend behind a real server: English and Chinese asked for at the same time, each
answered with its own speech, and a TTS lane that configures it beside espeak is refused."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from .server import Server, make_config

pytestmark = pytest.mark.slow

ENGLISH = "The quick brown fox jumps over the lazy dog."
CHINESE = "这是一段测试文本"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("pyttsx3")
    tts = {
        "default_model": "pyttsx3",
        "models": {"pyttsx3": {"backend": "pyttsx3", "description": "pyttsx3 on espeak-ng 1.52"}},
    }
    cfg = make_config(tmp, llm={"enabled": False}, image={"enabled": False}, tts=tts)
    srv = Server(tmp, cfg).start()
    yield srv
    srv.stop()


def synthesize(url: str, text: str, voice: str) -> tuple[dict[str, object], bytes]:
    body = {"text": text, "voice": voice, "model": "pyttsx3", "speed": 1.0}
    r = httpx.post(f"{url}/api/tts/synthesize", json=body, timeout=120)
    assert r.status_code == 200, r.text
    meta = r.json()
    audio = httpx.get(f"{url}{meta['audio_url']}", timeout=30)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    return meta, audio.content


def pcm(data: bytes) -> tuple[int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as wf:
        assert wf.getnchannels() == 1 and wf.getsampwidth() == 2
        return wf.getframerate(), np.frombuffer(wf.readframes(wf.getnframes()), dtype="<i2")


def test_english_and_chinese_under_concurrent_requests(server: Server) -> None:
    # pyttsx3 is not safe to call concurrently: eight requests at once must all be answered,
    # one at a time in the worker, each with the speech of its own text.
    jobs = [(ENGLISH, "en-US"), (CHINESE, "zh-CN")] * 4
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: synthesize(server.url, *job), jobs))
    durations: dict[str, list[float]] = {"en-US": [], "zh-CN": []}
    for (_, voice), (meta, audio) in zip(jobs, answers, strict=True):
        assert meta["model"] == "pyttsx3"
        assert meta["voice"] == ("en-us" if voice == "en-US" else "cmn")
        rate, samples = pcm(audio)
        assert rate == meta["sample_rate"] == 22050
        assert float(np.abs(samples).mean()) > 100  # speech, not silence
        durations[voice].append(len(samples) / rate)
    # Nine English words and eight Chinese syllables: each one to five seconds, and the same
    # text gives the same length whichever request it rode in (no audio mixed between them).
    for voice, lengths in durations.items():
        assert all(1.0 < d < 5.0 for d in lengths), (voice, lengths)
        assert max(lengths) - min(lengths) < 0.1, (voice, lengths)


def test_speed_changes_the_length(server: Server) -> None:
    slow = httpx.post(
        f"{server.url}/api/tts/synthesize",
        json={"text": ENGLISH, "voice": "en-US", "model": "pyttsx3", "speed": 0.75},
        timeout=120,
    ).json()
    fast = httpx.post(
        f"{server.url}/api/tts/synthesize",
        json={"text": ENGLISH, "voice": "en-US", "model": "pyttsx3", "speed": 1.5},
        timeout=120,
    ).json()
    assert fast["duration_s"] < slow["duration_s"] * 0.8


def test_a_voice_it_does_not_have_is_refused(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/api/tts/synthesize",
        json={"text": "Hello.", "voice": "xx-klingon", "model": "pyttsx3"},
        timeout=60,
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_voice"


def test_beside_espeak_in_one_lane_is_refused(tmp_path: Path) -> None:
    # Both drive the one libespeak-ng of the worker process; sharing it hung or cut audio short.
    tts = {
        "default_model": "espeak",
        "models": {"espeak": {"backend": "espeak"}, "pyttsx3": {"backend": "pyttsx3"}},
    }
    cfg = make_config(tmp_path, llm={"enabled": False}, image={"enabled": False}, tts=tts)
    srv = Server(tmp_path, cfg)
    # Refused when the config loads, before any worker starts (`ris serve` exits 2 saying why).
    with pytest.raises(RuntimeError, match="both drive libespeak-ng.*one of them per TTS lane"):
        srv.start()
