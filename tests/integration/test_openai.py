"""The unmodified `openai` Python package against the real server and default models."""

from __future__ import annotations

import base64
import io
import json
import struct
import wave
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from .server import Server

if TYPE_CHECKING:
    from openai import OpenAI

openai = pytest.importorskip("openai", reason="the openai package is a test dependency")
pytestmark = pytest.mark.slow

SKY = [{"role": "user", "content": "What color is the sky on a clear day?"}]


@pytest.fixture()
def oa(server: Server) -> Iterator[OpenAI]:
    # Closed after the test: its connection pool's sockets are not left to the collector.
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_model_list(oa: OpenAI) -> None:
    ids = {m.id for m in oa.models.list()}
    assert {"smollm2", "piper", "espeak", "tiny-sd"} <= ids


def test_chat_completion(oa: OpenAI) -> None:
    r = oa.chat.completions.create(model="smollm2", messages=SKY, temperature=0, max_tokens=40, seed=1)
    assert r.object == "chat.completion" and r.model == "smollm2"
    text = r.choices[0].message.content or ""
    assert "blue" in text.lower() and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 5


def test_a_prompt_in_a_language_the_model_does_not_write_is_warned_of(oa: OpenAI) -> None:
    """/api/llm/generate warned; /v1 answered the same prompt saying nothing (README: answers
    carry warnings where the server served something other than asked)."""
    chinese = [{"role": "user", "content": "你好，请介绍一下自己"}]
    plain = oa.chat.completions.with_raw_response.create(model="smollm2", messages=chinese, max_tokens=2)
    with oa.chat.completions.with_streaming_response.create(
        model="smollm2", messages=chinese, max_tokens=2, stream=True
    ) as streamed:
        streamed.read()
    for headers in (plain.headers, streamed.headers):
        (note,) = json.loads(headers["x-warnings"])
        assert "the prompt is Chinese ('zh')" in note and "writes en only" in note, note
    english = oa.completions.with_raw_response.create(model="smollm2", prompt="The sky is", max_tokens=2)
    assert "x-warnings" not in english.headers
    # Each answer names its task, streamed or not; OpenAI's SDK reads x-request-id as its id.
    for raw in (plain, streamed, english):
        assert raw.headers["x-task-id"] and raw.headers["x-request-id"] == raw.headers["x-task-id"]
    assert english.parse()._request_id == english.headers["x-task-id"]


def test_streamed_chat_joins_into_the_same_text(oa: OpenAI) -> None:
    whole = oa.chat.completions.create(model="smollm2", messages=SKY, temperature=0, max_tokens=30, seed=2)
    stream = oa.chat.completions.create(
        model="smollm2",
        messages=SKY,
        temperature=0,
        max_tokens=30,
        seed=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )


def test_a_chat_without_max_tokens_runs_to_the_context_as_on_openai(oa: OpenAI) -> None:
    """No max_tokens: until the model stops or its context (config.json: 2048) is full, not a
    cap of the server's own (it was 256). A long prompt leaves ~300 tokens; ignore_eos spends them."""
    long = [{"role": "user", "content": "The sea is wide. " * 340 + "Say more."}]
    r = oa.chat.completions.create(
        model="smollm2", messages=long, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.usage is not None and r.choices[0].finish_reason == "length", r.usage
    assert r.usage.completion_tokens > 256 and r.usage.prompt_tokens + r.usage.completion_tokens == 2048, (
        r.usage
    )


def test_text_completion(oa: OpenAI) -> None:
    r = oa.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 5


def test_speech_is_valid_wav(oa: OpenAI) -> None:
    resp = oa.audio.speech.create(
        model="tts-1", voice="alloy", input="Hello from the speech lane.", response_format="wav"
    )
    data = resp.content
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    with wave.open(io.BytesIO(data)) as wf:
        assert (wf.getnchannels(), wf.getsampwidth(), wf.getframerate()) == (1, 2, 22050)
        frames = wf.readframes(wf.getnframes())
    assert len(frames) == len(data) - 44 and len(frames) / 2 / 22050 > 0.8


def test_speech_pcm(oa: OpenAI, server: Server) -> None:
    pcm = oa.audio.speech.create(model="tts-1", voice="nova", input="Raw samples.", response_format="pcm")
    assert len(pcm.content) > 22050 and len(pcm.content) % 2 == 0
    assert pcm.response.headers["content-type"] == "audio/pcm"  # the other formats: test_speech_formats.py
    # OpenAI's pcm is 24 kHz, as its clients play it: the voice's 22.05 kHz resampled, the
    # same speech as the wav of the same input (its length within a few ms). espeak-ng says a
    # text the same way each time (Piper's pace varies a few percent between runs).
    assert pcm.response.headers["x-sample-rate"] == "24000"
    pcm, wav = (
        oa.audio.speech.create(model="espeak", voice="en-US", input="Raw samples.", response_format=fmt)
        for fmt in ("pcm", "wav")
    )
    rate = int(wav.response.headers["x-sample-rate"])
    seconds = (len(wav.content) - 44) / 2 / rate
    assert rate != 24000 and pcm.response.headers["x-sample-rate"] == "24000"
    assert abs(len(pcm.content) / 2 / 24000 - seconds) < 0.01, (len(pcm.content), seconds)


def test_speech_with_nothing_to_speak_is_a_400_in_openai_shape(server: Server) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "   ...  !!", "response_format": "wav"}
    r = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 400, (r.status_code, r.content[:60])  # was 200 and a second of noise
    err = r.json()["error"]
    assert err["code"] == "nothing_to_speak" and err["param"] == "input"
    assert err["type"] == "invalid_request_error" and "letter, digit or symbol" in err["message"]


