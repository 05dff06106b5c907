"""What a lane kind declares, and the pieces both sides of the worker boundary share.

A lane kind is one module (ris/lanes/llm.py, tts.py, image.py) holding one `LaneKind`:

    server process                                   worker process
    --------------                                   --------------
    request (a frozen dataclass)  --- RunTask --->   LaneRunner.run(backend, ...)
    TaskHandle collects outputs  <-- TaskOutput --     gives the backend a typed output
                                                       object (WorkerEnv.output underneath)
    LaneKind.build_result(...)   <-- TaskDone ---      returns the lane's outcome
      -> a typed result (LLMResult, ...)

Results cross the boundary as values (text, PCM, PNG bytes), never as paths: the server writes
every file it serves (ResultFiles), so a worker needs no disk shared with the server.
Backends are registered by name on their kind ("module:Class", imported only inside the
worker), so a new backend is one file plus one entry and the package imports without torch.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel

from ris.config.schema import ModelSpec

# ModelDetails lives with the wire message that carries it to the server (ModelInfo); backends
# know it from here.
from ris.messages import EngineFigures, LaneRequest, ModelDetails, TaskOutput, TaskProgress
from ris.preemption.policy import Activity, PreemptionPolicy, Yielder


class BackendError(Exception):
    """A backend refused or failed a request; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Cancelled(BackendError):
    """Raised inside a backend (or by its output object) once its task is cancelled."""

    def __init__(self) -> None:
        super().__init__("cancelled", "cancelled by the client")


@dataclass(frozen=True)
class BackendContext:
    """Where a backend runs: what its worker was bound to."""

    device: str  # "cpu" or "cuda:N" as configured (the worker sees only that GPU, as cuda:0)
    threads: int
    # A folder on the worker's own machine for model caches (tokenizers, the built-in tiny
    # pipeline). Results never go here: they travel back to the server as values.
    data_dir: Path
    # Preemptible lanes: how this worker yields to real-time lanes (None elsewhere). A backend
    # with sub-step preemption points (the `block` policy) installs them when asked.
    preemption: PreemptionPolicy | None = None
    # Tasks the worker runs at once (LaneConfig.parallel); a backend that batches sizes its
    # batch by it, one that does not runs its tasks one after another.
    parallel: int = 1
    # A GPU lane's memory budget (WorkerSpec.gpu_budget_bytes) and, when the server could not
    # size it (no NVML there), the configured share of the card: torch backends cap their
    # allocator to it (ris.backends.torch_memory), llama.cpp places the layers that fit a budget
    # in bytes (a fraction alone, on a cluster node, leaves llama.cpp placing every layer).
    gpu_budget_bytes: int | None = None
    gpu_memory_fraction: float | None = None


class Backend(ABC):  # noqa: B024 - each lane's interface adds its abstract method
    """What every backend shares: built from its config entry inside the worker; freed by close()."""

    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        del spec, ctx

    @classmethod
    def check(cls, spec: ModelSpec) -> None:
        """What can be known wrong before loading, without loading: raises BackendError. Run
        before a load evicts other models for its room (a model whose file is missing, or whose
        options the library does not take, emptied the lane and then failed). Nothing by
        default (a backend's source need not be a file); those that load files check them."""
        del spec

    def describe(self) -> ModelDetails:
        return ModelDetails()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory."""


@dataclass(frozen=True)
class Timings:
    """Milliseconds from submission: to the start, to the first output, to the end."""

    queue_ms: float | None = None
    first_output_ms: float | None = None
    total_ms: float | None = None


@dataclass(frozen=True)
class Counted:
    """An amount of work a finished task did, for a `ris_<name>_total` counter per lane and
    model (/metrics) and a rate over a recent window (`ris status`). `name` ends in its unit,
    in base units (`generated_tokens`, `audio_seconds`, `image_steps`)."""

    name: str
    help: str
    value: float


def timings_json(t: Timings) -> dict[str, float | None]:
    # By hand: dataclasses.asdict's deep copy showed on the request path.
    return {"queue_ms": t.queue_ms, "first_output_ms": t.first_output_ms, "total_ms": t.total_ms}


@dataclass(frozen=True)
class LaneResult:
    """A finished task's result as clients see it; each lane kind extends it."""

    model: str
    timings: Timings

    def to_json(self) -> dict[str, Any]:
        """Everything, for the durable store."""
        return dataclasses.asdict(self)

    def public_json(self) -> dict[str, Any]:
        """What clients see of it (GET /api/tasks/{id}): no server paths. The routes that
        serve a result's file add its URL (lanes know no URLs)."""
        return self.to_json()

    @property
    def steps_done(self) -> int | None:
        """Progress units a finished task completed, where the lane counts them (image steps)."""
        return None

    def counted(self) -> tuple[Counted, ...]:
        """The work this task did, as its lane counts it (tokens, audio seconds, steps)."""
        return ()

    def files(self) -> tuple[str, ...]:
        """The server's files this result names: kept, and deleted, with its task record."""
        return ()


