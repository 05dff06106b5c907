"""The speaking pipeline: an LLM answer spoken sentence by sentence while it is generated.

    LLM tokens -> SentenceSplitter -> one TTS task per sentence (queued as each sentence ends)
               -> audio of sentence 1, 2, 3 ... in order, while the LLM still generates

`SpeakingPipeline.run()` yields events in the order things happen: ("text", {index, text}) as a
sentence goes to TTS, ("audio", {index, pcm}) per chunk, ("llm_done", {...}), then ("done",
{sentences}) or ("error", {code, message}). If the client stops listening, or a part fails,
the LLM task and every sentence still queued or speaking are cancelled. Sentences with nothing
to speak ("...") are not sent to TTS; an answer with none that has ends in `nothing_to_speak`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Coroutine, Mapping
from typing import Any

from ris.lanes.llm import LLMResult, TextDelta
from ris.lanes.tts import LANE as TTS
from ris.lanes.tts import TTSRequest, TTSResult, speakable, speaks, voice_key
from ris.languages import text_script
from ris.runtime.engine import Engine, LaneUnavailable
from ris.runtime.views import TaskHandle, TaskView
from ris.scheduler import QueueFull
from ris.sentences import SentenceSplitter
from ris.services.audio import AudioStream

# Sentences go ahead of other speech in the TTS queue: someone is listening to this answer.
SENTENCE_PRIORITY = 1

# A sentence longer than this goes to TTS cut at a clause or a space as it is written: the
# first sound of a 400-character list without a full stop came after the whole answer.
SENTENCE_MAX_CHARS = 150
# A Chinese or Japanese sentence this long goes to TTS at its next comma: read at about four
# characters a second, an answer written with commas and no full stop for its first 150
# characters was 37 s of speech before its first sound.
CJK_CLAUSE_CHARS = 20

# Markdown an LLM writes that is not to be read aloud ("asterisk asterisk Ingredients"):
# emphasis marks in pairs opening at a word's edge ("**API**s", "*it*"; never "5*3 and 4*2",
# "2**10", "snake__case", "a * b"), inline code's backticks, a link's target (its text is
# read), and at a line's start a heading's hashes, a list item's bullet, a quote's ">"
# ("> 50%" is no quote).
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(?<![\w*_])(\*{1,3}|_{2,3})(?=[^\s*_])(.+?)(?<=[^\s*_])\1")
_LINE_MARKS = re.compile(r"^[ \t]*(?:[-*+][ \t]+|#{1,6}[ \t]+|>[ \t]+(?=\D))", re.MULTILINE)


# Also not read: emoji (a voice names them, "party popper" six times for "🎉" six times;
# with their variation selectors, skin tones and the joiners between them, but not a joiner
# elsewhere: Sinhala and Devanagari spell with it) and the HTML or SSML tags an LLM writes
# ("<br>", "<speak>": "speak hello break time equals one s"), which no engine here reads: known
# tag names only ("Vec<String>" is code, read as written).
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff]"
    "(?:[\ufe0e\ufe0f\u20e3\U000e0020-\U000e007f]|\u200d[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff])*"
    "|[\ufe0f\u20e3]"
)
_TAG_NAMES = (
    "speak|break|emphasis|prosody|say-as|voice|phoneme|sub|mark|audio|lang|p|s|w|br|hr|b|i|u|em|"
    "strong|small|sup|span|div|a|code|pre|ul|ol|li|h[1-6]|table|tr|td|th|img|think"
)
# Attributes with values only ("<b and y>" is a comparison, not a bold tag).
_ATTRIBUTE = r"""\s+[\w:-]+\s*=\s*(?:"[^"]*"|'[^']*'|[^\s<>"']+)"""
_TAG = re.compile(rf"</?(?:{_TAG_NAMES})(?:{_ATTRIBUTE})*\s*/?>", re.IGNORECASE)


