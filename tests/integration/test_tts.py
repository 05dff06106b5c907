"""The TTS lane end to end: Piper (English) and espeak-ng 1.52 (Chinese), valid WAV files."""

from __future__ import annotations

import io
import json
import sqlite3
import wave
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from ris import Client, RISError

from .server import Server

pytestmark = pytest.mark.slow


def wav_info(data: bytes) -> tuple[int, int, float, bytes]:
    with wave.open(io.BytesIO(data)) as wf:
        frames = wf.readframes(wf.getnframes())
        return wf.getnchannels(), wf.getframerate(), wf.getnframes() / wf.getframerate(), frames


def loudness(frames: bytes) -> float:
    import numpy as np

    return float(np.abs(np.frombuffer(frames, dtype="<i2")).mean())


def test_english_sentence_is_a_plausible_wav(client: Client) -> None:
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    speech = client.synthesize(text, voice="en-US")
    channels, rate, duration, frames = wav_info(speech.audio)
    assert speech.model == "piper" and channels == 1 and rate == speech.sample_rate == 22050
    # 13 words at a normal speaking rate: roughly 2.5 to 6 seconds.
    assert 2.0 < duration < 7.0
    assert abs(duration - speech.duration_s) < 0.05
    assert loudness(frames) > 100  # not silence


def test_chinese_sentence_uses_espeak_cmn(client: Client) -> None:
    speech = client.synthesize("这是一段测试文本", voice="zh-CN")
    _, rate, duration, frames = wav_info(speech.audio)
    assert speech.model == "espeak" and speech.voice == "cmn"
    # Eight syllables: about one to four seconds.
    assert 1.0 < duration < 4.0 and rate == 22050
    assert loudness(frames) > 100


def test_chinese_text_without_a_voice_is_read_by_a_chinese_voice(server: Server) -> None:
    """The default voice (Piper's English) read it as "Chinese letter" eight times, with a 200."""
    r = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": "这是一段测试文本"}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "espeak" and body["voice"] == "cmn"
    assert len(body["warnings"]) == 1 and "Chinese" in body["warnings"][0]
    r = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": "Hello there."}, timeout=60)
    assert r.json()["model"] == "piper" and r.json()["warnings"] == []
    slow = {"text": "Hello there.", "model": "espeak", "speed": 0.3}  # espeak's slowest is 0.46
    r = httpx.post(f"{server.url}/api/tts/synthesize", json=slow, timeout=60)
    assert r.status_code == 200 and r.json()["warnings"][0].startswith("speed: espeak-ng speaks at 0.46")
    # Audio bytes answered: the same warnings, in a header (a JSON array).
    r = httpx.post(f"{server.url}/api/tts/synthesize", json=slow, headers={"Accept": "audio/wav"}, timeout=60)
    assert r.status_code == 200 and json.loads(r.headers["x-warnings"])[0].startswith("speed: espeak-ng")
    speech = {"model": "tts-1", "voice": "cmn", "input": "Hello there.", "speed": 3.0}
    r = httpx.post(f"{server.url}/v1/audio/speech", json=speech, timeout=60)
    assert r.status_code == 200 and json.loads(r.headers["x-warnings"])[0].startswith("speed: espeak-ng")
    quiet = httpx.post(
        f"{server.url}/api/tts/synthesize", json={"text": "Hi."}, headers={"Accept": "audio/wav"}, timeout=60
    )
    assert quiet.status_code == 200 and "x-warnings" not in quiet.headers


def test_speed_is_honoured(client: Client) -> None:
    text = "Speaking faster makes the audio shorter."
    slow = client.synthesize(text, voice="zh-CN", model="espeak", speed=0.75)
    fast = client.synthesize(text, voice="zh-CN", model="espeak", speed=1.5)
    assert fast.duration_s < slow.duration_s * 0.8


