"""The lanes' worker-side runners with a recording backend: what a backend is given, and the
signals the lane publishes. No process: the runner's environment is a list and a board."""

from __future__ import annotations

import dataclasses

import pytest

from ris.lanes.base import BackendError, Cancelled
from ris.lanes.llm import LLMBackend, LLMOutcome, LLMRequest, LLMRunner, TextOutput
from ris.lanes.tts import MAX_CHUNK_CHARS, AudioOutput, TTSBackend, TTSOutcome, TTSRequest, TTSRunner
from ris.messages import TaskOutput
from ris.preemption.policy import Activity

from .fakes import Env


class RecordingTTS(TTSBackend):
    """One audible sample per character it is given."""

    sample_rate = 16_000
    voices = ("rec", "en-US")

    def __init__(self) -> None:
        self.texts: list[str] = []

    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
        self.texts.append(req.text)
        out.emit(b"\x01\x00" * len(req.text))
        return TTSOutcome(self.sample_rate, len(req.text), "rec")


class MuteTTS(RecordingTTS):
    """An engine that says nothing for text it cannot pronounce: no samples, or only silence
    (espeak-ng gives 154 zero samples for an Arabic-Indic digit, Piper none)."""

    def __init__(self, silent_samples: int) -> None:
        super().__init__()
        self.silent_samples = silent_samples

    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
        self.texts.append(req.text)
        if self.silent_samples:
            out.emit(b"\x00\x00" * self.silent_samples)
        return TTSOutcome(self.sample_rate, self.silent_samples, "rec")


def run_tts(tts: TTSBackend, req: TTSRequest) -> tuple[TTSOutcome, Env]:
    env = Env()
    return TTSRunner(env.worker_env()).run(tts, "t", req, lambda: False), env


class PiecewiseTTS(RecordingTTS):
    """Hands its audio over a character at a time, as espeak-ng does in small pieces."""

    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
        self.texts.append(req.text)
        for _ in req.text:
            out.emit(b"\x01\x00")
        return TTSOutcome(self.sample_rate, len(req.text), "rec")


@pytest.mark.parametrize("streamed", [True, False])
def test_the_first_audio_goes_at_once_only_where_someone_streams_it(streamed: bool) -> None:
    env = Env()
    worker_env = dataclasses.replace(env.worker_env(), streamed=lambda task_id: streamed)
    TTSRunner(worker_env).run(PiecewiseTTS(), "t", TTSRequest(text="Hello."), lambda: False)
    chunks = [msg.data.pcm for msg in env.sent if isinstance(msg, TaskOutput)]
    assert b"".join(chunks) == b"\x01\x00" * 6
    # Streamed: the first piece at once, the rest when the sentence ends. Read only as a
    # result: all in one message (on Ray, one yield instead of two).
    assert [len(c) for c in chunks] == ([2, 10] if streamed else [12])


def test_long_text_reaches_the_engine_in_bounded_pieces() -> None:
    # 4,998 characters without a full stop once took Piper to 10 GB in one call.
    text = ("word " * 1000)[:4998]
    tts, env = RecordingTTS(), Env()
    outcome = TTSRunner(env.worker_env()).run(tts, "t", TTSRequest(text=text), lambda: False)
    assert len(tts.texts) > 20 and max(map(len, tts.texts)) <= MAX_CHUNK_CHARS
    assert " ".join(tts.texts).split() == text.split()
    assert outcome.samples == sum(map(len, tts.texts)) and outcome.voice == "rec"
    assert env.board == [Activity.BUSY, Activity.IDLE] and env.ticks == len(tts.texts)


def test_a_cancel_stops_long_text_within_one_piece() -> None:
    tts, env = RecordingTTS(), Env()
    long = TTSRequest(text="word " * 1000)
    with pytest.raises(Cancelled):
        TTSRunner(env.worker_env()).run(tts, "t", long, lambda: len(tts.texts) >= 1)
    assert len(tts.texts) == 1


def test_control_characters_never_reach_the_engine() -> None:
    tts, env = RecordingTTS(), Env()
    TTSRunner(env.worker_env()).run(tts, "t", TTSRequest(text="a\x00b\x07c\td"), lambda: False)
    assert tts.texts == ["a b c\td"]


@pytest.mark.parametrize("text", ["   ...  !!", " ", "\x00\x05", "?! - ()", "\u200b。"])
def test_text_with_nothing_to_speak_is_refused_and_never_reaches_the_engine(text: str) -> None:
    tts = RecordingTTS()
    with pytest.raises(BackendError) as exc:
        run_tts(tts, TTSRequest(text=text))
    assert exc.value.code == "nothing_to_speak" and "letter, digit or symbol" in exc.value.message
    assert tts.texts == []


