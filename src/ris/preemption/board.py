"""The shared-memory board where real-time workers publish their activity for batch workers.

One byte per lane, written directly by the owning worker and read by the image worker at its
preemption points: no message passes through the server, so a prefill is seen within a poll.
The board lives in one machine's memory: lanes that yield to each other share a machine.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

from ris.preemption.policy import Activity


class ActivityBoard:
    def __init__(self, lanes: Sequence[str], ctx: Any = None) -> None:
        ctx = ctx or mp.get_context("spawn")
        self.lanes = tuple(lanes)
        # RawArray: no lock; each slot has one writer and single-byte writes are atomic.
        self._arr = ctx.RawArray("b", max(1, len(self.lanes)))

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
