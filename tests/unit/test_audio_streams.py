"""Audio responses through the real app over fake workers: a failure before the first sound is
an HTTP error with its code; a failure after it breaks the body off instead of ending it as if
the audio were complete (raw audio has nowhere to put an error event)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from ris import messages as m
from ris.api.app import create_app
from ris.api.streams import StreamBroken
from ris.lanes import Lane
from ris.lanes.llm import LLMOutcome, TextDelta
from ris.lanes.tts import AudioChunk, AudioFile, AudioWritten, TTSOutcome
from ris.runtime.engine import Engine
from ris.runtime.views import EventStream

from .fakes import FakeWorker, FakeWorkers, run, settle, started_engine

VOICE = m.ModelInfo("e", "espeak", m.ModelDetails(("en-US",), 16000))
SOUND = b"\x01\x00" * 8


async def post(eng: Engine, path: str, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(eng.config, eng))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.post(path, json=body)


@asynccontextmanager
async def posted(
    tmp: Path, path: str, body: dict[str, Any]
) -> AsyncIterator[tuple[asyncio.Task[httpx.Response], FakeWorkers]]:
    """The real app over an engine whose fake workers are ready, `body` POSTed to `path` and
    already handed to the lanes: the request (answered once the test has the workers reply)
    and the workers."""
    async with started_engine(tmp) as (eng, workers, _):
        workers[Lane.LLM].ready()
        workers[Lane.TTS].ready(models=(VOICE,))
        request = asyncio.create_task(post(eng, path, body))
        await settle()
        yield request, workers


SPEECH = {"model": "tts-1", "voice": "en-US", "input": "Hello there.", "response_format": "wav"}


@run
async def test_speech_that_fails_before_any_sound_is_an_error_not_an_empty_wav(tmp_path: Path) -> None:
    async with posted(tmp_path, "/v1/audio/speech", SPEECH) as (request, workers):
        tts = workers[Lane.TTS]
        tts.deliver(m.TaskError(tts.runs[0].task_id, "synthesis_failed", "espeak-ng returned error 2"))
        r = await asyncio.wait_for(request, 5)
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == {
            "message": "espeak-ng returned error 2",
            "type": "server_error",
            "param": None,
            "code": "synthesis_failed",
        }


@run
async def test_speech_that_fails_after_its_first_sound_breaks_the_body_off(tmp_path: Path) -> None:
    async with posted(tmp_path, "/v1/audio/speech", SPEECH) as (request, workers):
        tts = workers[Lane.TTS]
        task_id = tts.runs[0].task_id
        tts.deliver(m.TaskOutput(task_id, AudioChunk(SOUND, 16000)))
        await settle()  # the first sound is read: the response has begun
        tts.deliver(m.TaskError(task_id, "synthesis_failed", "espeak-ng returned error 2"))
        with pytest.raises(StreamBroken, match="synthesis_failed"):
            await asyncio.wait_for(request, 5)


def answer(llm: FakeWorker, text: str) -> None:
    task_id = llm.runs[0].task_id
    llm.deliver(m.TaskOutput(task_id, TextDelta(text)))
    llm.deliver(m.TaskDone(task_id, LLMOutcome("stop", 3, 4)))


@run
async def test_spoken_answer_that_fails_before_any_sound_is_an_error_not_an_empty_wav(tmp_path: Path) -> None:
    async with posted(tmp_path, "/api/chat/speak", {"prompt": "talk"}) as (request, workers):
        answer(workers[Lane.LLM], "…")
        r = await asyncio.wait_for(request, 5)
        assert r.status_code == 422 and r.json()["error"]["code"] == "nothing_to_speak"


@run
async def test_spoken_answer_whose_later_sentence_fails_breaks_the_body_off(tmp_path: Path) -> None:
    async with posted(tmp_path, "/api/chat/speak", {"prompt": "talk"}) as (request, workers):
        answer(workers[Lane.LLM], "The first sentence. The second sentence.")
        await settle()
        tts = workers[Lane.TTS]
        first = tts.runs[0].task_id
        tts.deliver(m.TaskOutput(first, AudioChunk(SOUND, 16000)))
        tts.deliver(m.TaskDone(first, TTSOutcome(16000, 8, "en-US")))
        await settle()
        tts.deliver(
            m.TaskError(tts.runs[1].task_id, "synthesis_empty", "the speech engine produced no audio")
        )
        with pytest.raises(StreamBroken, match="synthesis_empty"):
            await asyncio.wait_for(request, 5)
        assert not tts.cancels  # both sentences had ended: nothing left to cancel


def test_unread_contiguous_audio_is_one_event_however_long() -> None:
    """A client that stops reading holds one event for all its audio, not one per chunk."""
    events = EventStream()
    wav = Path("a.wav")
    for i in range(1000):
        events.put_nowait(AudioWritten(wav, 44 + 100 * i, 100))
    events.put_nowait(AudioWritten(Path("b.wav"), 44, 10))  # another file: its own event
    events.put_nowait(None)
    assert [events.get_nowait() for _ in range(3)] == [
        AudioWritten(wav, 44, 100_000),
        AudioWritten(Path("b.wav"), 44, 10),
        None,
    ]


def test_audio_that_cannot_be_written_fails_its_task_rather_than_leave_a_gap(tmp_path: Path) -> None:
    audio = AudioFile(tmp_path / "gone" / "t.wav")  # the folder is not there: every write fails
    written = audio.add(AudioChunk(SOUND, 16000))
    assert isinstance(written, AudioWritten) and written.length == 0  # nothing for a stream to read
    with pytest.raises(FileNotFoundError):
        audio.finish()  # the engine stores no result: result_not_stored
