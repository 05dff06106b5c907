"""The wire protocol between the server and a lane's worker, whatever carries it (a pipe today).

Every message is a small frozen dataclass; requests, outputs and outcomes inside them are the
lane kinds' own dataclasses (ris.lanes). Reprs leave out prompts, texts and audio, so logs
never carry user content.

    server -> worker    RunTask, CancelTask, Shutdown
    worker -> server    WorkerReady | WorkerFailed (once), Heartbeat (every half second),
                        TaskOutput / TaskProgress (while a task runs), then one of
                        TaskDone, TaskError, TaskCancelled; WorkerExiting (before the
                        failures of a worker that must exit);
                        ModelLoading, ModelLoaded, ModelUnloaded, ModelsHeld, ModelExpiry
                        (models loaded on use, the tasks a switch keeps waiting, and when
                        an idle model's keep_alive ends)
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field
from typing import Any, ClassVar, Protocol

# ----- server -> worker ----------------------------------------------------------------------


class LaneRequest(Protocol):
    """A lane kind's request: a frozen dataclass (ris.lanes.llm.LLMRequest, ...), sent to the
    worker as it is and stored as its fields (LaneKind.request_to_json)."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]


@dataclass(frozen=True)
class RunTask:
    task_id: str
    model: str
    request: LaneRequest = field(repr=False)
    # How long the model stays loaded once idle after this task (Ollama's keep_alive):
    # None: the lane's keep_alive_s; negative: until evicted; 0: unloaded once idle.
    keep_alive_s: float | None = None
    # Whether someone reads the task's outputs as they come (a stream). False: only its result
    # is read, once it ended, so the runner need not hurry a first piece out (speech sends its
    # first audio at once only when streamed: on Ray that piece's yield delayed the rest).
    streamed: bool = True


@dataclass(frozen=True)
class CancelTask:
    task_id: str


@dataclass(frozen=True)
class KeepModel:
    """How long a loaded model stays once idle, from now (or from when its running tasks end),
    asked for by itself: Ollama's request with nothing to generate. 0: unloaded once idle; None:
    the lane's keep_alive_s; negative: until evicted. Nothing for a model not loaded."""

    model: str
    keep_alive_s: float | None


@dataclass(frozen=True)
class Shutdown:
    pass


# ----- worker -> server ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelDetails:
    """What the server routes requests by, reported by a backend once its model is loaded
    (Backend.describe) and carried to the server as it is."""

    # Voices a speech model answers to (language tags and native names); first is its default.
    voices: tuple[str, ...] = ()
    sample_rate: int | None = None
    # A text model's context window in tokens, prompt and answer together (None: unknown);
    # the API refuses a larger max_tokens.
    context_tokens: int | None = None
    # A text model whose chat template renders `tools` itself (else a fallback prompt does;
    # None: not a text model, or unknown).
    native_tools: bool | None = None
    # The memory a text model's KV cache holds for all its slots (`parallel` x n_ctx tokens),
    # allocated at load (None: not a text model, or unknown).
    kv_cache_bytes: int | None = None
    # Where a GPU lane's model was placed within its budget, when the backend chose: "gpu",
    # "partial" (some llama.cpp layers), "model_offload" or "sequential_offload" (diffusers),
    # with the reason in numbers. None: the lane's device as configured.
    placement: str | None = None
    placement_reason: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model the worker has loaded: its name in the config, its backend, and its details."""

    name: str
    backend: str
    details: ModelDetails = field(default_factory=ModelDetails)
    # Its footprint as the worker counts it against the lane's budget (None: no file said): on
    # a GPU lane what it puts on the card.
    footprint_bytes: int | None = None
    # Where it lives: "gpu", "partial" (some layers on the GPU), "model_offload",
    # "sequential_offload" (a pipeline's parts moved to the GPU as they run) or "cpu".
    placement: str = "cpu"
    load_s: float | None = None  # how long its load took
    # On a GPU lane, what it keeps in RAM beside the card, counted against the lane's RAM
    # budget (layers left on the CPU, an offload plan's components); None on a CPU lane.
    ram_bytes: int | None = None


@dataclass(frozen=True)
class ModelLoaded:
    """A model loaded after the worker's start (on first use)."""

    info: ModelInfo


@dataclass(frozen=True)
class ModelExpiry:
    """When a loaded model's keep_alive unloads it, in seconds from when the worker wrote this
    (None: not before it is evicted): sent when that changes (a task on it ended, a
    keep_alive asked for by itself), never while the keep_alive is "forever" all along."""

    name: str
    expires_in_s: float | None


@dataclass(frozen=True)
class WorkerExiting:
    """The worker exits right after the messages that follow it (its tasks' failures): the
    server sends it no more work. Without it, the failures would free slots that the next
    queued tasks fill, on a worker about to go."""

    reason: str


@dataclass(frozen=True)
class WorkerGone:
    """The worker's channel closed: its process is gone. Said by the worker's handle (the
    pipe's end of file), never by a worker: the server sends it no more work at once, where the
    supervision pass that finds it dead (up to Engine's MONITOR_INTERVAL_S later) let tasks be
    sent into the dead pipe meanwhile and fail as if they had run when it died."""


