"""The shared-memory board where real-time workers publish their activity for batch workers.

One byte per lane, written directly by the owning worker and read by the image worker at its
preemption points: no message passes through the server, so a prefill is seen within a poll.
The board lives in one machine's memory: lanes that yield to each other share a machine. Local
workers inherit it from the server (a RawArray); Ray actors on one node attach to a named
shared-memory block instead (`attach`), which is why cluster mode places such lanes together.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from typing import Any

from ris.preemption.policy import Activity


class ActivityBoard:
    """Beside each lane's activity, when it last became idle (time.monotonic, one clock for every
    process of a machine): a lane lending its idle cores lends them once idle for a grace, counted
    from then, not from whenever the borrower last looked (a borrower idle itself looks at
    nothing, and would take the cores of an owner idle a moment)."""

    def __init__(
        self, lanes: Sequence[str], ctx: Any = None, *, array: Any = None, idle_since: Any = None
    ) -> None:
        self.lanes = tuple(lanes)
        if array is None:
            ctx = ctx or mp.get_context("spawn")
            # RawArray: no lock; each slot has one writer and single-byte writes are atomic.
            array = ctx.RawArray("b", max(1, len(self.lanes)))
            idle_since = ctx.RawArray("d", max(1, len(self.lanes)))  # 0.0: idle since boot
        self._arr = array
        self._since = idle_since  # None: not kept (a board that only shows states)

    @classmethod
    def attach(cls, lanes: Sequence[str], name: str, *, create: bool = True) -> ActivityBoard:
        """The board named `name` in this machine's shared memory, created by whichever of its
        processes comes first. It outlives them all (a restarted worker finds its partners'
        slots where they left them); a few bytes per server in /dev/shm. With `create` False
        a board that does not exist (any more) raises FileNotFoundError."""
        from multiprocessing import resource_tracker, shared_memory

        n = max(1, len(lanes))
        offset = 8 * -(-n // 8)  # the times after the states, 8-byte aligned
        size = offset + 8 * n
        try:
            if not create:
                raise FileExistsError
            shm = shared_memory.SharedMemory(name, create=True, size=size)
        except FileExistsError:
            shm = shared_memory.SharedMemory(name)
        # Python < 3.13 tracks attached blocks too and unlinks them when this process exits,
        # which would split the board between a restarted worker and its partner.
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        buf = shm.buf
        assert buf is not None  # None only after close()
        board = cls(lanes, array=buf[:n].cast("b"), idle_since=buf[offset : offset + 8 * n].cast("d"))
        board._shm = shm  # type: ignore[attr-defined]  # the mapping lives as long as the board
        return board

    def _slot(self, lane: str) -> int:
        try:
            return self.lanes.index(lane)
        except ValueError:
            raise KeyError(f"lane {lane!r} has no slot on the activity board") from None

    def set(self, lane: str, activity: Activity) -> None:
        self.writer(lane)(activity)

    def get(self, lane: str) -> Activity:
        return Activity(self._arr[self._slot(lane)])

    def writer(self, lane: str) -> Callable[[Activity], None]:
        """A callable that publishes `lane`'s activity (for that lane's worker)."""
        arr, since, i = self._arr, self._since, self._slot(lane)
        idle = int(Activity.IDLE)

        def publish(activity: Activity) -> None:
            if since is not None and activity == idle and arr[i] != idle:
                since[i] = time.monotonic()  # written before the state: a reader of IDLE sees it
            arr[i] = int(activity)

        return publish

    def reader(self, lanes: Sequence[str]) -> Callable[[], list[int]]:
        """A fast callable returning the states of `lanes` (for Yielder)."""
        arr = self._arr
        idx = [self._slot(lane) for lane in lanes]
        return lambda: [arr[i] for i in idx]

    def idle_since(self, lanes: Sequence[str]) -> Callable[[], list[float]]:
        """A fast callable returning when each of `lanes` last became idle (-inf where the board
        does not keep it): the lending grace counts from then."""
        since = self._since
        idx = [self._slot(lane) for lane in lanes]
        if since is None:
            return lambda: [float("-inf")] * len(idx)
        return lambda: [since[i] for i in idx]
