"""The scheduler: admission, ordering, dispatch, cancellation and deadlines, with no I/O.

The runtime drives it, as vLLM's engine drives its scheduler:

    task = sched.submit(spec)            # or QueueFull -> HTTP 429 with Retry-After
    for task in sched.dispatch(): ...    # start these on their lane's worker
    sched.progress(id, done, total)      # as the worker reports
    sched.finish(id, TaskState.SUCCEEDED, result=...)
    sched.cancel(id)                     # queued: gone now; running: the runtime interrupts it
    sched.expire()                       # deadlines; returns running tasks to interrupt

Time comes only from the injected clock, so every decision is reproducible in a unit test.

Two orderings: `Ordering.LANES` (the product: each lane's own priority queue, so a busy image
lane never delays chat or speech) and `Ordering.FIFO` (the "traditional" baseline the
benchmark compares against: one first-in-first-out queue for all lanes, priorities ignored, and
a task waits while any task submitted before it has not started, as in a single job queue).
"""

from __future__ import annotations

import enum
import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ris.scheduler.fairness import fair_order, fair_pick
from ris.scheduler.queue import LaneQueue
from ris.scheduler.run_fit import RunFit
from ris.scheduler.tasks import PriorityClass, Task, TaskSpec, TaskState

Clock = Callable[[], float]


@dataclass(frozen=True)
class ModelWait:
    """A running task whose worker has yet to load a model (the worker's word, through the
    engine, for Scheduler.eta): the running tasks of other models the worker holds it behind
    (a switch waits for their batch to drain), the load's expected seconds, and when the load
    began (None: not yet)."""

    behind: tuple[str, ...] = ()
    load_s: float = 0.0
    loading_since: float | None = None
    # The model whose load it waits for (its own, or the switch's it is held behind).
    model: str | None = None


@dataclass(frozen=True)
class LanePolicy:
    """How one lane queues and admits work."""

    # Queued tasks beyond this are refused (HTTP 429), never buffered without bound.
    max_queue: int = 64
    # Seconds of waiting that one step of `priority` is worth (see LaneQueue).
    aging_s: float = 10.0
    # Extra head start of REALTIME over BATCH tasks in a queue they share.
    class_boost_s: float = 60.0
    priority_class: PriorityClass = PriorityClass.REALTIME
    # Finished tasks remembered for polling, per lane; older ones are forgotten first.
    keep_finished: int = 1000
    # Run time assumed before any task of the lane has finished (for Retry-After).
    initial_run_estimate_s: float = 1.0
    # The share of the lane's slots one client (TaskSpec.client) may hold while another
    # client's task waits; at least one slot. Alone, a client takes every free slot.
    client_share: float = 1.0
    # The share of the lane's queue places one client may hold (at least one place): one key
    # that filled a queue of hour-long images locked every other client out of it for a day.
    client_queue_share: float = 1.0


class Ordering(enum.StrEnum):
    LANES = "lanes"  # per-lane priority queues with aging, dispatched independently
    FIFO = "fifo"  # one arrival-order queue across lanes, head-of-line blocking


# Retry-After for a held lane's full queue (Scheduler.hold): about when the engine looks again
# (its data folder check, every 5 s).
HELD_RETRY_S = 5.0


