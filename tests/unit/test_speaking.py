"""The speaking pipeline on the engine with fake workers: sentence order, audio before the
answer ends, a bounded wait for a full TTS queue, and cancellation when the listener leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ris import messages as m
from ris.lanes import Lane
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMOutcome, LLMRequest, LLMResult, TextDelta
from ris.lanes.tts import TTSOutcome, TTSRequest
from ris.lanes.tts_audio import AudioChunk
from ris.runtime.engine import Engine
from ris.runtime.views import TaskHandle
from ris.services.speaking import SENTENCES_AHEAD, SpeakingPipeline, unmarked

from .fakes import FakeWorker, run, settle, started_engine

Events = list[tuple[str, Any]]


def sent(run: m.RunTask) -> TTSRequest:
    """The sentence request a TTS task was sent (the wire carries any lane's request)."""
    assert isinstance(run.request, TTSRequest)
    return run.request


async def collect(events: AsyncIterator[tuple[str, dict[str, Any]]], into: Events) -> None:
    async for kind, data in events:
        into.append((kind, data))


@asynccontextmanager
async def started(tmp: Path, **lanes: dict[str, Any]) -> AsyncIterator[tuple[Engine, FakeWorker, FakeWorker]]:
    """An engine on fake workers with its LLM ready (the TTS worker still loading), and the two."""
    async with started_engine(tmp, **lanes) as (eng, workers, _):
        workers[Lane.LLM].ready()
        yield eng, workers[Lane.LLM], workers[Lane.TTS]


def speak(
    eng: Engine, voice: str | None = None, queue_wait_s: float = 30.0
) -> tuple[TaskHandle[LLMResult], Events, asyncio.Task[None]]:
    """An answer asked of the LLM and the pipeline speaking it in the background: the answer,
    the events as they come, and the listener that ends with the pipeline."""
    answer = eng.submit(LLM, "m", LLMRequest(prompt="talk"))
    events: Events = []
    pipeline = SpeakingPipeline(eng, answer, "e", voice, 1.0, queue_wait_s=queue_wait_s)
    return answer, events, asyncio.create_task(collect(pipeline.run(), events))


@run
async def test_sentences_are_spoken_in_order_and_the_first_before_the_answer_ends(tmp_path: Path) -> None:
    async with started(tmp_path) as (eng, llm, tts):
        tts.ready()
        answer, events, listener = speak(eng, voice="en-US")
        for piece in ("Hello there. ", "How are", " you? Fine"):
            llm.deliver(m.TaskOutput(answer.task_id, TextDelta(piece)))
        await settle()
        first = tts.runs[0]
        assert sent(first).text == "Hello there." and sent(first).voice == "en-US"
        tts.deliver(m.TaskOutput(first.task_id, AudioChunk(b"\x01\x00" * 10, 16000)))
        tts.deliver(m.TaskDone(first.task_id, TTSOutcome(16000, 10, "en-US")))
        await settle()
        assert ("audio", {"index": 0, "pcm": b"\x01\x00" * 10}) in events  # spoken while the LLM still runs
        llm.deliver(m.TaskDone(answer.task_id, LLMOutcome("stop", 3, 9)))
        await settle()
        for i in (1, 2):  # one TTS slot: each sentence starts when the one before it is spoken
            run_ = tts.runs[i]
            tts.deliver(m.TaskOutput(run_.task_id, AudioChunk(sent(run_).text.encode(), 16000)))
            tts.deliver(m.TaskDone(run_.task_id, TTSOutcome(16000, 1, "en-US")))
            await settle()
        await asyncio.wait_for(listener, 5)

        kinds = [k for k, _ in events]
        assert kinds.index("audio") < kinds.index("llm_done") and kinds[-1] == "done"
        assert [d["text"] for k, d in events if k == "text"] == ["Hello there.", "How are you?", "Fine"]
        audio = [d["index"] for k, d in events if k == "audio"]
        assert audio == sorted(audio) == [0, 1, 2]
        assert events[-1] == ("done", {"sentences": 3})


@run
async def test_a_full_tts_queue_is_waited_on_for_a_bounded_time_then_everything_stops(tmp_path: Path) -> None:
    async with started(tmp_path, tts={"max_queue": 0}) as (eng, llm, _):  # nothing can be queued
        answer, events, listener = speak(eng, queue_wait_s=0.3)
        llm.deliver(m.TaskOutput(answer.task_id, TextDelta("One sentence. ")))
        await asyncio.wait_for(listener, 5)
        kind, data = events[-1]
        assert kind == "error" and data["code"] == "queue_full" and "waited 0.3 s" in data["message"]
        assert llm.cancels == [answer.task_id]  # the answer is not generated for nobody


@run
async def test_a_listener_who_leaves_cancels_the_answer_and_its_sentences(tmp_path: Path) -> None:
    async with started(tmp_path) as (eng, llm, tts):
        tts.ready()
        answer = eng.submit(LLM, "m", LLMRequest(prompt="talk"))
        events = SpeakingPipeline(eng, answer, "e", None, 1.0).run()
        llm.deliver(m.TaskOutput(answer.task_id, TextDelta("First one. Second one. ")))
        assert (await anext(events))[0] == "text"
        await events.aclose()  # the HTTP client went away
        assert llm.cancels == [answer.task_id]
        assert tts.cancels == [tts.runs[0].task_id]


@run
async def test_a_tts_lane_that_goes_down_ends_the_answer_with_an_error_not_a_hang(tmp_path: Path) -> None:
    async with started(tmp_path) as (eng, llm, tts):
        tts.ready()
        tts.deliver(m.WorkerFailed("model_not_found", "the voice file is gone"))  # a failed restart
        answer, events, listener = speak(eng)
        llm.deliver(m.TaskOutput(answer.task_id, TextDelta("One sentence. ")))
        await asyncio.wait_for(listener, 5)
        assert events[-1] == (
            "error",
            {"code": "lane_unavailable", "message": "the tts worker cannot start: the voice file is gone"},
        )
        assert llm.cancels == [answer.task_id]


@run
async def test_sentences_with_nothing_to_speak_never_reach_the_tts_lane(tmp_path: Path) -> None:
    async with started(tmp_path) as (eng, llm, tts):
        tts.ready()
        answer, events, listener = speak(eng)
        llm.deliver(m.TaskOutput(answer.task_id, TextDelta("Hello there. …")))  # "…" ends a sentence
        llm.deliver(m.TaskDone(answer.task_id, LLMOutcome("stop", 3, 4)))
        await settle()
        assert [sent(r).text for r in tts.runs] == ["Hello there."]  # the TTS lane would refuse "…"
        tts.deliver(m.TaskOutput(tts.runs[0].task_id, AudioChunk(b"\x01\x00", 16000)))
        tts.deliver(m.TaskDone(tts.runs[0].task_id, TTSOutcome(16000, 1, "en-US")))
        await asyncio.wait_for(listener, 5)
        assert [d["text"] for k, d in events if k == "text"] == ["Hello there."]
        assert events[-1] == ("done", {"sentences": 1})


@run
async def test_an_answer_with_nothing_to_speak_ends_in_an_error_not_a_silent_done(tmp_path: Path) -> None:
    async with started(tmp_path) as (eng, llm, tts):
        tts.ready()
        answer, events, listener = speak(eng)
        llm.deliver(m.TaskOutput(answer.task_id, TextDelta("… !!")))
        llm.deliver(m.TaskDone(answer.task_id, LLMOutcome("stop", 3, 2)))
        await asyncio.wait_for(listener, 5)
        assert tts.runs == []
        kind, data = events[-1]
        assert kind == "error" and data["code"] == "nothing_to_speak"
        assert "only punctuation, emoji or symbols" in data["message"]


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("**Ingredients:**", "Ingredients:"),
        ("*italic* word, ***both***", "italic word, both"),
        ("# Method", "Method"),
        ("- two eggs", "two eggs"),
        ("See [the docs](http://x.y/z).", "See the docs."),
        ("Use `pip` now.", "Use pip now."),
        ("> a quote", "a quote"),
        # Not marks: read as written.
        ("5*3 is 15.", "5*3 is 15."),
        ("2**10 = 1024", "2**10 = 1024"),
        ("5 * 3 = 15", "5 * 3 = 15"),
        ("snake__case", "snake__case"),
        ("**API**s", "APIs"),
        ("5*3 and 4*2", "5*3 and 4*2"),
        ("f(x)**2", "f(x)**2"),
        ("*.py files", "*.py files"),
        ("> 50% of users", "> 50% of users"),
    ],
)
def test_markdown_marks_are_left_out_of_what_is_spoken(written: str, spoken: str) -> None:
    assert unmarked(written) == spoken


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("Great job 🎉🎉 you did it!", "Great job you did it!"),  # was "party popper party popper"
        ("👍🏽 Fine.", "Fine."),  # a skin tone goes with its emoji
        ("1️⃣ First.", "1 First."),  # the keycap's digit stays
        ('<speak>Hello <break time="1s"/> <emphasis>world</emphasis>.</speak>', "Hello world."),
        ("One<br>two.", "One two."),
        ("If a < b and c > d.", "If a < b and c > d."),  # comparisons are no tags
        ("20°C, ©2024.", "20°C, ©2024."),  # symbols a voice reads well stay
        ("Family 👨\u200d👩\u200d👧 time.", "Family time."),  # a joined emoji, joiners and all
        ("ශ්\u200dරී Lanka.", "ශ්\u200dරී Lanka."),  # a joiner Sinhala spells with stays
        ("Vec<String> holds text.", "Vec<String> holds text."),  # code, not a tag
        ("If x <b and y> z, stop.", "If x <b and y> z, stop."),  # a comparison, not a tag
        ('<emphasis level="strong">Now</emphasis>.', "Now."),
        ("Go \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f team.", "Go team."),
    ],
)
def test_emoji_and_tags_an_llm_writes_are_not_read_aloud(written: str, spoken: str) -> None:
    assert unmarked(written) == spoken