def test_pieces_of_punctuation_alone_are_left_out_of_longer_text() -> None:
    tts = RecordingTTS()
    run_tts(tts, TTSRequest(text="Hello there. !! ... How are you?"))
    assert tts.texts == ["Hello there.", "How are you?"]


def test_full_width_digits_and_letters_reach_the_engine_as_the_plain_ones() -> None:
    """espeak-ng left "价格１２３元" without its number and refused "１２３４５" (what a Chinese
    input method types); full-width punctuation is how Chinese is written, and stays."""
    tts = RecordingTTS()
    run_tts(tts, TTSRequest(text="价格１２３元，型号ＡＢｃ！"))
    assert tts.texts == ["价格123元，型号ABc！"]


@pytest.mark.parametrize("silent_samples", [0, 154])
@pytest.mark.parametrize("streamed", [True, False])
def test_an_engine_that_produces_no_audio_fails_the_task_before_any_audio(
    silent_samples: int, streamed: bool
) -> None:
    """Its all-zero samples went out as the first piece of a streamed answer: a 200 of silence
    that the task's synthesis_empty then broke off (12 of 20 such requests on /v1/audio/speech)."""
    env = Env()
    worker_env = dataclasses.replace(env.worker_env(), streamed=lambda task_id: streamed)
    with pytest.raises(BackendError) as exc:
        TTSRunner(worker_env).run(MuteTTS(silent_samples), "t", TTSRequest(text="\u0663"), lambda: False)
    assert exc.value.code == "synthesis_empty" and "no audio" in exc.value.message
    assert [msg for msg in env.sent if isinstance(msg, TaskOutput)] == []


def test_silence_before_the_first_sound_goes_out_with_it() -> None:
    class LateTTS(PiecewiseTTS):
        def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
            out.emit(b"\x00\x00" * 3)
            out.emit(b"\x01\x00")
            return TTSOutcome(self.sample_rate, 4, "rec")

    env = Env()
    worker_env = dataclasses.replace(env.worker_env(), streamed=lambda task_id: True)
    TTSRunner(worker_env).run(LateTTS(), "t", TTSRequest(text="Hello."), lambda: False)
    chunks = [msg.data.pcm for msg in env.sent if isinstance(msg, TaskOutput)]
    assert chunks == [b"\x00\x00" * 3 + b"\x01\x00"]


def test_a_voice_the_engine_does_not_have_is_refused_with_its_voices() -> None:
    tts = RecordingTTS()
    with pytest.raises(BackendError) as exc:
        run_tts(tts, TTSRequest(text="Hello.", voice="zh-CN"))
    assert exc.value.code == "unknown_voice" and "'zh-CN'" in exc.value.message
    assert "rec, en-US" in exc.value.message and tts.texts == []
    # Case and "_" for "-" do not matter, as at the API.
    outcome, _ = run_tts(tts, TTSRequest(text="Hello.", voice="EN_us"))
    assert outcome.samples == len("Hello.")


class SilentLLM(LLMBackend):
    """A backend that never says when prefill ends: its first text must end it anyway."""

    def __init__(self) -> None:  # no model to load
        pass

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        out.emit("a")
        out.emit("b")
        return LLMOutcome("stop", 1, 2)


def test_the_first_text_ends_prefill_even_if_the_backend_never_says() -> None:
    env = Env()
    LLMRunner(env.worker_env()).run(SilentLLM(), "t", LLMRequest(prompt="x"), lambda: False)
    assert env.board == [Activity.PREFILL, Activity.DECODE, Activity.IDLE]
    assert env.ticks == 2 and len(env.sent) == 2


class ShortContextLLM(LLMBackend):
    context_tokens = 64

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome:
        self.calls += 1
        return LLMOutcome("length", 1, req.max_tokens)


def test_max_tokens_over_the_context_is_refused_by_the_worker() -> None:
    """A model loaded on first use is known only to its worker: the runner refuses what the
    API could not check, rather than the backend quietly shortening the answer."""
    backend, env = ShortContextLLM(), Env()
    with pytest.raises(BackendError) as exc:
        LLMRunner(env.worker_env()).run(backend, "t", LLMRequest(prompt="x", max_tokens=65), lambda: False)
    assert exc.value.code == "invalid_request" and "context of 64 tokens" in exc.value.message
    assert backend.calls == 0 and env.board == []
    LLMRunner(env.worker_env()).run(backend, "t", LLMRequest(prompt="x", max_tokens=64), lambda: False)
    assert backend.calls == 1 and backend.describe().context_tokens == 64


