"""The speaking pipeline: an LLM answer streamed into the TTS lane sentence by sentence.

    LLM tokens -> SentenceSplitter -> one TTS task per sentence (queued as each sentence ends)
               -> audio of sentence 1, 2, 3 ... streamed in order while the LLM still generates

The response is audio (a streaming WAV or raw PCM), or, with `"stream_format": "events"`,
server-sent events: `text` (a sentence as it goes to TTS), `audio` (base64 PCM), `llm_done`,
`done` or `error`, in the order they happened.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import Field

from ris import messages as m
from ris.api.common import check_prompt, failure, pick_tts_model, resolve_model, sse_event, submit
from ris.api.deps import engine_of
from ris.api.routes_openai import audio_chunks, tts_rate, wav_header
from ris.api.schemas import ChatMessage, _Body
from ris.runtime.engine import Engine, TaskHandle
from ris.scheduler import Lane, QueueFull, TaskState
from ris.sentences import SentenceSplitter

router = APIRouter(tags=["speak"])


class SpeakRequest(_Body):
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    prompt: str | None = None
    model: str | None = Field(default=None, description="LLM model; default if absent")
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    ignore_eos: bool = False
    voice: str | None = Field(default=None, description="e.g. en-US, zh-CN")
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    tts_model: str | None = None
    audio_format: Literal["wav", "pcm"] = "wav"
    stream_format: Literal["audio", "events"] = "audio"


async def _submit_tts(engine: Engine, model: str, req: m.TTSRequest) -> TaskHandle:
    """Queue a sentence; if the TTS queue is full, wait for room rather than drop it."""
    while True:
        try:
            return engine.submit(Lane.TTS, model, req, priority=1)
        except QueueFull as e:
            await asyncio.sleep(min(1.0, e.retry_after_s))


@router.post(
    "/api/chat/speak",
    responses={200: {"content": {"audio/wav": {}, "audio/pcm": {}, "text/event-stream": {}}}},
    response_class=StreamingResponse,
    summary="Chat answer spoken as it is generated (audio or events)",
)
async def chat_speak(body: SpeakRequest, request: Request) -> Any:
    engine = engine_of(request)
    contents = [x.content for x in body.messages] if body.messages is not None else None
    check_prompt(engine, body.prompt, contents, body.max_tokens)
    llm_model = resolve_model(engine, Lane.LLM, body.model)
    tts_model = pick_tts_model(engine, body.tts_model, body.voice)
    rate = tts_rate(engine, tts_model)
    llm_req = m.LLMRequest(
        prompt=body.prompt,
        messages=tuple((x.role, x.content) for x in body.messages) if body.messages else None,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )
    llm = submit(engine, Lane.LLM, llm_model, llm_req, 0, None)
    pipeline = _Pipeline(engine, llm, tts_model, body.voice, body.speed)
    if body.stream_format == "events":
        return StreamingResponse(
            pipeline.events(rate), media_type="text/event-stream", headers={"X-Task-Id": llm.task_id}
        )
    media = "audio/wav" if body.audio_format == "wav" else "audio/pcm"
    return StreamingResponse(
        pipeline.audio(rate, body.audio_format == "wav"),
        media_type=media,
        headers={"X-Task-Id": llm.task_id, "X-Sample-Rate": str(rate)},
    )


class _Pipeline:
    """One speak request: a producer (LLM text -> TTS tasks) and an ordered audio consumer, both
    writing to one queue of events in the order things happen."""

    def __init__(
        self, engine: Engine, llm: TaskHandle, tts_model: str, voice: str | None, speed: float
    ) -> None:
        self.engine = engine
        self.llm = llm
        self.tts_model = tts_model
        self.voice = voice
        self.speed = speed
        self.out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.sentences: asyncio.Queue[TaskHandle | None] = asyncio.Queue()
        self.tts: list[TaskHandle] = []

    async def _produce(self) -> None:
        splitter = SentenceSplitter()
        index = 0

        async def speak(text: str) -> None:
            nonlocal index
            handle = await _submit_tts(
                self.engine, self.tts_model, m.TTSRequest(text=text, voice=self.voice, speed=self.speed)
            )
            self.tts.append(handle)
            await self.out.put(("text", {"index": index, "text": text}))
            await self.sentences.put(handle)
            index += 1

        while (item := await self.llm.events.get()) is not None:
            if isinstance(item, m.TextDelta):
                for sentence in splitter.feed(item.text):
                    await speak(sentence)
        task = await self.llm.done
        if task.state is not TaskState.SUCCEEDED:
            err = failure(task)
            await self.out.put(("error", {"code": err.code, "message": err.message}))
            await self.sentences.put(None)
            return
        rest = splitter.flush()
        if rest:
            await speak(rest)
        r = task.result
        await self.out.put(
            (
                "llm_done",
                {
                    "text": r["text"],
                    "finish_reason": r["finish_reason"],
                    "completion_tokens": r["completion_tokens"],
                },
            )
        )
        await self.sentences.put(None)

    async def _consume(self) -> None:
        index = 0
        while (handle := await self.sentences.get()) is not None:
            async for pcm in audio_chunks(handle):
                await self.out.put(("audio", {"index": index, "pcm": pcm}))
            task = await handle.done
            if task.state is not TaskState.SUCCEEDED:
                err = failure(task)
                await self.out.put(("error", {"code": err.code, "message": err.message}))
                return
            index += 1
        await self.out.put(("done", {"sentences": index}))

    async def _run(self) -> AsyncIterator[tuple[str, Any]]:
        workers = [asyncio.create_task(self._produce()), asyncio.create_task(self._consume())]
        ended, kind = False, ""
        try:
            while True:
                kind, data = await self.out.get()
                yield kind, data
                if kind in ("done", "error"):
                    ended = True
                    return
        finally:
            for w in workers:
                w.cancel()
            if not ended or kind == "error":  # the client left, or a part failed: stop the rest
                self.engine.cancel(self.llm.task_id)
                for h in self.tts:
                    self.engine.cancel(h.task_id)

    async def audio(self, rate: int, wav: bool) -> AsyncIterator[bytes]:
        if wav:
            yield wav_header(rate)
        async for kind, data in self._run():
            if kind == "audio":
                yield data["pcm"]

    async def events(self, rate: int) -> AsyncIterator[bytes]:
        yield sse_event(
            "start", {"task_id": self.llm.task_id, "sample_rate": rate, "tts_model": self.tts_model}
        )
        async for kind, data in self._run():
            if kind == "audio":
                data = {"index": data["index"], "pcm": base64.b64encode(data["pcm"]).decode()}
            yield sse_event(kind, data)
