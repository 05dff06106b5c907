"""The shared-memory board where real-time workers publish their activity for batch workers.

One byte per lane, written directly by the owning worker and read by the image worker at its
preemption points: no message passes through the server, so a prefill is seen within a poll.
The board lives in one machine's memory: lanes that yield to each other share a machine. Local
workers inherit it from the server (a RawArray); Ray actors on one node attach to a named
shared-memory block instead (`attach`), which is why cluster mode places such lanes together.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

from ris.preemption.policy import Activity


class ActivityBoard:
    def __init__(self, lanes: Sequence[str], ctx: Any = None, *, array: Any = None) -> None:
        self.lanes = tuple(lanes)
        if array is None:
            ctx = ctx or mp.get_context("spawn")
            # RawArray: no lock; each slot has one writer and single-byte writes are atomic.
            array = ctx.RawArray("b", max(1, len(self.lanes)))
        self._arr = array

    @classmethod
    def attach(cls, lanes: Sequence[str], name: str, *, create: bool = True) -> ActivityBoard:
        """The board named `name` in this machine's shared memory, created by whichever of its
        processes comes first. It outlives them all (a restarted worker finds its partners'
        slots where they left them); a few bytes per server in /dev/shm. With `create` False
        a board that does not exist (any more) raises FileNotFoundError."""
        from multiprocessing import resource_tracker, shared_memory

        size = max(1, len(lanes))
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
        board = cls(lanes, array=buf[:size].cast("b"))
        board._shm = shm  # type: ignore[attr-defined]  # the mapping lives as long as the board
        return board

    def _slot(self, lane: str) -> int:
        try:
            return self.lanes.index(lane)
        except ValueError:
            raise KeyError(f"lane {lane!r} has no slot on the activity board") from None

    def set(self, lane: str, activity: Activity) -> None:
        self._arr[self._slot(lane)] = int(activity)

    def get(self, lane: str) -> Activity:
        return Activity(self._arr[self._slot(lane)])

    def writer(self, lane: str) -> Callable[[Activity], None]:
        """A callable that publishes `lane`'s activity (for that lane's worker)."""
        arr, i = self._arr, self._slot(lane)

        def publish(activity: Activity) -> None:
            arr[i] = int(activity)

        return publish

    def reader(self, lanes: Sequence[str]) -> Callable[[], list[int]]:
        """A fast callable returning the states of `lanes` (for Yielder)."""
        arr = self._arr
        idx = [self._slot(lane) for lane in lanes]
        return lambda: [arr[i] for i in idx]