def test_a_chat_over_the_context_leaves_out_its_oldest_turns_only_where_asked() -> None:
    from ris.lanes.llm import Message, fit_context, without_oldest

    turns = (
        ("system", "s"),
        ("user", "aaaa"),
        Message("assistant", "", ()),
        Message("tool", "bbbb"),
        ("user", "cccc"),
        ("assistant", "dddd"),
        ("user", "last"),
    )

    def tokenize(req: LLMRequest) -> tuple[list[int], None]:  # a token per character
        return [0] * sum(len(t.content if isinstance(t, Message) else t[1]) for t in req.messages or ()), None

    # The oldest turns that may go, a tool's answer with the turn before it; system and last stay.
    assert without_oldest(turns, 2) == (
        ("system", "s"),
        ("user", "cccc"),
        ("assistant", "dddd"),
        ("user", "last"),
    )
    assert without_oldest(turns, 99) == (("system", "s"), ("user", "last"))
    one = LLMRequest(messages=turns, truncate=True, max_tokens=1)
    fitted, prompt, _ = fit_context(one, tokenize, 14)  # 21 characters: the fewest left out
    assert fitted.messages == without_oldest(turns, 2) and len(prompt) == 13
    # Nothing that may go would do: every turn that may go left out, the rest cut to fit.
    fitted, prompt, _ = fit_context(one, tokenize, 3)
    assert fitted.messages == (("system", "s"), ("user", "last")) and len(prompt) == 2
    off = LLMRequest(messages=turns, max_tokens=1)
    assert fit_context(off, tokenize, 14)[0] is off


def test_a_chat_cut_to_its_context_keeps_room_for_its_answer() -> None:
    from ris.lanes.llm import Message, answer_room, fit_context, without_oldest

    turns = (("system", "s"), ("user", "aaaa"), ("assistant", "bbbb"), ("user", "cccc"), ("user", "last"))

    def tokenize(req: LLMRequest) -> tuple[list[int], None]:  # a token per character
        return [0] * sum(len(t.content if isinstance(t, Message) else t[1]) for t in req.messages or ()), None

    # Its max_tokens, at most a quarter of the context: an answer with no limit asked keeps
    # that quarter, not the whole context.
    assert answer_room(8, 40) == 8 and answer_room(4096, 40) == 10 and answer_room(0, 2) == 1
    # 17 tokens in a context of 20: the prompt fits, an answer of 8 does not. Its room is a
    # quarter of the context, 5: one turn goes. With a larger context, none.
    req = LLMRequest(messages=turns, truncate=True, max_tokens=8)
    fitted, prompt, _ = fit_context(req, tokenize, 20)
    assert fitted.messages == without_oldest(turns, 1) and len(prompt) == 13
    assert fit_context(req, tokenize, 25)[0] is req  # 17 + 6
    # No number of turns leaves the room (the last one is long): the fewest that fit the
    # prompt alone, as before; and as it was where it fits alone already.
    long = (*turns[:-1], ("user", "x" * 12))
    req = LLMRequest(messages=long, truncate=True, max_tokens=8)
    fitted, prompt, _ = fit_context(req, tokenize, 16)  # 25 tokens; room 4; 13 at the least
    assert fitted.messages == without_oldest(long, 3) and len(prompt) == 13
    alone = LLMRequest(messages=(long[0], long[-1]), truncate=True, max_tokens=8)
    assert fit_context(alone, tokenize, 16)[0] is alone  # 13 < 16, room 4 cannot be had