def unmarked(text: str) -> str:
    """A sentence as it is spoken: the LLM's Markdown marks, emoji and tags left out (its
    `text` event keeps them, as written)."""
    text = _EMPHASIS.sub(r"\2", _LINK.sub(r"\1", text))
    bare = _TAG.sub(" ", _EMOJI.sub(" ", text))
    if bare != text:  # the spaces they leave: one between words, none before a stop
        text = re.sub(r" +(?=[.,!?;:])", "", re.sub(r"[ \t]{2,}", " ", bare))
    return _LINE_MARKS.sub("", text).replace("`", "").strip()


OUT_PENDING = 8  # events (an audio piece is at most 64 KiB) ready for a listener, at most
# Sentences sent to TTS ahead of the one the listener is hearing, at most: each one's audio is
# held in memory up to 1 MiB (ris.lanes.tts_audio.SPILL_BYTES; a sentence of 150 characters
# is about 10 s, 450 KB at 22.05 kHz), so a listener that stops reading holds about 2 MB; as
# many as the TTS lane speaks at once (its `parallel`, 4), so a listener who reads waits for none.
SENTENCES_AHEAD = 4


# What the speech lane answers for a text it has no sound for (ris.lanes.tts).
SILENT = "synthesis_empty"


class SpeakingPipeline:
    def __init__(
        self,
        engine: Engine,
        llm: TaskHandle[LLMResult],
        tts_model: str,
        voice: str | None,
        speed: float,
        *,
        queue_wait_s: float = 30.0,
        client: str | None = None,
        owner: str | None = None,
        models: Mapping[str, tuple[str, ...]] | None = None,
        home: str | None = None,
    ) -> None:
        """`llm` is the submitted LLM task; a full TTS queue is waited on for at most
        `queue_wait_s` seconds per sentence, then the pipeline ends with `queue_full`.
        `client`: who asked (the sentences count as its tasks, for fairness); `owner`: the key
        the sentences belong to, as the answer does (ris.runtime.tenancy). `models`: with no
        `voice`, the TTS models a sentence may go to and their voices, in order of preference
        (`tts_model` first), of which each sentence gets the first with a voice of its script
        (a Chinese sentence in an English answer the Chinese voice, of whichever model has
        one); a sentence in Latin letters goes to `home` (the lane's default, or the model
        named), not to a model picked for the prompt's language (an English answer to a
        Chinese question was read by espeak's robotic voice, not the neural default)."""
        self.client = client
        self.owner = owner
        self.engine = engine
        self.llm = llm
        self.tts_model = tts_model
        self.voice = voice
        self.models = dict(models or {})
        self.home = home if home in self.models else tts_model
        self.speed = speed
        self.queue_wait_s = queue_wait_s
        # Bounded: for a listener that stops reading, the parts wait here, and at most
        # SENTENCES_AHEAD sentences' audio waits in the server (ris.services.audio).
        self._out: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=OUT_PENDING)
        self._sentences: asyncio.Queue[TaskHandle[TTSResult] | None] = asyncio.Queue()
        self._ahead = asyncio.Semaphore(SENTENCES_AHEAD)
        self.tts: list[TaskHandle[TTSResult]] = []

    async def run(self) -> AsyncGenerator[tuple[str, dict[str, Any]]]:
        parts = [
            asyncio.create_task(self._guarded(self._produce())),
            asyncio.create_task(self._guarded(self._consume())),
        ]
        ended, kind = False, ""
        try:
            while True:
                kind, data = await self._out.get()
                yield kind, data
                if kind in ("done", "error"):
                    ended = True
                    return
        finally:
            for part in parts:
                part.cancel()
            if not ended or kind == "error":  # the client left, or a part failed: stop the rest
                self.engine.cancel(self.llm.task_id)
                for handle in self.tts:
                    self.engine.cancel(handle.task_id)

    async def _guarded(self, part: Coroutine[Any, Any, None]) -> None:
        """Run one part; if it fails, the listener hears an error instead of waiting forever."""
        try:
            await part
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the listener, then everything stops
            await self._out.put(("error", {"code": "speaking_failed", "message": f"{type(e).__name__}: {e}"}))

    def _voice_for(self, text: str) -> tuple[str, str | None]:
        """The model and voice (None: the model's default) a sentence is read with."""
        if self.voice is not None or not self.models:
            return self.tts_model, self.voice
        found = text_script(text)
        if found is None:
            return self.home, None
        for tag in found.candidates:
            for name, voices in self.models.items():
                if voices and voice_key(voices[0]).split("-")[0] == tag:
                    return name, None  # the model's own voice's language
                if speaks(voices, tag):
                    return name, tag
        return self.tts_model, None

    async def _submit_sentence(self, text: str) -> TaskHandle[TTSResult] | None:
        """Queue one sentence; wait a bounded time for room if the TTS queue is full."""
        model, voice = self._voice_for(text)
        req = TTSRequest(text=text, voice=voice, speed=self.speed)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.queue_wait_s
        retry = False  # a sentence waiting for room counts one refusal, not one a second
        while True:
            try:
                # Each sentence's audio is streamed and never fetched by id: no file is kept.
                return self.engine.submit(
                    TTS,
                    model,
                    req,
                    priority=SENTENCE_PRIORITY,
                    client=self.client,
                    owner=self.owner,
                    keep_files=False,
                    retry=retry,
                )
            except LaneUnavailable as e:  # the TTS worker went down (or its node) during the answer
                await self._out.put(("error", {"code": e.code, "message": str(e)}))
                return None
            except QueueFull as e:
                left = give_up - loop.time()
                if left <= 0:
                    message = f"{e}; waited {self.queue_wait_s:g} s for room to speak the next sentence"
                    await self._out.put(("error", {"code": "queue_full", "message": message}))
                    return None
                await asyncio.sleep(min(1.0, e.retry_after_s, left))
                retry = True

    async def _produce(self) -> None:
        splitter = SentenceSplitter(max_chars=SENTENCE_MAX_CHARS, clause_chars=CJK_CLAUSE_CHARS)
        index = 0

        async def speak(text: str) -> bool:
            nonlocal index
            said = unmarked(text)
            if not speakable(said):  # the TTS lane would refuse it; the answer goes on
                return True
            await self._ahead.acquire()  # given back once the listener has had its audio
            handle = await self._submit_sentence(said)
            if handle is None:
                return False
            self.tts.append(handle)
            await self._out.put(("text", {"index": index, "text": text}))
            await self._sentences.put(handle)
            index += 1
            return True

        while (item := await self.llm.events.get()) is not None:
            if isinstance(item, TextDelta):
                for sentence in splitter.feed(item.text):
                    if not await speak(sentence):
                        return
        view = await self.llm.done
        r = view.result if view.succeeded else None
        if r is None:
            await self._out.put(("error", _error(view)))
            await self._sentences.put(None)
            return
        rest = splitter.flush()
        if rest and not await speak(rest):
            return
        done = {"text": r.text, "finish_reason": r.finish_reason, "completion_tokens": r.completion_tokens}
        await self._out.put(("llm_done", done))
        await self._sentences.put(None)

    async def _consume(self) -> None:
        # `index` is the sentence's, as its `text` event said (a silent one keeps its number:
        # the audio after it was labelled with the skipped sentence's); `spoken` counts those heard.
        index = spoken = 0
        while (handle := await self._sentences.get()) is not None:
            audio = AudioStream(handle)
            while (pcm := await audio.next()) is not None:
                await self._out.put(("audio", {"index": index, "pcm": pcm}))
            view = await handle.done
            self._ahead.release()
            self.tts.remove(handle)  # ended: nothing to cancel, and nothing of it kept here
            index += 1
            if view.error_code == SILENT:
                # A piece the voice has no sound for (an emoji, a symbol, digits of another
                # script: LLMs end answers with them): skipped, the rest of the answer spoken.
                continue
            if not view.succeeded:
                await self._out.put(("error", _error(view)))
                return
            spoken += 1
        if spoken == 0:  # punctuation, emoji alone ("🌟🌍✨": a small model's sampled
            # answer now and then), or none: silence is not a success
            message = "the answer has nothing to speak: only punctuation, emoji or symbols with no sound"
            await self._out.put(("error", {"code": "nothing_to_speak", "message": message}))
            return
        await self._out.put(("done", {"sentences": spoken}))


def _error(view: TaskView[Any]) -> dict[str, Any]:
    return {"code": view.error_code or "failed", "message": view.error_message or "the task failed"}