@pytest.mark.parametrize("response_format", ["wav", "pcm", "mp3"])
def test_speech_the_engine_has_no_sound_for_is_an_error_not_an_empty_wav(
    oa: OpenAI, response_format: str
) -> None:
    # The engine has no sound for an Arabic-Indic digit: was 200 with a WAV header and no samples.
    with pytest.raises(openai.BadRequestError) as exc:  # OpenAI's status for what the input asks
        oa.audio.speech.create(model="tts-1", voice="alloy", input="\u0663", response_format=response_format)
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "synthesis_empty"
    assert body["type"] == "invalid_request_error"


def test_speech_refuses_a_voice_the_named_model_does_not_have(server: Server) -> None:
    body = {"model": "piper", "voice": "zh-CN", "input": "Hello there.", "response_format": "wav"}
    r = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 400, r.content[:60]  # was 200 and English speech
    err = r.json()["error"]
    assert err["code"] == "unknown_voice" and err["param"] == "voice" and "en_US-joe-medium" in err["message"]


def test_image_b64_decodes_to_a_png_of_the_asked_size(oa: OpenAI) -> None:
    r = oa.images.generate(model="tiny-sd", prompt="a red apple", size="128x64", response_format="b64_json")
    png = base64.b64decode(r.data[0].b64_json or "")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (128, 64)


def test_image_url_points_at_the_result(oa: OpenAI) -> None:
    r = oa.images.generate(prompt="a boat", size="64x64", response_format="url")
    url = r.data[0].url or ""
    assert "/api/image/result/" in url
    assert httpx.get(url, timeout=10).content[:4] == b"\x89PNG"


def test_image_answers_name_their_tasks_take_any_seed_and_warn_of_a_cut_prompt(
    oa: OpenAI, server: Server
) -> None:
    """A /v1 client could not find its pictures' tasks (no X-Task-Id), a seed of -1 was a 400
    where the reference says any 64-bit integer, and a prompt longer than CLIP reads was cut
    in silence (said on /api/image/generate only)."""
    long_prompt = " ".join(["a small red boat on a calm blue sea at dawn"] * 12)
    raw = oa.images.with_raw_response.generate(
        prompt=long_prompt, size="64x64", n=2, response_format="url", extra_body={"seed": -1}
    )
    ids = raw.headers["x-task-id"].split(",")
    assert len(ids) == 2 and raw.headers["x-request-id"] == ids[0]
    tasks = [httpx.get(f"{server.url}/api/tasks/{i}", timeout=10).json() for i in ids]
    assert [t["result"]["seed"] for t in tasks] == [2**32 - 1, 0], tasks  # -1 and -1 + 1, modulo 2^32
    (note,) = json.loads(raw.headers["x-warnings"])
    assert note.startswith("prompt: ") and "(CLIP) reads the first" in note


