"""How a batch lane (images) yields to real-time lanes that share its GPU (or its CPU cores).

Real-time workers publish what they are doing (idle, prefill, decode, busy) on a shared-memory
board (board.py); the image worker calls `Yielder.checkpoint` at its preemption points (between
denoising steps, and before each UNet block under the `block` policy) and waits there while a
lane it shares hardware with is in a phase the policy protects. A starvation guard keeps a
minimum share of wall time for images even under constant real-time load.

Pure policy: the board reader, clock and sleep are injected.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal


class Activity(enum.IntEnum):
    """What a real-time lane's worker is doing, as published on the board."""

    IDLE = 0
    PREFILL = 1  # LLM processing the prompt: compute-bound, hurt most by sharing
    DECODE = 2  # LLM producing tokens: launch-bound on a GPU, hurt much less
    BUSY = 3  # a lane without phases (TTS) doing work


PolicyMode = Literal["none", "step", "block"]
PolicyScope = Literal["prefill", "request"]


def _never() -> bool:
    return False


class PreemptedCancel(Exception):
    """Raised at a preemption point when the task was cancelled while it waited."""


@dataclass(frozen=True)
class PreemptionPolicy:
    mode: PolicyMode = "block"
    # "prefill": pause only while a sharing LLM is in prefill (and TTS busy);
    # "request": pause for the LLM's whole request.
    scope: PolicyScope = "prefill"
    # Fraction of wall time the image lane keeps under constant contention (0 disables the guard).
    min_share: float = 0.1
    # Memory of the guard's accounting: older time counts less (exponential decay).
    window_s: float = 10.0
    # How often a paused worker looks at the board again.
    poll_s: float = 0.0005

    def protects(self, state: int) -> bool:
        if state in (Activity.PREFILL, Activity.BUSY):
            return True
        return state == Activity.DECODE and self.scope == "request"


@dataclass
class YieldStats:
    pauses: int = 0
    paused_s: float = 0.0
    # Times the guard refused a pause so the image lane would not starve.
    guard_overrides: int = 0


def _nothing() -> None:
    pass


class Yielder:
    """Called at preemption points; returns when the image worker may continue."""

    def __init__(
        self,
        policy: PreemptionPolicy,
        read_states: Callable[[], Sequence[int]],
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.policy = policy
        self._read = read_states
        self._clock = clock
        self._sleep = sleep
        self.stats = YieldStats()
        self._ran = 0.0  # decayed seconds of running
        self._paused = 0.0  # decayed seconds of pausing
        self._mark = clock()
        # Told at each look while paused: waiting for another lane is work going as planned,
        # not a hang (the supervisor replaced a worker paused past busy_timeout_s).
        self.waiting: Callable[[], None] = _nothing

    def begin(self) -> None:
        """A task starts: the time since the last checkpoint was no running (the worker idled
        or loaded a model). Counted as running, it let the guard hold a new task's first ~23 s
        under steady contention (600 s idle before), where min_share promises its share. The
        history decays over that time as over any other, and the gap is counted as neither."""
        now = self._clock()
        gap = now - self._mark
        if gap > 0:
            decay = math.exp(-gap / self.policy.window_s)
            self._ran *= decay
            self._paused *= decay
        self._mark = now

    def active(self, kind: Literal["step", "block"]) -> bool:
        mode = self.policy.mode
        return mode == "block" or (mode == "step" and kind == "step")

    def contended(self) -> bool:
        return any(self.policy.protects(s) for s in self._read())

    def checkpoint(
        self, kind: Literal["step", "block"] = "step", cancelled: Callable[[], bool] = _never
    ) -> None:
        """Return when the caller may go on; raise PreemptedCancel once `cancelled()` (the
        running task's flag, passed by whoever runs it) says the task should stop."""
        if cancelled():
            raise PreemptedCancel
        if not self.active(kind):
            return
        if not self.contended():  # the cheap, common path: one shared-memory read
            return
        now = self._clock()
        self._account(now - self._mark, paused=False)
        self._mark = now
        paused_here = False
        while self.contended():
            if not self._may_pause():
                self.stats.guard_overrides += 1
                break
            if not paused_here:
                self.stats.pauses += 1
                paused_here = True
            self._sleep(self.policy.poll_s)
            self.waiting()
            now = self._clock()
            self._account(now - self._mark, paused=True)
            self.stats.paused_s += now - self._mark
            self._mark = now
            if cancelled():
                raise PreemptedCancel

    def _account(self, dt: float, *, paused: bool) -> None:
        if dt <= 0:
            return
        # Exponentially weighted time: a stretch of length dt adds w * (1 - e^(-dt/w)), so
        # neither total can exceed the window however long the stretch was.
        w = self.policy.window_s
        decay = math.exp(-dt / w)
        self._ran *= decay
        self._paused *= decay
        if paused:
            self._paused += w * (1 - decay)
        else:
            self._ran += w * (1 - decay)

    def _may_pause(self) -> bool:
        if self.policy.min_share <= 0:
            return True
        total = self._ran + self._paused
        if total <= 0:
            return True
        return self._paused / total < 1.0 - self.policy.min_share