def test_wav_bytes_directly_with_accept_header(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/api/tts/synthesize",
        json={"text": "Hello."},
        headers={"accept": "audio/wav"},
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert wav_info(r.content)[2] > 0.3
    task = httpx.get(f"{server.url}/api/tasks/{r.headers['x-task-id']}", timeout=10).json()
    assert task["state"] == "succeeded" and task["lane"] == "tts"


def test_synthesize_to_file(client: Client, tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "out.wav"
    client.synthesize("Saved to a file.", path=path)
    assert wav_info(path.read_bytes())[2] > 0.5


def test_unknown_voice_says_what_exists(client: Client) -> None:
    with pytest.raises(RISError) as exc:
        client.synthesize("hello", voice="xx-klingon")
    assert exc.value.status == 422 and exc.value.code == "unknown_voice"
    assert "en-US" in exc.value.message


def test_a_named_model_refuses_a_voice_it_does_not_have(server: Server) -> None:
    # Piper's English model used to answer "zh-CN" with English speech and a 200.
    body = {"text": "Hello there.", "voice": "zh-CN", "model": "piper"}
    r = httpx.post(f"{server.url}/api/tts/synthesize", json=body, timeout=60)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_voice" and "'piper'" in error["message"]
    assert "'zh-CN'" in error["message"]
    assert "en_US-joe-medium" in error["message"] and "en-US" in error["message"]  # what it does speak


def test_espeak_answers_to_the_tags_it_lists(client: Client) -> None:
    # en-GB was listed but espeak-ng could not select it; zh-TW it took, but did not list.
    assert client.synthesize("Good morning.", voice="en-GB", model="espeak").duration_s > 0.3
    speech = client.synthesize("早上好", voice="zh-TW")
    assert speech.model == "espeak" and speech.voice == "cmn"


def test_empty_and_oversize_text(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": ""}, timeout=10)
    assert r.status_code == 422
    r = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": "a" * 6000}, timeout=10)
    assert r.status_code == 413 and "5000" in r.json()["error"]["message"]


def test_audio_of_unknown_task(server: Server) -> None:
    r = httpx.get(f"{server.url}/api/tts/audio/{'0' * 32}", timeout=10)
    assert r.status_code == 404
    r = httpx.get(f"{server.url}/api/tts/audio/..%2f..%2fetc%2fpasswd", timeout=10)
    assert r.status_code == 404


@pytest.mark.parametrize("voice", ["en-US", "zh-CN"])
def test_control_characters_are_spoken_around_not_a_server_error(client: Client, voice: str) -> None:
    # Found by the fuzzer: a NUL in the text reached the speech engines' C strings (500).
    speech = client.synthesize("Hello\x00 there\x05, friend\x7f.", voice=voice)
    assert speech.duration_s > 0.3


def tts_task_count(server: Server) -> int:
    return len(httpx.get(f"{server.url}/api/tasks?lane=tts&limit=1000", timeout=10).json()["tasks"])


@pytest.mark.parametrize("accept", ["application/json", "audio/wav"])
def test_text_with_nothing_to_speak_is_refused_before_queueing(server: Server, accept: str) -> None:
    # Was 200 with a second of noise from Piper (it read "!!" aloud) or 14 ms of espeak silence.
    before = tts_task_count(server)
    for text in ("   ...  !!", "\u200b。", "?! - ()"):
        r = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": text}, headers={"accept": accept})
        assert r.status_code == 422 and r.json()["error"]["code"] == "nothing_to_speak", r.text
        assert "letter, digit or symbol" in r.json()["error"]["message"]
    assert tts_task_count(server) == before  # decided before anything was queued


@pytest.mark.parametrize("model", ["piper", "espeak"])
def test_text_the_engine_has_no_sound_for_is_an_error_not_silence(server: Server, model: str) -> None:
    # An Arabic-Indic digit: a character both engines have no sound for (Piper gives no
    # samples, espeak-ng 154 silent ones). Was 200 and a WAV of 0 or 0.007 s.
    r = httpx.post(
        f"{server.url}/api/tts/synthesize",
        json={"text": "\u0663", "model": model},
        headers={"accept": "audio/wav"},
        timeout=60,
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "synthesis_empty" and "has no sound for its characters" in error["message"]
    task = httpx.get(f"{server.url}/api/tasks?lane=tts&limit=1", timeout=10).json()["tasks"][0]
    assert task["state"] == "failed" and task["error"]["code"] == "synthesis_empty"


def _stored(server: Server, task_id: str) -> bool:
    """Whether the server's task store has a row for the task (read beside the server: WAL)."""
    db = Path(server.config["data_dir"]) / "tasks.db"
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT 1 FROM tasks WHERE id=?", (task_id,)).fetchone() is not None


def test_streamed_speech_leaves_no_file_or_record_while_a_synthesis_keeps_its_file(server: Server) -> None:
    audio = Path(server.config["data_dir"]) / "audio"
    with httpx.stream(
        "POST",
        f"{server.url}/v1/audio/speech",
        json={"model": "tts-1", "input": "Streamed and gone.", "voice": "alloy", "response_format": "pcm"},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        streamed = r.headers["X-Task-Id"]
        pcm = r.read()
    assert len(pcm) > 1000  # the whole speech came, read back from a file deleted as it ended
    assert not (audio / f"{streamed}.wav").exists()
    assert not _stored(server, streamed)
    gone = httpx.get(f"{server.url}/api/tts/audio/{streamed}", timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"

    # The native API asks for a file: it is there, recorded, and fetchable by its URL.
    r = httpx.post(f"{server.url}/api/tts/synthesize", json={"text": "Kept as a file."}, timeout=60)
    assert r.status_code == 200, r.text
    kept = r.json()["task_id"]
    assert (audio / f"{kept}.wav").is_file() and _stored(server, kept)
    wav = httpx.get(f"{server.url}{r.json()['audio_url']}", timeout=30)
    assert wav.status_code == 200 and wav_info(wav.content)[2] > 0.3