R = TypeVar("R", bound=LaneResult)


def result_from_json(cls: type[R], data: Mapping[str, Any]) -> R:
    """Rebuild a result stored with `to_json` (unknown keys from older versions are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if k in names}
    values["timings"] = Timings(**(data.get("timings") or {}))
    return cls(**values)


class CoreFit(Protocol):
    """A borrowing worker's cores (ris.runtime.lending.CoreLending): `fit(working)` before each
    step of work, and with False once idle, moves the process onto the cores it may use now
    and returns the thread count its backend should use if it changed, else None."""

    # The thread count in force now (what the last fit() returned, or the lane's own).
    threads: int

    def fit(self, working: bool) -> int | None: ...


@dataclass
class WorkerEnv:
    """What the worker process gives a lane's runner: `output` and `progress` report on a
    running task, `publish` the lane's activity; the wire messages stay the worker's business."""

    lane: str
    # Sends one wire message to the server (ris.messages); runners report through output().
    send: Callable[[object], None]
    # Publishes this lane's activity on the board that batch lanes read.
    publish: Callable[[Activity], None]
    # Counts one progress event; heartbeats carry the count so the server tells busy from stuck.
    tick: Callable[[], None]
    # Preemptible lanes only: where the worker pauses for real-time lanes sharing its hardware.
    yielder: Yielder | None = None
    # Tasks the worker runs at once (LaneConfig.parallel).
    parallel: int = 1
    # Lanes that borrow idle cores (LaneConfig.borrow_idle_cores): where the runner asks.
    cores: CoreFit | None = None
    # Whether someone reads a task's outputs as they come (RunTask.streamed), by task id.
    streamed: Callable[[str], bool] = lambda _task_id: True

    def output(self, task_id: str, data: object) -> None:
        """Stream a piece of a task's output to the server (the lane's own type: a TextDelta,
        an AudioChunk); it reaches LaneKind.build_result in order, in `Seen.outputs`."""
        self.tick()
        self.send(TaskOutput(task_id, data))

    def progress(self, task_id: str, done: int, total: int | None = None) -> None:
        """Report steps done of a task that counts them (an image's denoising steps)."""
        self.tick()
        self.send(TaskProgress(task_id, done, total))


BackendT = TypeVar("BackendT", bound=Backend)
RequestT = TypeVar("RequestT", bound=LaneRequest)
OutcomeT = TypeVar("OutcomeT")


class LaneRunner(ABC, Generic[BackendT, RequestT, OutcomeT]):
    """Runs one task of its lane on a backend, inside the worker, streaming outputs to the server."""

    def __init__(self, env: WorkerEnv) -> None:
        self.env = env

    @abstractmethod
    def run(
        self, backend: BackendT, task_id: str, request: RequestT, cancelled: Callable[[], bool]
    ) -> OutcomeT: ...


class ConcurrentRunner(LaneRunner[BackendT, RequestT, OutcomeT]):
    """A runner that holds several tasks at once and advances them together, a step at a time
    (the LLM lane's continuous batching). The worker admits tasks between steps, so a new one
    joins the running ones at the next step, and each ended task is reported as it ends."""

    @abstractmethod
    def admit(
        self, backend: BackendT, task_id: str, request: RequestT, cancelled: Callable[[], bool]
    ) -> None:
        """Take a task; it starts at a coming step."""

    @abstractmethod
    def step(self) -> list[tuple[str, OutcomeT | BackendError]]:
        """Advance every task held by one step; the tasks that ended, with how."""

    @abstractmethod
    def busy(self) -> bool:
        """Holds a task (the worker then steps instead of waiting for messages)."""

    def forget(self, backend: BackendT) -> None:  # noqa: B027 - optional: most keep nothing
        """`backend` is being unloaded (it holds no task): drop what was kept of it."""

    def figures(self) -> EngineFigures | None:
        """Its engine's figures for the heartbeat (None: it counts none). Called from the
        heartbeat thread while the worker's thread steps: read, never change, its state."""
        return None

    def run(
        self, backend: BackendT, task_id: str, request: RequestT, cancelled: Callable[[], bool]
    ) -> OutcomeT:
        """One task alone, start to end (direct calls and tests)."""
        self.admit(backend, task_id, request, cancelled)
        while True:
            for key, ended in self.step():
                if key == task_id:
                    if isinstance(ended, BaseException):
                        raise ended
                    return ended


@dataclass
class Seen:
    """What the server collected of one task while it ran: the outputs kept in memory, in
    order; the file its collector wrote them to, if it did; and timings."""

    task_id: str
    model: str
    outputs: list[Any]
    timings: Timings
    file: Path | None = None
    # Its result file is kept (Engine.submit's keep_files): False, the task was only streamed,
    # and its file (if the collector made one) goes as it ends.
    kept: bool = True


class ResultFiles(Protocol):
    """The server's folder of result files (ris.runtime.files)."""

    def write(self, folder: str, name: str, data: bytes) -> Path: ...

    def write_wav(self, folder: str, name: str, pcm: bytes, sample_rate: int) -> Path: ...

    def place(self, folder: str, name: str) -> Path:
        """Where the result file `name` of `folder` goes (the folder made)."""
        ...


class Collector(Protocol):
    """Where the server keeps one task's outputs while it runs, for the lane's result builder
    (LaneKind.collector). Runs on the event loop: cheap calls, no waiting."""

    outputs: list[Any]  # kept in memory, in order (empty for outputs written to a file)

    def add(self, output: Any) -> Any:
        """Keep an output as it arrives; returns what the task's event stream carries for it:
        the output itself, or a small stand-in for one kept on disk."""

    def finish(self) -> Path | None:
        """The task succeeded: the file the outputs went to, complete (None: in memory)."""

    def discard(self) -> None:
        """The task ended without a result: drop what was kept."""

    def release(self) -> None:
        """The task's result was only streamed and is not kept (Engine.submit's keep_files):
        its file goes now, while the streams that are reading it read on to its end."""


class Coalesces(ABC):
    """An event that an unread newer one may join (ris.lanes.tts_audio.AudioWritten: contiguous
    audio), so a consumer that does not read holds one event, not one per output. A base
    class, not a protocol: the check runs for every event a lagging reader has not taken."""

    __slots__ = ()

    @abstractmethod
    def followed_by(self, newer: object) -> object | None:
        """This event and `newer` as one; None when they cannot be one."""


class KeptOutputs:
    """The default collector: every output in memory (text, progress: small by their limits)."""

    def __init__(self) -> None:
        self.outputs: list[Any] = []

    def add(self, output: Any) -> Any:
        self.outputs.append(output)
        return output

    def finish(self) -> Path | None:
        return None

    def discard(self) -> None:
        self.outputs.clear()

    def release(self) -> None:
        pass  # in memory: it goes with the handle


@dataclass(frozen=True)
class BackendEntry:
    """A registered backend: where the worker imports it from, and what it can do, declared at
    registration so the server knows without importing it (the package imports without torch)."""

    target: str  # "module:Class"
    # Serves `parallel` requests at once, in one batch (the others serve one at a time).
    batches: bool = False
    # Decodes under a grammar (structured output, tools); the API refuses those requests for
    # models of other backends.
    constrains: bool = False
    # Applies repetition penalties (repeat, frequency, presence); the API refuses them for
    # models of other backends.
    penalizes: bool = False
    # The `options` a model of this backend may have (ris.config.backend_options), checked
    # when the config loads; None: not checked (a plugin's backend, unless it says).
    options: type[BaseModel] | None = None
    # A library whose state is per process and which this backend drives its own way
    # (libespeak-ng: espeak runs it synchronously, pyttsx3 asynchronously): two backends that
    # name the same one cannot share a lane's worker, and the config says so when it loads.
    drives: str | None = None
    # Resident memory a worker holds with this backend's libraries loaded and no model (its
    # interpreter and RIS included): counted before the models against the worker's ceiling.
    # None: WORKER_BASE_BYTES (ris.config.fit_checks), the interpreter and a light library.
    process_bytes: int | None = None


ResultT = TypeVar("ResultT", bound=LaneResult)


class LaneKind(ABC, Generic[RequestT, OutcomeT, ResultT]):
    """One kind of work: its types, backends, defaults, runner and result builder.

    Typed by its request, its worker's outcome and its result: the engine's `submit(kind, ...)`
    takes the kind's request and hands back a handle to the kind's result, so routes read
    results without narrowing them."""

    name: ClassVar[str]
    request_type: ClassVar[type]
    outcome_type: ClassVar[type]
    backend_type: ClassVar[type[Backend]]
    # Backend name -> its entry; the one registry of this lane's backends.
    backends: dict[str, BackendEntry]
    # Accepted tasks survive a server restart (asynchronous lanes whose clients poll later).
    durable: ClassVar[bool] = False
    # Yields to real-time lanes that share its GPU or cores (see ris.preemption).
    preemptible: ClassVar[bool] = False
    # Its runner can widen to idle real-time lanes' cores between steps (borrow_idle_cores).
    borrows_cores: ClassVar[bool] = False
    # Its threads on lent cores sleep when they wait, whatever the lane's wait policy (which is
    # OpenMP's): the lending watcher may move them off a lent core under a running step.
    borrowed_threads_sleep: ClassVar[bool] = False
    # Never given a GPU (speech runs on its own CPU cores).
    cpu_only: ClassVar[bool] = False
    # Load every configured model at start (small models whose details the server routes by).
    load_all_models: ClassVar[bool] = False
    # The folder of the server's data_dir this lane's result files go to (None: no files);
    # the retention policy sweeps these folders and no others.
    result_folder: ClassVar[str | None] = None
    # The worker's default memory ceiling, as a share of the machine's memory (LaneConfig
    # memory_limit_mb overrides it). Big enough for the largest model a lane is meant to hold,
    # small enough that one runaway worker cannot take the machine.
    memory_share: ClassVar[float] = 0.6
    # Tasks may be submitted through the generic POST /api/tasks. The built-in lanes say no:
    # their own routes check requests against the server's limits (prompt and image sizes).
    generic_api: ClassVar[bool] = True
    # LaneConfig fields a config.json may leave out, where this kind's differ from the generic
    # ones (the image lane: batch priority class, lowest OS priority, a long deadline).
    config_defaults: ClassVar[Mapping[str, Any]] = {}

    # The work its tasks count (LaneResult.counted), each as a Counted of 0: /metrics shows
    # every model's counter from the start, not from its first task.
    counters: ClassVar[tuple[Counted, ...]] = ()

    # The worker-side runner of this lane's tasks.
    runner_type: ClassVar[type[LaneRunner[Any, Any, Any]]]
    # Backends that come with RIS: name -> "module:Class", or an entry for one that declares
    # abilities (more may be registered).
    builtin_backends: ClassVar[Mapping[str, str | BackendEntry]] = {}
    # The embedded default models (those the default set-up installs), the first the default.
    embedded_models: ClassVar[Mapping[str, ModelSpec]] = {}

    def __init__(self) -> None:
        self.backends = {
            name: entry if isinstance(entry, BackendEntry) else BackendEntry(entry)
            for name, entry in self.builtin_backends.items()
        }

    # ----- registry and defaults -------------------------------------------------------------

    @property
    def concurrent(self) -> bool:
        """Its worker may run several tasks at once (config `parallel`)."""
        return issubclass(self.runner_type, ConcurrentRunner)

    def register_backend(
        self,
        name: str,
        target: str,
        *,
        batches: bool = False,
        constrains: bool = False,
        penalizes: bool = False,
        options: type[BaseModel] | None = None,
    ) -> None:
        """Add a backend ("module:Class") and what it can do (see BackendEntry); the worker
        imports it when a model names it."""
        if ":" not in target:
            raise ValueError(f"backend target {target!r} must look like 'package.module:Class'")
        self.backends[name] = BackendEntry(
            target, batches=batches, constrains=constrains, penalizes=penalizes, options=options
        )

    def backend(self, name: str) -> BackendEntry:
        try:
            return self.backends[name]
        except KeyError:
            allowed = ", ".join(self.backends) or "none"
            raise BackendError(
                "unknown_backend", f"no {self.name} backend named {name!r}; available: {allowed}"
            ) from None

    def backend_target(self, name: str) -> str:
        return self.backend(name).target

    def backend_class(self, name: str) -> type[Backend]:
        return load_backend(self.backend_target(name), name)

    def default_models(self) -> dict[str, ModelSpec]:
        return dict(self.embedded_models)

    def default_model(self) -> str | None:
        return next(iter(self.embedded_models), None)

    def enabled_by_default(self) -> bool:
        return True

    # ----- worker side -----------------------------------------------------------------------

    def runner(self, env: WorkerEnv) -> LaneRunner[Any, RequestT, OutcomeT]:
        return self.runner_type(env)

    # ----- server side -----------------------------------------------------------------------

    def collector(self, task_id: str, files: ResultFiles, *, keep: bool = True) -> Collector:
        """Where the server keeps a task's outputs until build_result: in memory by default; a
        lane whose outputs are large (speech) writes them to the task's result file instead.
        `keep=False`: only streamed, no result file is kept (Engine.submit's keep_files)."""
        del task_id, files, keep
        return KeptOutputs()

    @abstractmethod
    def build_result(self, seen: Seen, outcome: OutcomeT, files: ResultFiles) -> ResultT: ...

    @abstractmethod
    def result_from_json(self, data: Mapping[str, Any]) -> ResultT: ...

    def owned(self, request: RequestT, owner: str | None) -> RequestT:
        """`request` as the task of `owner` (ris.runtime.tenancy; None: no key names anyone). A
        lane whose worker keeps what one task computed for the next (the LLM's prompt cache)
        marks whose it is: what one owner's prompts left must not serve another's, whose
        answer would come measurably sooner for guessing them right."""
        del owner
        return request

    def costly(self, request: RequestT) -> bool:
        """A request whose work per step is far above its kind's usual (a grammar with hundreds
        of alternatives): one client's costly tasks hold at most the lane's client_share of its
        slots even while nobody else waits, so another client's request finds a slot at once
        rather than behind them (ris.scheduler)."""
        del request
        return False

    def work(self, request: RequestT, spec: ModelSpec | None) -> float:
        """How much work the request is in the lane's units (TaskSpec.work; `spec`: the model
        that runs it, None when no longer configured): its run is estimated as the lane's
        learned fixed time plus that many times its time per unit (ris.scheduler.run_fit). 1
        for a kind whose tasks are alike."""
        del request, spec
        return 1.0

    def planned_progress(self, request: RequestT, spec: ModelSpec | None) -> int | None:
        """The outputs a task of this request will report as its progress, where the request
        says before it runs (TaskSpec.progress_total); None for a kind whose count is known
        only as it runs."""
        del request, spec
        return None

    def serves_at_once(self, backend: str, parallel: int) -> int:
        """Requests one of this lane's models on `backend` serves at once, with the lane's
        `parallel`: all of them for a backend that batches (llama.cpp), else one after another."""
        return parallel if self.backend(backend).batches else 1

    def model_features(self, backend: str, loaded: ModelDetails | None) -> dict[str, Any]:
        """What GET /api/models says of one of this lane's models beyond name, backend and
        voices (`loaded`: what its worker reported, None while it is not loaded)."""
        del backend, loaded
        return {}

    def request_to_json(self, request: RequestT) -> dict[str, Any]:
        return dataclasses.asdict(request)

    def request_from_json(self, data: Mapping[str, Any]) -> RequestT:
        req: RequestT = self.request_type(**data)
        return req


def load_backend(target: str, name: str) -> type[Backend]:
    """Import "module:Class" (inside a worker, after its binding is applied)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendError(
            "backend_unavailable",
            f"the {name!r} backend needs a package that is not installed ({e.name}): {e}",
        ) from e
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError("backend_unavailable", f"{target!r} is not a backend class")
    return cls


__all__ = [
    "Backend",
    "BackendContext",
    "BackendEntry",
    "BackendError",
    "Cancelled",
    "Coalesces",
    "Collector",
    "Counted",
    "KeptOutputs",
    "LaneKind",
    "LaneResult",
    "LaneRunner",
    "ModelDetails",
    "ResultFiles",
    "Seen",
    "Timings",
    "WorkerEnv",
    "load_backend",
    "result_from_json",
    "timings_json",
]