def test_a_prompt_too_long_for_its_context_keeps_its_first_tokens_and_its_end() -> None:
    """Ollama's clients send a document longer than the context with `truncate` on (its
    default): it was refused (400, the prompt is 11,920 tokens), where Ollama's runner keeps
    the first 4 tokens and the end. So here, leaving room for the answer."""
    from ris.lanes.llm import KEEP_TOKENS, fit_context

    def tokenize(req: LLMRequest) -> tuple[list[int], None]:  # a token per character, numbered
        text = req.prompt or "".join(t[1] for t in req.messages or () if isinstance(t, tuple))
        return list(range(len(text))), None

    raw = LLMRequest(prompt="x" * 100, truncate=True, max_tokens=10)
    fitted, prompt, _ = fit_context(raw, tokenize, 40)  # room: 10
    assert fitted is raw and prompt == [*range(KEEP_TOKENS), *range(100 - 26, 100)] and len(prompt) == 30
    chat = LLMRequest(messages=(("system", "s"), ("user", "a" * 10), ("user", "q" * 100)), truncate=True)
    fitted, prompt, _ = fit_context(chat, tokenize, 40)  # room: a quarter of 40
    assert fitted.messages == (("system", "s"), ("user", "q" * 100)) and len(prompt) == 30
    assert prompt[:KEEP_TOKENS] == [0, 1, 2, 3] and prompt[-1] == 100  # its start and its end
    # A prompt that fits the context is served whole, with less room for its answer: only one
    # longer than the context is cut (Ollama's runner cuts only then).
    fits = LLMRequest(prompt="x" * 35, truncate=True, max_tokens=10)
    assert fit_context(fits, tokenize, 40)[1] == list(range(35))
    # Refused as before where truncate is off (the API's default but Ollama's).
    off = LLMRequest(prompt="x" * 100, max_tokens=10)
    assert fit_context(off, tokenize, 40)[1] == list(range(100))


def test_a_chat_ending_in_a_tool_answer_keeps_the_call_it_answers() -> None:
    from ris.lanes.llm import Message, without_oldest

    call = Message("assistant", "", ())
    turns = (("user", "q"), call, Message("tool", "r1"), Message("tool", "r2"))
    assert without_oldest(turns, 1) == (call, Message("tool", "r1"), Message("tool", "r2"))
    assert without_oldest(turns, 5) == (call, Message("tool", "r1"), Message("tool", "r2"))


def test_a_short_text_asked_during_a_long_one_waits_one_piece_not_the_whole() -> None:
    """One task at a time, a 5,000-character reading held every other speech request (a short
    spoken answer included) for its whole synthesis, 23 s. The runner holds several and speaks
    a piece each step of the one that has spoken least, in order among equals (an answer's
    sentences stay in order); one passed over 3 steps in a row goes next; one that fails or is
    cancelled leaves the others to go on."""
    tts, env = RecordingTTS(), Env()
    runner = TTSRunner(env.worker_env())
    runner.admit(tts, "long", TTSRequest(text="Many words here. " * 100), lambda: False)
    assert runner.step() == [] and len(tts.texts) == 1
    runner.admit(tts, "short", TTSRequest(text="OK, done."), lambda: False)
    ended = runner.step()
    assert tts.texts[-1] == "OK, done." and [key for key, _ in ended] == ["short"]
    for n in range(4):  # an answer's sentences, admitted together: spoken in their order
        runner.admit(tts, f"s{n}", TTSRequest(text=f"Sentence {n}."), lambda: False)
    spoken = [key for _ in range(5) for key, _ in runner.step()]
    assert spoken == ["s0", "s1", "s2", "s3"]
    # The long text, passed over three steps in a row (once for "short"), speaks between them.
    assert tts.texts[-5:-3] == ["Sentence 0.", "Sentence 1."] and tts.texts[-2:] == [
        "Sentence 2.",
        "Sentence 3.",
    ]
    assert tts.texts[-3].startswith("Many words")
    cancelled = {"gone": False}
    runner.admit(tts, "gone", TTSRequest(text="Never mind. " * 50), lambda: cancelled["gone"])
    runner.admit(tts, "bad", TTSRequest(text="Hi.", voice="zh-CN"), lambda: False)  # refused at once
    (bad,) = runner.step()  # "gone" speaks its first piece; "bad" is answered
    assert bad[0] == "bad" and isinstance(bad[1], BackendError) and bad[1].code == "unknown_voice"
    assert tts.texts[-1] == "Never mind."
    cancelled["gone"] = True
    outcomes: dict[str, object] = {}
    while runner.busy():
        outcomes.update(runner.step())
    assert isinstance(outcomes["gone"], Cancelled)
    long = outcomes["long"]
    assert isinstance(long, TTSOutcome) and long.samples == len("Many words here. " * 100) - 100
    assert env.board[0] is Activity.BUSY and env.board[-1] is Activity.IDLE


