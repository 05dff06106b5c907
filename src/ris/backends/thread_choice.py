"""Which thread count a llama.cpp step runs on: the lane's, or one, whichever is faster now.

Two threads decode SmolLM2 faster than one on cores nothing else uses (llama-server: 112-116
tok/s against 93, issue 26), with OpenMP waiters that spin a moment at each of llama.cpp's
barriers. With other work on the same cores the spin turns into a loss: measured on the shared
2-core machine at a load average near 11, two spinning threads decoded 1.4-8 tokens/s where one
decoded 10-20, since a barrier waits for a partner the kernel has descheduled. Which holds
depends on what else runs at the time, so the batch measures it: every so often a couple of
steps run on the other count, timed beside the latest steps of the same size on the current
one, and the faster is kept. The interval doubles while the choice holds (a probe of the slow
count costs little in all), and restarts short after a change.

Pure: fed thread counts, step sizes and durations; `llama_batch.py` applies and times them.
"""

from __future__ import annotations

import statistics
from collections import deque

# Steps on the other count per probe, and the first probe: soon, so that a lane started on a
# busy machine does not decode long on the slow count.
PROBE_STEPS = 2
FIRST_PROBE = 2
MIN_INTERVAL = 64
MAX_INTERVAL = 4096
# Steps of one size remembered per count; the other count must be this much faster to win
# (a preempted step now and then must not flip the choice back and forth).
SAMPLES = 8
SWITCH = 0.9


class ThreadChoice:
    def __init__(self, threads: int) -> None:
        self.threads = threads  # the lane's thread count
        self.current = threads
        self.switches = 0
        self._interval = FIRST_PROBE
        self._since = 0  # steps on `current` since the last probe
        self._probing = 0  # probe steps left to run
        self._times: dict[tuple[int, int], deque[float]] = {}

    def _other(self) -> int:
        return 1 if self.current == self.threads else self.threads

    def next(self) -> int:
        """The thread count for the next step."""
        if self.threads <= 1:
            return 1
        if not self._probing and self._since >= self._interval:
            self._probing = PROBE_STEPS
        return self._other() if self._probing else self.current

    def record(self, threads: int, tokens: int, seconds: float) -> None:
        """A step of `tokens` tokens ran on `threads` threads in `seconds`."""
        if self.threads <= 1:
            return
        self._times.setdefault((threads, tokens), deque(maxlen=SAMPLES)).append(seconds)
        if threads == self.current:
            self._since += 1
            return
        self._probing -= 1
        if self._probing <= 0:
            self._decide(tokens)

    def _decide(self, tokens: int) -> None:
        self._probing = self._since = 0
        mine = self._times.get((self.current, tokens))
        probe = list(self._times.get((self._other(), tokens), ()))[-PROBE_STEPS:]
        if mine and probe and statistics.median(probe) < SWITCH * statistics.median(mine):
            self.current = self._other()
            self.switches += 1
            self._interval = MIN_INTERVAL
        else:
            self._interval = min(max(2 * self._interval, MIN_INTERVAL), MAX_INTERVAL)
