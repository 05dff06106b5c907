"""Work-conserving isolation: which idle real-time lanes' cores a lane may borrow now.

A real-time lane owns its cores (the LLM core 0, TTS core 1); while the owner has no work
those cores sit idle. A borrowing lane (the LLM) asks `Borrower.cores()` before each step of
its work and runs on its own cores plus every lender's cores whose owner has been idle for
`idle_grace_s` (from when it became idle, as the board keeps it); the moment an owner
publishes any activity on the board (the TTS worker marks itself busy as a task arrives,
before synthesis), its cores are out of the answer, and the borrower narrows before its next
step. The grace keeps a burst of sentences (the speaking
pipeline sends them one after the other) from widening and narrowing the LLM between each.

Pure policy: the board reader and the clock are injected. Applying the answer (affinity of
every thread, the library's thread count) is the worker's business (ris.runtime.lending).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ris.preemption.policy import Activity

# An owner idle this long lends its cores. Each hand-over costs both lanes: the step under way
# when speech arrives still runs a thread on the owner's core, and the borrower's next steps
# run narrower while its thread choice measures anew. Under `ris bench`'s mixed load (a
# sentence a second, bursts of three), with the image lane's share on, 0.25 s gave the LLM a
# gap p99 of 146 ms and TTS a latency p50 of 1.21 s; 2 s gave 123 ms and 0.93 s (without
# lending: 108 ms and 0.80 s; docs/PERFORMANCE_OPTIMIZATION.md, within that run-to-run noise).
# 2 s also outlasts the gap between two sentences of a spoken answer, and is nothing against a
# quiet minute.
DEFAULT_IDLE_GRACE_S = 2.0


@dataclass(frozen=True)
class Lender:
    """A real-time lane whose cores may be borrowed while it is idle."""

    lane: str
    cores: tuple[int, ...]


@dataclass(frozen=True)
class LendingPolicy:
    own: tuple[int, ...]  # the borrower's own cores: always its
    lenders: tuple[Lender, ...]
    idle_grace_s: float = DEFAULT_IDLE_GRACE_S


class Borrower:
    """Answers which cores the borrowing lane may run on now."""

    def __init__(
        self,
        policy: LendingPolicy,
        read_states: Callable[[], Sequence[int]],
        clock: Callable[[], float],
        read_idle_since: Callable[[], Sequence[float]] | None = None,
    ) -> None:
        """`read_states()` returns the lenders' board states, in `policy.lenders` order;
        `read_idle_since()` when each became idle, on `clock` (the board keeps it: the grace
        counts from then, also across a time the borrower did not look)."""
        self.policy = policy
        self._read = read_states
        self._since = read_idle_since
        self._clock = clock
        # When each lender was last busy; -inf: never, so an idle owner lends at once.
        self._busy_at = [float("-inf")] * len(policy.lenders)

    def cores(self) -> tuple[int, ...]:
        """Own cores plus the cores of every lender idle for the grace period, sorted."""
        now = self._clock()
        cores = set(self.policy.own)
        states = self._read()
        since = self._since() if self._since is not None else [float("-inf")] * len(states)
        for i, (lender, state) in enumerate(zip(self.policy.lenders, states, strict=True)):
            if state != Activity.IDLE:
                self._busy_at[i] = now
                continue
            self._busy_at[i] = max(self._busy_at[i], since[i])
            if now - self._busy_at[i] >= self.policy.idle_grace_s:
                cores.update(lender.cores)
        return tuple(sorted(cores))

    def borrowed(self, cores: Sequence[int]) -> tuple[int, ...]:
        """Which of `cores` are not the borrower's own."""
        return tuple(c for c in cores if c not in self.policy.own)
