"""The shared-memory board where real-time workers publish their activity for the image worker.

One byte per lane, written directly by the owning worker and read by the image worker at its
preemption points: no message passes through the server, so a prefill is seen within a poll.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from typing import Any

from ris.scheduler import Lane
from ris.scheduler.preemption import Activity

_ORDER = list(Lane)


class ActivityBoard:
    def __init__(self, ctx: Any = None) -> None:
        ctx = ctx or mp.get_context("spawn")
        # RawArray: no lock; each slot has one writer and single-byte writes are atomic.
        self._arr = ctx.RawArray("b", len(_ORDER))

    def set(self, lane: Lane, activity: Activity) -> None:
        self._arr[_ORDER.index(lane)] = int(activity)

    def get(self, lane: Lane) -> Activity:
        return Activity(self._arr[_ORDER.index(lane)])

    def reader(self, lanes: Sequence[Lane]) -> Any:
        """A fast callable returning the states of `lanes` (for Yielder)."""
        arr = self._arr
        idx = [_ORDER.index(lane) for lane in lanes]
        return lambda: [arr[i] for i in idx]