class QueueFull(Exception):
    """The lane's queue is at its bound, or has no room for a whole batch (`wanted` tasks, of
    which `room` would fit); the caller should retry after `retry_after_s`."""

    def __init__(
        self,
        lane: str,
        depth: int,
        retry_after_s: float,
        *,
        wanted: int = 1,
        room: int = 0,
        client_cap: int | None = None,
    ) -> None:
        if client_cap is not None:
            message = (
                f"this client's share of the {lane} queue is full ({client_cap} of its places "
                f"hold its tasks; client_queue_share): wait for them, or cancel some"
            )
        elif wanted > 1:
            message = (
                f"the {lane} queue has room for {room} more task{'s' if room != 1 else ''}, not the "
                f"{wanted} asked for together ({depth} waiting); a batch is queued whole or not at all"
            )
        else:
            message = f"the {lane} queue is full ({depth} tasks waiting)"
        super().__init__(message)
        self.lane = lane
        self.depth = depth
        self.retry_after_s = retry_after_s
        self.wanted = wanted
        # Set where the batch is more than the lane ever admits at once: no retry helps.
        self.most: int | None = None


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"  # it was queued and will never run
    REQUESTED = "requested"  # it is running: the runtime must interrupt the worker
    FINISHED = "finished"  # it had already finished; nothing changed
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class LaneStats:
    lane: str
    queued: int
    running: int
    slots: int
    succeeded: int
    failed: int
    cancelled: int
    # Seconds from submission to finish, over the most recent finished tasks.
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    queue_wait_p50: float | None
    run_time_mean: float | None
    # Submissions refused with QueueFull (HTTP 429) since the server started.
    rejected: int = 0
    # Why its queue starts nothing now (Scheduler.hold), e.g. "disk_space"; None: it runs.
    held: str | None = None


def percentile(values: Iterable[float], p: float) -> float | None:
    """Nearest-rank percentile, p in [0, 100]: the smallest value with at least p% of them at
    or below it; None for no values. (A rounded index flipped the median between the lower
    and the upper middle value as the count changed: round() rounds halves to even.)"""
    xs = sorted(values)
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))]


class RandomIds:
    """Task ids: 32 hex characters from the OS's cryptographic randomness (ids are the only
    key to a task's result), drawn 256 ids at a time: one system call per id was measurable
    on the request path."""

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._hex = ""

    def __call__(self) -> str:
        if not self._hex:
            self._hex = os.urandom(16 * self._batch).hex()
        head, self._hex = self._hex[:32], self._hex[32:]
        return head


class _LaneBook:
    """Everything the scheduler tracks for one lane."""

    def __init__(self, lane: str, policy: LanePolicy) -> None:
        self.lane = lane
        self.policy = policy
        self.queue = LaneQueue(policy.max_queue, policy.aging_s, policy.class_boost_s)
        self.running: dict[str, Task] = {}
        self.slots = 0
        self.finished: deque[str] = deque()
        self.counts = {TaskState.SUCCEEDED: 0, TaskState.FAILED: 0, TaskState.CANCELLED: 0}
        self.latencies: deque[float] = deque(maxlen=1000)
        self.waits: deque[float] = deque(maxlen=1000)
        self.rejected = 0  # submissions refused with QueueFull
        self.held: str | None = None  # Scheduler.hold's reason: nothing starts meanwhile
        self.last_client: str | None = None  # the client of the task started last (fairness)
        # Scheduler._placing's last answer and what it was computed from.
        self.placing: tuple[tuple[Any, ...], dict[str, int], dict[str, float]] | None = None
        # Run times learned as a fixed part and a part per unit of work (TaskSpec.work), for
        # ETAs at a task's size; its mean, for Retry-After (when a slot frees).
        self.runs = RunFit(policy.initial_run_estimate_s)
        # What a task that counts steps takes after its last one (an image's VAE decode and
        # its file), by the size of one step's work (TaskSpec.work / steps: its pixels); None
        # until one such task has ended.
        self.tails: RunFit | None = None


