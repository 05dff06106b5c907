"""What the engine hands the HTTP layer for a task: its live handle and a typed, read-only view,
and how views are made from the scheduler's and the store's records. (Lanes and workers are
seen through ris.runtime.snapshot.)"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ris.lanes.base import Coalesces, Collector, KeptOutputs, LaneKind, LaneResult
from ris.runtime.store import StoredTask
from ris.scheduler import ModelWait, Scheduler, Task


class EventStream:
    """A task's events in order: the engine puts, one consumer awaits. (asyncio.Queue does the
    same with more machinery, measurable on the request path: one is made per task.)"""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        last = self._items[-1] if self._items else None
        joined = last.followed_by(item) if isinstance(last, Coalesces) else None
        if joined is not None:
            self._items[-1] = joined
        else:
            self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


# The result type of a task's lane kind (ris.lanes.llm.LLMResult, ...).
R = TypeVar("R", bound=LaneResult)


@dataclass
class TaskHandle(Generic[R]):
    """The live side of a submitted task: its stream of events and a future for its end.
    Typed by its lane kind's result, so whoever awaits `done` reads an `R`, unnarrowed."""

    task_id: str
    # The task's lane kind: it builds the task's result from what the worker sent.
    kind: LaneKind[Any, Any, R]
    model: str
    # What the worker streams (ris.lanes.llm.TextDelta, ris.lanes.tts_audio.AudioChunk,
    # ris.messages.TaskProgress), in order; None marks the end.
    events: EventStream = field(default_factory=EventStream)
    # The task as it ended.
    done: asyncio.Future[TaskView[R]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Where its outputs are kept for the result builder (its lane kind's collector), and when
    # the first and the latest came (scheduler clock).
    collector: Collector = field(default_factory=KeptOutputs)
    first_output_at: float | None = None
    last_output_at: float | None = None
    # How long its model stays loaded once idle after it (None: the lane's keep_alive_s).
    keep_alive_s: float | None = None
    # False: its result's files are read only through `events` (a stream), so they go as the
    # task ends and no record is kept of them (Engine.submit's keep_files).
    keep_files: bool = True
    # False: nobody reads its events before it ends, only its result (Engine.submit's streamed).
    streamed: bool = True
    # False: a durable task its caller waits for on its connection (Engine.submit's resumable).
    resumable: bool = True

    @property
    def lane(self) -> str:
        return self.kind.name


@dataclass(frozen=True)
class TaskView(Generic[R]):
    """A task as clients see it; times are Unix seconds. `R` is its lane kind's result type
    (`LaneResult` where the lane is not known statically, as in a lookup by id)."""

    id: str
    lane: str
    model: str
    state: str
    priority: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None
    progress_done: int
    progress_total: int | None
    eta_s: float | None
    error_code: str | None
    error_message: str | None
    result: R | None
    # The key that created it (ris.runtime.tenancy): a named key's name, "key:<fingerprint>"
    # for a plain key, None with no key configured.
    owner: str | None = None
    # What a running task waits for before its work starts, as its worker says: "model_load"
    # while it loads the task's model (a first use, a switch) or holds the task until a switch
    # can load (behind another model's running batch); its ETA counts the drain and the load.
    waiting_for: str | None = None
    # The model whose load it waits for: its own, or the one a switch it is held behind loads.
    waiting_for_model: str | None = None
    # A running task that counts steps (an image): how much of it is done, 0-0.99, by time
    # (its run against its run plus its ETA: the decode after the last step moves it too).
    fraction_done: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"


def task_view(
    task: Task,
    scheduler: Scheduler,
    wall: Callable[[float | None], float | None],
    wait: ModelWait | None = None,
) -> TaskView[Any]:
    """A live (or recently finished) task as clients see it; `wall` turns scheduler times into
    Unix seconds; `wait`: the engine's word that a running task waits for its model's load."""
    model = task.spec.payload[0] if task.spec.payload else ""
    return TaskView(
        id=task.id,
        lane=task.lane,
        model=model,
        state=task.state.value,
        priority=task.spec.priority,
        submitted_at=wall(task.submitted_at) or 0.0,
        started_at=wall(task.started_at),
        finished_at=wall(task.finished_at),
        queue_position=scheduler.position(task.id),
        progress_done=task.progress_done,
        progress_total=task.progress_total,
        eta_s=scheduler.eta(task.id, wait),
        error_code=task.error_code,
        error_message=task.error_message,
        result=task.result,
        owner=task.spec.owner,
        waiting_for=None if wait is None else "model_load",
        waiting_for_model=None if wait is None else wait.model,
        fraction_done=scheduler.fraction_done(task.id),
    )


# The fields a stored task shows as they are.
_STORED_AS_VIEWED = (
    "id", "lane", "model", "state", "priority", "submitted_at", "started_at", "finished_at", "error_code",
    "error_message", "owner",
)  # fmt: skip


def stored_view(st: StoredTask, kind: LaneKind[Any, Any, Any] | None) -> TaskView[Any]:
    """A task from the durable store (finished, or accepted before a restart)."""
    result = kind.result_from_json(st.result) if kind is not None and st.result else None
    steps = result.steps_done if result is not None else None
    done = st.progress_done if st.progress_done is not None else steps or 0
    total = st.progress_total if st.progress_done is not None else steps  # a row from before: its result's
    same = {name: getattr(st, name) for name in _STORED_AS_VIEWED}
    return TaskView(
        **same, queue_position=None, progress_done=done, progress_total=total, eta_s=None, result=result
    )