@dataclass(frozen=True)
class ModelLoading:
    """The worker begins loading `name` for a task (followed by ModelLoaded, or, when the load
    fails, by the task's TaskError, or TaskCancelled if it was cancelled meanwhile)."""

    name: str


@dataclass(frozen=True)
class ModelsHeld:
    """The tasks the worker holds, in its order, until `model` can load: the load waits for the
    running work of the models `blocked_by` to drain (a switch never cuts a running batch), and
    the tasks that came after it wait behind it. Sent when the set changes; empty `task_ids`:
    none is held any more."""

    model: str
    task_ids: tuple[str, ...]
    blocked_by: tuple[str, ...]


# Nothing held: what a worker says once its switch is admitted, and what a fresh one holds.
NONE_HELD = ModelsHeld("", (), ())


@dataclass(frozen=True)
class ModelUnloaded:
    """A model the worker let go: "evicted" (another needed its memory) or "expired" (idle
    past its keep_alive)."""

    name: str
    reason: str


@dataclass(frozen=True)
class CpuShareInfo:
    """How a batch worker keeps its minimum CPU share: the mechanism the OS allowed
    ("cgroup_v1": the group's cpu.shares; "nice": the nice level's CFS weight), the weight set,
    the share of a saturated core that weight gives against one nice-0 task, the cgroup, and
    the threads' scheduling policy ("idle": SCHED_IDLE inside the group; "other": the normal
    one)."""

    mechanism: str
    weight: int
    share: float
    nice: int
    cgroup: str | None = None
    policy: str = "other"


@dataclass(frozen=True)
class WorkerReady:
    pid: int
    models: tuple[ModelInfo, ...]
    # What the worker itself sees after binding (for /api/stats and the isolation test).
    cpu_affinity: tuple[int, ...] | None
    cuda_visible_devices: str | None
    threads: int
    # Tasks the worker runs at once.
    slots: int = 1
    # The resident-memory ceiling it runs under, as its own machine set it (a Ray node's memory
    # for a defaulted ceiling); the server's watchdog holds it to this one. None: none.
    memory_limit_bytes: int | None = None
    # A batch lane's minimum CPU share as the worker set it (ris.runtime.cpu_share); None: none.
    cpu_share: CpuShareInfo | None = None
    # The nice level it runs at, as the OS says once it is bound (its serving thread's).
    nice: int | None = None


@dataclass(frozen=True)
class WorkerFailed:
    """The worker could not start (model load error); it exits after sending this."""

    code: str
    message: str


def _counter(text: str) -> Any:
    return field(default=0, metadata={"help": text, "gauge": False})


def _gauge(text: str) -> Any:
    return field(default=0, metadata={"help": text, "gauge": True})


@dataclass(frozen=True)
class EngineFigures:
    """What an LLM worker's batching engine has done since the worker started (counters) and
    holds now (gauges), as llama-server's /metrics tells its users: the figures behind a
    throughput or a cache question that per-task counts cannot answer (a cancelled stream's
    tokens were still computed; a reused prompt prefix was not). Each field's metadata says
    which it is and what it means (/metrics' help; ris.lanes.llm.add_figures)."""

    decode_steps: int = _counter("decode calls, each one step of every running sequence")
    batched_tokens: int = _counter("tokens over all decode calls (per step: the mean batch)")
    prompt_tokens: int = _counter("prompt tokens computed (prefill)")
    reused_prompt_tokens: int = _counter("prompt tokens found in a slot's KV cache, not computed")
    generated_tokens: int = _counter("tokens sampled, those of cancelled streams included")
    sequences: int = _gauge("sequences running now")
    kv_cache_tokens: int = _gauge("tokens whose KV the slots hold now (kept prefixes included)")
    kv_cache_capacity_tokens: int = _gauge("the most tokens the slots' KV cache holds")


@dataclass(frozen=True)
class Heartbeat:
    # Monotonic count of progress events so far: the supervisor tells "busy" from "stuck".
    progress_events: int
    # A lane that borrows idle cores (LaneConfig.borrow_idle_cores): the other lanes' cores it
    # runs on now, and its library's thread count now; None where the lane borrows nothing.
    borrowed_cores: tuple[int, ...] | None = None
    threads_now: int | None = None
    # A batching engine's figures (an LLM worker whose backend counts them), else None.
    engine: EngineFigures | None = None


@dataclass(frozen=True)
class TaskOutput:
    """A piece of a task's output as it is produced (ris.lanes.llm.TextDelta, ...)."""

    task_id: str
    data: Any = field(repr=False)


@dataclass(frozen=True)
class TaskProgress:
    """Steps done of a task that counts them (denoising steps)."""

    task_id: str
    done: int
    total: int | None = None


@dataclass(frozen=True)
class TaskDone:
    task_id: str
    outcome: Any = field(repr=False)  # the lane kind's outcome dataclass


@dataclass(frozen=True)
class TaskError:
    task_id: str
    code: str
    message: str


@dataclass(frozen=True)
class TaskCancelled:
    task_id: str


TaskEnd = TaskDone | TaskError | TaskCancelled
