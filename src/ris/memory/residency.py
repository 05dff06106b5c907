"""Which models a lane's worker keeps loaded, pure (clock injected): least-recently-used
eviction under a memory budget, and keep_alive expiry.

The worker asks `plan(name, need)` before a model loads. The answer is one of: `Ready` (loaded
already), `Load(evict=...)` (unload these, least recently used first, then load), `Wait`
(only models with running work stand in the way: a switch never cuts a running batch, so the
request waits for them to drain) or `Refuse` (the model needs more than the whole budget).

A GPU lane's models are counted twice: what each puts on the card against the lane's GPU
budget, and what stays in RAM (the layers llama.cpp leaves on the CPU, the components an
offload plan keeps there) against its RAM budget. A model loads when both fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ris.memory.fit import mib

FOREVER = None  # keep_alive: never expire (Ollama's negative keep_alive)


@dataclass
class _Resident:
    bytes: int
    ram: int  # of a GPU lane's model, what stays in RAM (0 on a CPU lane: `bytes` is RAM)
    last_used: float
    expires_at: float | None  # None: never while idle
    running: int = 0
    # A keep_alive asked for while tasks ran (keep()): applies when they have ended.
    kept: tuple[float | None] | None = None


@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class Load:
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wait:
    blocked_by: tuple[str, ...]


@dataclass(frozen=True)
class Refuse:
    message: str


Decision = Ready | Load | Wait | Refuse


def expiry(now: float, ttl: float | None) -> float | None:
    """When a model idle from `now` is unloaded by a keep_alive of `ttl` seconds (None or
    negative: never)."""
    return None if ttl is None or ttl < 0 else now + ttl


class Residency:
    """The loaded models of one worker and the rules that load and unload them."""

    def __init__(
        self,
        budget: int | None,
        keep_alive_s: float | None,
        clock: Callable[[], float],
        ram_budget: int | None = None,
    ) -> None:
        self.budget = budget  # None: no bound (every model stays until its keep_alive ends)
        # A GPU lane's RAM budget, for what its models keep in RAM (None: no bound, or a CPU
        # lane, whose `budget` is its RAM).
        self.ram_budget = ram_budget
        self.keep_alive_s = keep_alive_s  # the lane's default; None: forever
        self._clock = clock
        self._models: dict[str, _Resident] = {}

    @property
    def resident(self) -> dict[str, int]:
        return {name: r.bytes for name, r in self._models.items()}

    def used(self) -> int:
        return sum(r.bytes for r in self._models.values())

    def plan(self, name: str, need: int, ram_need: int = 0) -> Decision:
        """`need`: what the model takes of `budget`; `ram_need`: what a GPU lane's model keeps
        in RAM, of `ram_budget`."""
        if name in self._models:
            return Ready()
        # A GPU lane's first budget is its card's (its RAM is the second).
        first = "memory" if self.ram_budget is None else "GPU"
        limits = [(need, self.budget, first), (ram_need, self.ram_budget, "RAM")]
        for asked, budget, what in limits:
            if budget is not None and asked > budget:
                kept = " (the part of it that stays in RAM beside the GPU)" if what == "RAM" else ""
                return Refuse(
                    f"model {name!r} needs {mib(asked)}{kept} but the lane's {what} budget is "
                    f"{mib(budget)}; it can never be loaded here"
                )
        free = self._free(self.budget, self.used())
        free_ram = self._free(self.ram_budget, sum(r.ram for r in self._models.values()))
        if need <= free and ram_need <= free_ram:
            return Load()
        idle = sorted((r.last_used, n) for n, r in self._models.items() if r.running == 0)
        evict: list[str] = []
        for _, other in idle:
            evict.append(other)
            free += self._models[other].bytes
            free_ram += self._models[other].ram
            if need <= free and ram_need <= free_ram:
                return Load(tuple(evict))
        return Wait(tuple(n for n, r in self._models.items() if r.running))

    @staticmethod
    def _free(budget: int | None, used: int) -> float:
        return float("inf") if budget is None else budget - used

    def loaded(self, name: str, nbytes: int, ram_bytes: int = 0) -> None:
        now = self._clock()
        self._models[name] = _Resident(nbytes, ram_bytes, now, expiry(now, self.keep_alive_s))

    def unloaded(self, name: str) -> None:
        self._models.pop(name, None)

    def started(self, name: str, keep_alive_s: float | None | Literal["lane", "unsaid"] = "unsaid") -> None:
        """A task on `name` started; `keep_alive_s` is its request's ("lane": the lane's;
        "unsaid": the one its end will give applies, unless one is asked meanwhile)."""
        r = self._models[name]
        r.running += 1
        r.last_used = self._clock()
        r.expires_at = None  # never expires while it runs
        # The latest request's keep_alive is the one the model keeps once idle, whichever of
        # them ends last, as Ollama's (a request sets its model's keep_alive when it is
        # scheduled): the last to end decided, and a short request ending after a "-1" one
        # that came later unloaded the model.
        r.kept = (
            None
            if keep_alive_s == "unsaid"
            else (self.keep_alive_s if keep_alive_s == "lane" else keep_alive_s,)
        )

    def finished(self, name: str, keep_alive_s: float | None | Literal["lane"] = "lane") -> None:
        """A task on `name` ended; `keep_alive_s` is the request's own ("lane": the lane's),
        which applies once idle unless a later request's (started, keep) was asked since."""
        r = self._models.get(name)
        if r is None:
            return
        r.running = max(r.running - 1, 0)
        now = self._clock()
        r.last_used = now
        if r.running == 0:
            ttl = self.keep_alive_s if keep_alive_s == "lane" else keep_alive_s
            if r.kept is not None:
                (ttl,), r.kept = r.kept, None
            r.expires_at = expiry(now, ttl)

    def keep(self, name: str, keep_alive_s: float | None | Literal["lane"]) -> None:
        """A keep_alive for a loaded model asked for by itself (Ollama's request with nothing to
        generate; 0: unload it): from now if it is idle, else once its running tasks end."""
        r = self._models.get(name)
        if r is None:
            return
        ttl = self.keep_alive_s if keep_alive_s == "lane" else keep_alive_s
        if r.running:
            r.kept = (ttl,)
        else:
            r.expires_at = expiry(self._clock(), ttl)

    def expires_at(self, name: str) -> float | None:
        """When `name` expires if it stays idle (None: never, running, or not loaded)."""
        r = self._models.get(name)
        return None if r is None or r.running else r.expires_at

    def running(self, name: str) -> int:
        r = self._models.get(name)
        return r.running if r else 0

    def expired(self) -> list[str]:
        """Idle models past their keep_alive, oldest first."""
        now = self._clock()
        due = [
            (r.last_used, n)
            for n, r in self._models.items()
            if r.running == 0 and r.expires_at is not None and r.expires_at <= now
        ]
        return [n for _, n in sorted(due)]

    def next_expiry(self) -> float | None:
        times = [r.expires_at for r in self._models.values() if r.running == 0 and r.expires_at is not None]
        return min(times) if times else None


__all__ = ["FOREVER", "Decision", "Load", "Ready", "Refuse", "Residency", "Wait", "expiry"]