@run
async def test_no_more_than_four_sentences_go_to_speech_ahead_of_the_one_heard(tmp_path: Path) -> None:
    """Each sentence's audio waits in memory (up to 1 MiB) until heard: a listener who stopped
    reading held every sentence of the answer."""
    async with started(tmp_path) as (eng, llm, tts):
        tts.ready(slots=8)
        answer, events, listener = speak(eng, voice="en-US")
        llm.deliver(
            m.TaskOutput(answer.task_id, TextDelta("".join(f"Sentence number {i}. " for i in range(10))))
        )
        await settle()
        assert len(tts.runs) == SENTENCES_AHEAD == 4
        first = tts.runs[0]
        tts.deliver(m.TaskOutput(first.task_id, AudioChunk(b"\x01\x00" * 10, 16000)))
        tts.deliver(m.TaskDone(first.task_id, TTSOutcome(16000, 10, "en-US")))
        await settle()
        assert len(tts.runs) == 5  # the first heard: one more goes
        listener.cancel()


@run
async def test_a_heard_sentence_leaves_nothing_of_its_audio_in_the_answer(tmp_path: Path) -> None:
    """The answer kept every sentence's handle to its end, and each handle its audio (up to
    1 MiB in memory): a long answer held all it had said."""
    async with started(tmp_path) as (eng, llm, tts):
        tts.ready(slots=4)
        answer = eng.submit(LLM, "m", LLMRequest(prompt="talk"))
        pipeline = SpeakingPipeline(eng, answer, "e", "en-US", 1.0)
        events: Events = []
        listener = asyncio.create_task(collect(pipeline.run(), events))
        llm.deliver(m.TaskOutput(answer.task_id, TextDelta("One sentence here. Another one there. ")))
        await settle()
        first = tts.runs[0]
        handle = next(h for h in pipeline.tts if h.task_id == first.task_id)
        tts.deliver(m.TaskOutput(first.task_id, AudioChunk(b"\x01\x00" * 1000, 16000)))
        tts.deliver(m.TaskDone(first.task_id, TTSOutcome(16000, 1000, "en-US")))
        await settle()
        assert ("audio", {"index": 0, "pcm": b"\x01\x00" * 1000}) in events
        assert handle not in pipeline.tts  # heard: nothing left to cancel
        assert getattr(handle.collector, "_buffer", "gone") is None  # and its audio let go
        listener.cancel()