def test_taking_a_speech_task_fails_it_alone_but_out_of_memory_replaces_the_worker() -> None:
    class Broken(RecordingTTS):
        def __init__(self, error: BaseException) -> None:
            super().__init__()
            self.error = error

        @property
        def voices(self) -> tuple[str, ...]:  # type: ignore[override]
            raise self.error

    runner = TTSRunner(Env().worker_env())
    runner.admit(Broken(RuntimeError("odd")), "t", TTSRequest(text="Hi.", voice="en-US"), lambda: False)
    ((key, failed),) = runner.step()
    assert key == "t" and isinstance(failed, BackendError) and failed.code == "backend_error"
    with pytest.raises(MemoryError):  # the worker loop fails its tasks and a fresh worker serves on
        runner.admit(Broken(MemoryError()), "u", TTSRequest(text="Hi.", voice="en-US"), lambda: False)


def test_requests_a_model_serves_at_once_is_the_lanes_word() -> None:
    """GET /api/models' `parallel`: the lane kind says it (the route asked `lane == TTS`)."""
    from ris.lanes.image import LANE as IMAGE_LANE
    from ris.lanes.llm import LANE as LLM_LANE
    from ris.lanes.tts import LANE as TTS_LANE

    assert LLM_LANE.serves_at_once("llama_cpp", 8) == 8  # batches
    assert IMAGE_LANE.serves_at_once("diffusers", 3) == 1  # one image after another
    assert TTS_LANE.serves_at_once("piper", 4) == 4 and TTS_LANE.serves_at_once("espeak", 4) == 4  # in turns


def test_an_image_being_made_reads_busy_on_the_board() -> None:
    """ris_lane_activity{lane="image"} (and /api/stats) read idle while a picture was made: the
    image runner never marked its lane busy. It does as a task starts; the worker marks it idle
    once nothing waits (worker_main's gate, as for every lane)."""
    from ris.lanes.image import GeneratedImage, ImageBackend, ImageRequest, ImageRun, ImageRunner

    env = Env()
    seen: list[list[Activity]] = []

    class Painter(ImageBackend):
        def __init__(self) -> None:
            pass

        def generate(self, req: ImageRequest, run: ImageRun) -> GeneratedImage:
            seen.append(list(env.board))  # what the board reads while it paints
            run.step(1, 1)
            return GeneratedImage(b"png", req.width, req.height, 1, 0)

    outcome = ImageRunner(env.worker_env()).run(Painter(), "t", ImageRequest("a cat"), lambda: False)
    assert outcome.image.png == b"png" and seen == [[Activity.BUSY]]


def test_only_a_chat_ending_in_the_assistants_own_text_is_continued() -> None:
    from ris.lanes.llm import Message, ToolCall, continued_turn

    user, begun = Message("user", "Count to ten."), Message("assistant", "1, 2,")
    assert continued_turn([user, begun]) == ([user], "1, 2,")
    assert continued_turn([user, begun], constrained=True) == (
        [user, begun],
        "",
    )  # a grammar's answer is whole
    call = Message("assistant", "", tool_calls=(ToolCall("c1", "f", "{}"),))
    for turns in ([user], [begun], [user, Message("assistant", "")], [user, call]):
        assert continued_turn(turns) == (turns, ""), turns


def test_both_llm_backends_write_a_begun_answer_after_their_generation_prompt() -> None:
    """The prompt each LLM backend builds for a chat ending in the assistant's words: the
    template's (or the fallback's) opening of the assistant's turn, then those words, so the
    model goes on from them; with a constraint, a new turn as before."""
    import types

    from ris.backends.llm_llama_cpp import LlamaCppLLM
    from ris.backends.llm_transformers import ByteTokenizer, TransformersLLM
    from ris.lanes.llm import Constraint

    chat = [{"role": "user", "content": "Count to ten."}, {"role": "assistant", "content": "1, 2,"}]
    req = LLMRequest(messages=tuple((m["role"], m["content"]) for m in chat))
    constrained = dataclasses.replace(req, constraint=Constraint('{"type": "string"}'))

    def template(messages: list[dict[str, str]], **_: object) -> object:
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"
        return types.SimpleNamespace(prompt=text, stop="</assistant>")

    llama = object.__new__(LlamaCppLLM)
    llama._formatter, llama.native_tools = template, False  # type: ignore[assignment]
    assert llama._prompt(req)[0] == "<user>Count to ten.</user><assistant>1, 2,"
    assert llama._prompt(constrained)[0].endswith("<assistant>1, 2,</assistant><assistant>")
    llama._formatter = None  # a model without a chat template: the role-prefixed fallback
    assert llama._prompt(req)[0] == "user: Count to ten.\nassistant: 1, 2,"

    hf = object.__new__(TransformersLLM)
    hf._tok = ByteTokenizer()
    ids, _ = hf._tokens(req)
    assert ids == hf._tok.encode("<|user|>Count to ten.\n<|assistant|>1, 2,")