def test_a_named_voice_model_without_the_inputs_language_names_the_one_with_it(oa: OpenAI) -> None:
    """model piper, voice alloy, a Chinese input: spoken by piper as English, and the warning
    said "no loaded voice reads" zh-CN while espeak, loaded beside it, reads it."""
    oa.audio.speech.create(model="espeak", voice="zh-CN", input="你好。", response_format="wav")  # loaded
    r = oa.audio.speech.with_raw_response.create(
        model="piper", voice="alloy", input="你好，今天天气很好。", response_format="wav"
    )
    (note,) = json.loads(r.headers["x-warnings"])
    assert "'piper' has no voice for the input's language ('zh-CN'; model 'espeak' has)" in note, note


def test_media_models_are_openais_names_or_ours_never_a_quiet_substitute(oa: OpenAI) -> None:
    """tts-1 or dall-e-3 (what OpenAI's clients send) mean the lane's default; a name that is
    neither OpenAI's nor configured is a 404 listing the lane's models."""
    wav = oa.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hi.", response_format="wav")
    assert wav.content[:4] == b"RIFF"
    with pytest.raises(openai.BadRequestError) as exc:  # ours, on another lane: named as such
        oa.audio.speech.create(model="smollm2", voice="alloy", input="Hi.", response_format="wav")
    assert "smollm2 is an llm model" in str(exc.value) and "tts models: piper, espeak" in str(exc.value)
    r = oa.images.generate(model="dall-e-3", prompt="a boat", size="64x64", response_format="b64_json")
    assert base64.b64decode(r.data[0].b64_json or "")[:4] == b"\x89PNG"
    with pytest.raises(openai.NotFoundError) as exc:
        oa.images.generate(model="sd-9000", prompt="a boat", size="64x64")
    assert "image models: tiny-sd" in str(exc.value) and exc.value.param == "model"


def test_unknown_model_is_an_openai_error(oa: OpenAI, server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        oa.chat.completions.create(model="gpt-4o", messages=SKY)
    assert exc.value.status_code == 404
    # A refusal names itself too, as OpenAI's do: what a user quotes in a report (was None).
    assert exc.value.request_id and exc.value.request_id.startswith("req_")
    body = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "gpt-4o", "messages": SKY}).json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "smollm2" in body["error"]["message"]


def test_models_retrieve_and_a_model_of_another_lane_named_as_such(oa: OpenAI) -> None:
    assert oa.models.retrieve("smollm2").owned_by == "ris:llm"
    assert oa.models.retrieve("piper").owned_by == "ris:tts"
    # Named as Ollama's /api/tags lists it, as chat takes it (it was 404 here alone).
    assert oa.models.retrieve("smollm2:latest").id == "smollm2:latest"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("piper:latest")  # Ollama's tag names LLMs only
    with pytest.raises(openai.NotFoundError) as nf:
        oa.models.retrieve("gpt-4o")
    assert "smollm2" in str(nf.value)
    with pytest.raises(openai.BadRequestError) as exc:  # a speech model picked in a chat UI
        oa.chat.completions.create(model="piper", messages=SKY)
    assert exc.value.code == "model_wrong_lane" and exc.value.param == "model"
    assert "piper is a tts model" in str(exc.value) and "llm models: smollm2" in str(exc.value)


def test_nothing_is_silently_ignored(oa: OpenAI) -> None:
    """A typo, a feature we lack and a part the model cannot read are each a 400 naming them;
    bookkeeping fields pass."""
    with pytest.raises(openai.BadRequestError) as exc:
        oa.chat.completions.create(model="smollm2", messages=SKY, extra_body={"max_token": 5})
    assert exc.value.code == "unknown_parameter" and exc.value.param == "max_token"
    with pytest.raises(openai.BadRequestError) as exc:
        oa.chat.completions.create(model="smollm2", messages=SKY, reasoning_effort="low")
    assert exc.value.code == "unsupported_parameter" and exc.value.param == "reasoning_effort"
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as exc:
        oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": [picture]}])
    assert exc.value.code == "unsupported_content" and "smollm2 reads text only" in str(exc.value)
    r = oa.chat.completions.create(
        model="smollm2", messages=SKY, max_tokens=2, user="u1", metadata={"a": "b"}
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_invalid_parameter_is_400_in_openai_shape(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": "smollm2", "messages": SKY, "temperature": 9}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "temperature" in err["message"]
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "smollm2", "messages": SKY, "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_a_body_that_is_not_json_is_a_400_in_openai_shape(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions", content=b"model=smollm2", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "Content-Type: application/json" in r.json()["error"]["message"]