class Scheduler:
    """Per-lane bounded priority queues feeding worker slots; pure state, clock injected."""

    def __init__(
        self,
        policies: Mapping[str, LanePolicy],
        clock: Clock,
        new_id: Callable[[], str] | None = None,
        ordering: Ordering = Ordering.LANES,
        unreported: Callable[[str], bool] = lambda _task_id: False,
    ) -> None:
        """`unreported(task_id)`: a finished task the caller has not yet read (its client not
        answered, its record not written); kept past `keep_finished` until it has been."""
        self._clock = clock
        self.ordering = ordering
        self._unreported = unreported
        self._new_id = new_id or RandomIds()
        self._lanes = {lane: _LaneBook(lane, p) for lane, p in policies.items()}
        self._tasks: dict[str, Task] = {}
        self._seq = itertools.count()
        # Why a running task is being cancelled: "client" or "deadline".
        self._cancel_reason: dict[str, str] = {}

    # ----- admission -----------------------------------------------------------------------

    def submit(
        self,
        spec: TaskSpec,
        task_id: str | None = None,
        *,
        force: bool = False,
        submitted_at: float | None = None,
        retry: bool = False,
    ) -> Task:
        """Admit a task, or raise QueueFull. `force` skips the bound and `submitted_at` (this
        clock's time) keeps the first submission's time: for tasks that were already accepted
        once (resumed after a restart), which must not be lost nor look newer than they are.
        `retry`: the caller's own retry of a refused submission, not counted as another refusal."""
        book = self._book(spec.lane)
        # A full queue used to mean every slot busy; with costly tasks held to their client's
        # share, slots can be free beside a full queue: a task that would start at once on one
        # (not costly) is admitted past the bound, not refused.
        # (Per-lane ordering only: under FIFO the oldest task of any lane blocks the rest.)
        # A held lane starts nothing: its free slots admit nothing past the bound (a lane held
        # for disk space took every submission, each a record on the nearly full disk).
        starts_now = (
            self.ordering is Ordering.LANES
            and not spec.costly
            and book.held is None
            and len(book.running) < book.slots
        )
        if book.queue.full and not force and not starts_now:
            if not retry:
                book.rejected += 1
            raise QueueFull(spec.lane, len(book.queue), self.retry_after(spec.lane))
        cap = self._client_queue_cap(book)
        if (
            cap is not None
            and spec.client is not None
            and not (force or starts_now)
            and book.queue.queued_of(spec.client) >= cap
        ):
            if not retry:
                book.rejected += 1
            raise QueueFull(spec.lane, len(book.queue), self.retry_after(spec.lane), client_cap=cap)
        now = self._clock() if submitted_at is None else submitted_at
        task = Task(
            id=task_id or self._new_id(),
            spec=spec,
            submitted_at=now,
            sort_key=(
                now
                if self.ordering is Ordering.FIFO
                else book.queue.key_for(now, spec.priority, spec.priority_class)
            ),
            seq=next(self._seq),
            progress_total=spec.progress_total,
        )
        if task.id in self._tasks:
            raise ValueError(f"duplicate task id {task.id!r}")
        book.queue.push(task, force=force or starts_now)
        self._tasks[task.id] = task
        return task

    @staticmethod
    def _client_queue_cap(book: _LaneBook) -> int | None:
        """The queue places one client may hold (None: no bound below the queue's own)."""
        share = book.policy.client_queue_share
        return None if share >= 1.0 else max(1, math.ceil(share * book.queue.capacity))

    def room(self, lane: str, client: str | None = None) -> int:
        """How many more tasks the lane admits now, submitted one after another with a dispatch
        after each (as the engine does): its free queue places and, with per-lane ordering,
        its free worker slots, since that many new tasks start at once and leave their places
        free. FIFO ordering may hold a task behind another lane's head: places only there."""
        book = self._book(lane)
        places = max(0, book.queue.capacity - len(book.queue))
        cap = self._client_queue_cap(book)
        if cap is not None and client is not None:
            places = min(places, max(0, cap - book.queue.queued_of(client)))
        if places == 0 or self.ordering is Ordering.FIFO or book.held is not None:
            return places
        return places + max(0, book.slots - len(book.running))

    def require_room(self, lane: str, count: int, client: str | None = None) -> None:
        """Raise QueueFull unless `count` tasks would all be admitted now: a batch (n images
        in one request) is admitted whole or not at all, never partly, with ids the client
        would never see."""
        room = self.room(lane, client)
        if count > room:
            book = self._book(lane)
            full = QueueFull(lane, len(book.queue), self.retry_after(lane), wanted=count, room=room)
            # More than the lane holds even when idle (its whole queue and, its workers up,
            # their slots): no wait makes room, and a retry after Retry-After met it again.
            most = book.queue.capacity + (book.slots if self.ordering is Ordering.LANES else 0)
            cap = self._client_queue_cap(book)
            if cap is not None and client is not None:
                most = min(most, cap + (book.slots if self.ordering is Ordering.LANES else 0))
            if book.slots and book.held is None and count > most:
                full.most = most  # a 400, not one of the lane's 429s
            else:
                book.rejected += 1
            raise full

    def count_refusal(self, lane: str) -> None:
        """A refusal the caller answers with 429 after all (Scheduler.rejected)."""
        self._book(lane).rejected += 1

    def retry_after(self, lane: str) -> float:
        """Seconds until a queue place is likely to free up, at least one: the soonest end of
        a running task by its own ETA (its progress counted: a 60-step picture 2 steps in was
        "retry after 1 s", from the lane's mean run, with 28 s left); one still waiting for its
        model (a switch: no progress yet) has the whole load and its run ahead. Nothing
        running (no worker up yet): a mean run per slot."""
        book = self._book(lane)
        if book.held is not None:
            return HELD_RETRY_S  # no end frees a place while the lane starts nothing
        ends = []
        for t in book.running.values():
            left = self.eta(t.id) or 0.0
            if not t.progress_done and t.run_since is None:
                left = max(left, book.runs.estimate(t.spec.work) + t.spec.load_s)
            ends.append(left)
        if ends:
            return max(1.0, min(ends))
        return max(1.0, book.runs.mean_s / max(1, book.slots))

    # ----- dispatch ------------------------------------------------------------------------

    def learned_run_times(self, lane: str, runs: Iterable[tuple[float, float]]) -> None:
        """Run times the lane's tasks took before this start (the durable store's), as
        (seconds, work: TaskSpec.work), oldest first, folded into its estimates as finished
        tasks are: a restarted server's queue ETAs start from the lane's real pace, not the
        initial guess."""
        book = self._book(lane)
        for seconds, work in runs:
            book.runs.add(seconds, work)

    def set_slots(self, lane: str, slots: int) -> None:
        """How many tasks the lane's workers can run now (0 while its worker is down)."""
        self._book(lane).slots = slots

    def hold(self, lane: str, reason: str | None) -> None:
        """Start none of the lane's queued tasks while `reason` holds (None: start them again);
        they stay queued, and accepted (a durable lane's on a disk with no room for results)."""
        self._book(lane).held = reason

    def held(self, lane: str) -> str | None:
        return self._book(lane).held

    def dispatch(self) -> list[Task]:
        """Move tasks from queues to free worker slots; the caller starts them."""
        now = self._clock()
        if self.ordering is Ordering.FIFO:
            return self._dispatch_fifo(now)
        started: list[Task] = []
        for book in self._lanes.values():
            while book.held is None and len(book.running) < book.slots:
                task = self._next_fair(book)
                if task is None:
                    break
                self._start(book, task, now)
                started.append(task)
        return started

    @staticmethod
    def _next_fair(book: _LaneBook) -> Task | None:
        """The task to start in a free slot (fairness.fair_pick), out of the queue."""
        task = fair_pick(
            book.queue, book.running.values(), book.last_client, book.policy.client_share, book.slots
        )
        if task is not None:
            if task is book.queue.peek():
                book.queue.pop()
            else:
                book.queue.take(task)
        return task

    def _placing(self, book: _LaneBook) -> tuple[dict[str, int], dict[str, float]] | None:
        """Each queued task's place and the work queued before it in the order dispatch will
        start them when clients share the lane (fairness.fair_order), cached until the queue,
        the running tasks or the slots change; None where that is the priority order."""
        policy = book.policy
        if self.ordering is Ordering.FIFO or policy.client_share >= 1.0 or not len(book.queue):
            return None
        slots = max(1, book.slots)  # no worker up: placed as on one slot (its count comes with it)
        key = (book.queue.version, tuple(book.running), book.last_client, slots)
        if book.placing is not None and book.placing[0] == key:
            return book.placing[1], book.placing[2]
        order = fair_order(
            book.queue.ordered(), list(book.running.values()), book.last_client, policy.client_share, slots
        )
        places: dict[str, int] = {}
        ahead: dict[str, float] = {}
        total = 0.0
        for i, t in enumerate(order):
            places[t.id], ahead[t.id] = i, total
            total += t.spec.work
        book.placing = (key, places, ahead)
        return places, ahead

    def _dispatch_fifo(self, now: float) -> list[Task]:
        # Each lane's queue is in arrival order here (key = submission time), so the global
        # queue's head is the oldest lane head. It starts only when its lane has a free slot;
        # until then everything behind it waits too (head-of-line blocking).
        started: list[Task] = []
        while True:
            # A held lane's head blocks no other lane (its own queue waits).
            heads = [
                (t.seq, b, t)
                for b in self._lanes.values()
                if b.held is None and (t := b.queue.peek()) is not None
            ]
            if not heads:
                return started
            _, book, task = min(heads, key=lambda h: h[0])
            if len(book.running) >= book.slots:
                return started
            book.queue.pop()
            self._start(book, task, now)
            started.append(task)

    @staticmethod
    def _start(book: _LaneBook, task: Task, now: float) -> None:
        task.state = TaskState.RUNNING
        task.started_at = now
        book.running[task.id] = task
        book.last_client = task.spec.client
        book.waits.append(now - task.submitted_at)

    # ----- progress and outcomes -----------------------------------------------------------

    def progress(self, task_id: str, done: int, total: int | None = None) -> None:
        task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.RUNNING:
            return
        task.progress_done = done
        task.progress_at = self._clock()
        if total is not None:
            task.progress_total = total

    def model_ready(self, task_id: str) -> None:
        """A running task's model has arrived (its worker held it for a switch or a load):
        its own run begins now, for its ETA and the lane's run estimate."""
        task = self._tasks.get(task_id)
        if task is not None and task.state is TaskState.RUNNING:
            task.run_since = self._clock()

    def finish(
        self,
        task_id: str,
        state: TaskState,
        *,
        code: str | None = None,
        message: str | None = None,
        result: Any = None,
    ) -> Task | None:
        """Record a running task's outcome; ignored for tasks already finished."""
        task = self._tasks.get(task_id)
        if task is None or task.state.finished:
            return None
        if not state.finished:
            raise ValueError(f"finish() needs a final state, got {state.value}")
        book = self._book(task.lane)
        if task.state is TaskState.QUEUED:
            task.state = state
            book.queue.discard(task)
        reason = self._cancel_reason.pop(task_id, None)
        if state is TaskState.CANCELLED and reason == "deadline":
            state, code = TaskState.FAILED, "deadline_exceeded"
            message = "the task's deadline passed while it was running"
        book.running.pop(task_id, None)
        self._close(book, task, state, code, message)
        task.result = result
        if state is TaskState.SUCCEEDED and task.run_time is not None:
            self.learned_run_times(task.lane, ((task.run_time, task.spec.work),))
        total = task.progress_total
        if (
            state is TaskState.SUCCEEDED
            and total
            and task.progress_done >= total
            and task.progress_at is not None
        ):
            tail, size = self._clock() - task.progress_at, task.spec.work / total
            if book.tails is None:
                book.tails = RunFit(tail, size)  # the prior at the size it was seen at
            else:
                book.tails.add(tail, size)
        return task

    # ----- cancellation and deadlines ------------------------------------------------------

    def cancel(self, task_id: str) -> CancelOutcome:
        task = self._tasks.get(task_id)
        if task is None:
            return CancelOutcome.UNKNOWN
        if task.state.finished:
            return CancelOutcome.FINISHED
        if task.state is TaskState.QUEUED:
            book = self._book(task.lane)
            self._close(book, task, TaskState.CANCELLED, "cancelled", "cancelled by the client")
            book.queue.discard(task)
            return CancelOutcome.CANCELLED
        task.cancel_requested = True
        self._cancel_reason.setdefault(task_id, "client")
        return CancelOutcome.REQUESTED

    def forget(self, task_ids: Iterable[str]) -> None:
        """Finished tasks whose records and results are gone (retention): a lookup must not
        show them succeeded with a result that no longer exists. One still awaited by its
        client (unreported) stays until it is reported."""
        for task_id in task_ids:
            task = self._tasks.get(task_id)
            if task is not None and task.state.finished and not self._unreported(task_id):
                del self._tasks[task_id]

    def withdraw(self, task_id: str) -> None:
        """Take back a task just submitted that could not be accepted after all (its record
        could not be written): gone without a trace, never counted as cancelled, since its
        client never had its id."""
        task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.QUEUED:
            return
        del self._tasks[task_id]
        task.state = TaskState.CANCELLED  # dropped from the heap lazily, as a cancel is
        self._book(task.lane).queue.discard(task)

    def expire(self) -> list[Task]:
        """Fail queued tasks past their deadline; return running ones the runtime must stop."""
        now = self._clock()
        to_interrupt: list[Task] = []
        for book in self._lanes.values():
            for task in book.queue.ordered():
                if task.spec.deadline is not None and task.spec.deadline <= now:
                    self._close(
                        book,
                        task,
                        TaskState.FAILED,
                        "deadline_exceeded",
                        "the task's deadline passed before a worker was free",
                    )
                    book.queue.discard(task)
            for task in book.running.values():
                if task.spec.deadline is not None and task.spec.deadline <= now and not task.cancel_requested:
                    task.cancel_requested = True
                    self._cancel_reason[task.id] = "deadline"
                    to_interrupt.append(task)
        return to_interrupt

    # ----- queries -------------------------------------------------------------------------

    def forget_request(self, task_id: str) -> None:
        """Drop a finished task's request, keeping the model it ran (its payload's first item,
        what views read): the last keep_finished tasks of a lane are kept for lookups, and each
        held its whole request, a 128 KB prompt too (up to ~220 MB for an LLM lane), never read
        again once the task's end was recorded."""
        task = self._tasks.get(task_id)
        if task is not None and task.state.finished and isinstance(task.spec.payload, tuple):
            task.spec = replace(task.spec, payload=task.spec.payload[:1])

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def tasks(self, lane: str | None = None) -> list[Task]:
        return [t for t in self._tasks.values() if lane is None or t.lane == lane]

    def position(self, task_id: str) -> int | None:
        """0-based place in its lane's queue (0 runs next); None unless queued."""
        task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.QUEUED:
            return None
        book = self._book(task.lane)
        placing = self._placing(book)
        return book.queue.place(task_id) if placing is None else placing[0].get(task_id)

    def eta(self, task_id: str, wait: ModelWait | None = None) -> float | None:
        """Estimated seconds until the task finishes, from the lane's mean run time, plus its
        model's load time while that is still ahead of it (no progress yet). A running task
        that waits for its model (`wait`): the end of the tasks it is held behind, then the
        load, then its own run; once loading, what is left of the load, then its run; once
        its model has arrived (model_ready), its run counted from then."""
        task = self._tasks.get(task_id)
        if task is None or task.state.finished:
            return None
        book = self._book(task.lane)
        est = book.runs.estimate(task.spec.work)  # its own run, at its size
        if task.state is TaskState.RUNNING and wait is not None:
            holding = [t for t in wait.behind if t != task_id]
            if holding:
                return max((self.eta(t) or 0.0 for t in holding), default=0.0) + wait.load_s + est
            if wait.loading_since is None:  # held, with nothing left to drain: about to load
                return wait.load_s + est
            return max(0.0, wait.load_s - (self._clock() - wait.loading_since)) + est
        if task.state is TaskState.RUNNING:
            start = task.own_run_start
            since = self._clock() if start is None else start
            if task.progress_total and task.progress_done:
                return self._steps_left_s(book, task, since)
            # Its model's load is ahead of it until it reports progress or the model arrives.
            load = task.spec.load_s if not task.progress_done and task.run_since is None else 0.0
            return max(0.0, est + load - (self._clock() - since))
        # Queued: the work ahead of it (what its running tasks have left, by their progress,
        # then a mean run for each task queued before it) shared by the lane's slots. A long
        # image running for minutes is minutes ahead, not one mean run.
        left = sum(self.eta(t) or 0.0 for t in book.running)
        fixed, per_unit = book.runs.line()
        place = self.position(task_id) or 0
        placing = self._placing(book)
        before = book.queue.work_before(task_id) if placing is None else placing[1].get(task_id, 0.0)
        ahead = left + place * fixed + per_unit * before
        return ahead / max(1, book.slots) + est + task.spec.load_s

    def _steps_left_s(self, book: _LaneBook, task: Task, since: float) -> float:
        """A running task that counts steps: the steps left at its pace so far, then what the
        lane's tasks take after their last step (an image's decode and file: learned; a step's
        time before any has ended), less the time since its last step. It counts down between
        steps: it rose with every second no step came (elapsed / done * left), and past the
        last step it was one step's time, while a large image's decode took twice that."""
        now = self._clock()
        total, done = task.progress_total or 0, task.progress_done
        last = task.progress_at if task.progress_at is not None else now
        per_step = max(0.0, last - since) / done
        if book.tails is None:  # the steps left, and past the last one a step's time
            ahead = per_step * max(total - done, 1)
        else:
            ahead = per_step * max(total - done, 0) + book.tails.estimate(task.spec.work / total)
        left = ahead - (now - last)
        # Overdue: a little left, never 0 while it runs nor growing again.
        return max(left, 0.05 * (per_step * done + ahead), 0.1)

    def fraction_done(self, task_id: str) -> float | None:
        """How much of a running task that counts steps is done, 0-0.99, by time: its run so
        far against that plus its ETA, so a large image's decode moves the bar (by steps it sat
        at 99% for half of the image's time); never below what was shown before. None: not a
        running task with steps."""
        task = self._tasks.get(task_id)
        if task is None or task.state is not TaskState.RUNNING or not task.progress_total:
            return None
        start = task.own_run_start
        left = self.eta(task_id)
        if start is None or left is None or not task.progress_done:
            return task.fraction_shown
        ran = self._clock() - start
        task.fraction_shown = max(task.fraction_shown, min(0.99, ran / (ran + left) if ran + left else 0.0))
        return task.fraction_shown

    def count_ended(self, lane: str, state: TaskState) -> None:
        """A task this scheduler never held that ended all the same: one accepted before the
        server's start and failed or cancelled then (its lane's stats counted it nowhere while
        /metrics did)."""
        if lane in self._lanes:
            self._book(lane).counts[state] += 1

    def stats(self, lane: str) -> LaneStats:
        book = self._book(lane)
        return LaneStats(
            lane=lane,
            queued=len(book.queue),
            running=len(book.running),
            slots=book.slots,
            succeeded=book.counts[TaskState.SUCCEEDED],
            failed=book.counts[TaskState.FAILED],
            cancelled=book.counts[TaskState.CANCELLED],
            latency_p50=percentile(book.latencies, 50),
            latency_p95=percentile(book.latencies, 95),
            latency_p99=percentile(book.latencies, 99),
            queue_wait_p50=percentile(book.waits, 50),
            run_time_mean=book.runs.mean_s,
            rejected=book.rejected,
            held=book.held,
        )

    @property
    def lanes(self) -> list[str]:
        return list(self._lanes)

    # ----- internals -----------------------------------------------------------------------

    def _book(self, lane: str) -> _LaneBook:
        try:
            return self._lanes[lane]
        except KeyError:
            raise KeyError(f"lane {lane!r} is not configured") from None

    def _close(
        self, book: _LaneBook, task: Task, state: TaskState, code: str | None, message: str | None
    ) -> None:
        now = self._clock()
        task.state = state
        task.finished_at = now
        task.error_code = code if state is not TaskState.SUCCEEDED else None
        task.error_message = message if state is not TaskState.SUCCEEDED else None
        book.counts[state] += 1
        if state is TaskState.SUCCEEDED:
            book.latencies.append(now - task.submitted_at)
        book.finished.append(task.id)
        # The oldest go first, but never one not yet reported: a pass that ends more tasks than
        # keep_finished (a deadline over a long queue) would drop some before the caller reads
        # them (a client never answered). Those stay, over the bound, until a later close.
        while len(book.finished) > book.policy.keep_finished and not self._unreported(book.finished[0]):
            self._tasks.pop(book.finished.popleft(), None)
