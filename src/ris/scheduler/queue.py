"""A bounded priority queue with aging, for one lane.

Aging is built into a static sort key, so the heap never needs re-sorting:

    key = submitted_at - aging_s * priority - class_boost_s * (priority class is REALTIME)

A task is overtaken only by tasks that earned more boost than the time it has already waited,
so a task of priority p waits behind later arrivals for at most (p_max - p) * aging_s seconds:
nothing starves, and the bound is a number the config states.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from ris.scheduler.tasks import PriorityClass, Task, TaskState


class LaneQueue:
    """Queued tasks of one lane, highest effective priority first, at most `capacity` of them."""

    def __init__(self, capacity: int, aging_s: float, class_boost_s: float) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.aging_s = aging_s
        self.class_boost_s = class_boost_s
        self._heap: list[tuple[float, int, Task]] = []
        # Entries are removed lazily (cancel, deadline): `_live` counts those still queued,
        # `_clients` how many of them each client has.
        self._live = 0
        self._clients: dict[str | None, int] = {}
        # ordered()'s places by task id, kept until the queue changes: a listing of n queued
        # tasks asks each one's place (and its ETA asks again), n sorts of n without it.
        self._places: dict[str, int] | None = None
        self._ahead: dict[str, float] | None = None  # with _places: the work queued before each
        self.version = 0  # changes whenever a task joins or leaves: a key for what is cached on it

    def key_for(self, submitted_at: float, priority: int, pclass: PriorityClass) -> float:
        boost = self.aging_s * priority
        if pclass is PriorityClass.REALTIME:
            boost += self.class_boost_s
        return submitted_at - boost

    def __len__(self) -> int:
        return self._live

    @property
    def full(self) -> bool:
        return self._live >= self.capacity

    def push(self, task: Task, force: bool = False) -> None:
        """Queue a task; `force` admits it over the bound (tasks accepted before a restart)."""
        if self.full and not force:
            raise OverflowError("lane queue is full")
        heapq.heappush(self._heap, (task.sort_key, task.seq, task))
        self._places = None
        self.version += 1
        self._live += 1
        client = task.spec.client
        self._clients[client] = self._clients.get(client, 0) + 1

    def discard(self, task: Task) -> None:
        """Forget a task that left the QUEUED state without being popped (cancel, deadline)."""
        self._gone(task)
        self._drop_dead_head()

    def clients(self) -> set[str | None]:
        """The clients with tasks in the queue (None: tasks of no client)."""
        return set(self._clients)

    def queued_of(self, client: str | None) -> int:
        """How many of the queued tasks are `client`'s."""
        return self._clients.get(client, 0)

    def client_count(self) -> int:
        """How many clients have tasks in the queue."""
        return len(self._clients)

    def pop(self) -> Task | None:
        self._drop_dead_head()
        if not self._heap:
            return None
        _, _, task = heapq.heappop(self._heap)
        self._gone(task)
        self._drop_dead_head()
        return task

    def take(self, task: Task) -> None:
        """Take a queued task out of the order (it is about to run); the rest keep theirs."""
        task.state = TaskState.RUNNING  # dropped lazily from the heap, as a cancel is
        self.discard(task)

    def peek(self) -> Task | None:
        self._drop_dead_head()
        return self._heap[0][2] if self._heap else None

    def place(self, task_id: str) -> int | None:
        """A queued task's 0-based place in ordered() (None: not queued here)."""
        self._index()
        assert self._places is not None
        return self._places.get(task_id)

    def work_before(self, task_id: str) -> float:
        """The work (TaskSpec.work) of the tasks queued ahead of a queued one (0: none, or not
        queued here); kept with the places, so a listing of n tasks sorts the queue once."""
        self._index()
        assert self._ahead is not None
        return self._ahead.get(task_id, 0.0)

    def _index(self) -> None:
        if self._places is None or self._ahead is None:
            ordered = self.ordered()
            self._places = {t.id: i for i, t in enumerate(ordered)}
            self._ahead, total = {}, 0.0
            for t in ordered:
                self._ahead[t.id] = total
                total += t.spec.work

    def ordered(self) -> list[Task]:
        """Live tasks in the order they would run (O(n log n); for listings and positions)."""
        return [t for _, _, t in sorted(self._heap) if t.state is TaskState.QUEUED]

    def first(self, wanted: Callable[[Task], bool]) -> Task | None:
        """The live task that would run first among those `wanted` says yes to: ordered()'s
        first match, in one pass over the heap without sorting it (O(n))."""
        best: tuple[float, int, Task] | None = None
        for entry in self._heap:
            task = entry[2]
            if task.state is TaskState.QUEUED and wanted(task) and (best is None or entry < best):
                best = entry
        return None if best is None else best[2]

    def _gone(self, task: Task) -> None:
        self._places = None
        self.version += 1
        self._live -= 1
        client = task.spec.client
        left = self._clients[client] - 1
        if left:
            self._clients[client] = left
        else:
            del self._clients[client]

    def _drop_dead_head(self) -> None:
        while self._heap and self._heap[0][2].state is not TaskState.QUEUED:
            heapq.heappop(self._heap)
