"""The models a worker holds, worker side: loaded on first use (or at start when preloaded),
unloaded least-recently-used when the next one needs their memory, and when idle past their
keep_alive. The rules are ris.memory.residency's (pure); this file applies them to backends and
tells the server what it did (ModelLoaded, ModelUnloaded).

Only the worker's main thread calls it: models are not re-entrant, and neither is this.
"""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ris import messages as m
from ris.config import LaneConfig
from ris.config.fit_checks import WORKER_BASE_BYTES, ram_budget
from ris.memory.fit import gpu_bytes_needed, ram_bytes_beside
from ris.memory.footprint import model_footprint
from ris.memory.residency import Load, Ready, Refuse, Residency, Wait
from ris.runtime.gpu_memory import gpu_out_of_memory, held_on_gpu, return_gpu_memory

# The longest single wait of an idle worker for a keep_alive's end; it looks again after.
MAX_IDLE_WAIT_S = 3600.0


@dataclass(frozen=True)
class Hold:
    """The model cannot load until the running work on `blocked_by` drains."""

    blocked_by: tuple[str, ...]


class ModelCache:
    def __init__(
        self,
        cfg: LaneConfig,
        device: str,
        ceiling_bytes: int | None,
        construct: Callable[[str], Any],
        send: Callable[[object], None],
        gpu_budget_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        check: Callable[[str], None] = lambda name: None,
        base_bytes: int = WORKER_BASE_BYTES,
    ) -> None:
        """`construct(name)`: the backend of model `name`, loaded; `check(name)`: raises what
        can be known wrong of it without loading (Backend.check), before others are evicted."""
        self._cfg = cfg
        self._device = device
        self._construct = construct
        self._check = check
        self._send = send
        self.models: dict[str, Any] = {}
        # Told of each backend as it is unloaded, before it closes: whoever kept something of
        # it (the LLM runner its batch) lets go, so the backend goes with its last reference.
        self.unloading: list[Callable[[Any], None]] = []
        # A GPU lane's models are counted against its GPU budget for what they put on the card,
        # and against its RAM budget for what stays in RAM (layers left on the CPU, an offload
        # plan's components); the RAM a load takes for a moment is the worker's ceiling's.
        self._gpu_budget = gpu_budget_bytes if device.startswith("cuda") else None
        ram = ram_budget(cfg, ceiling_bytes, base_bytes)  # what the worker holds before any model
        if self._gpu_budget is not None:
            self.residency = Residency(self._gpu_budget, cfg.keep_alive_s, clock, ram_budget=ram)
        else:
            self.residency = Residency(ram, cfg.keep_alive_s, clock)
        self._footprints: dict[str, int | None] = {}
        self._unreadable: set[str] = set()  # headers that failed to read (said once)
        self._in_ram: dict[str, int] = {}  # a GPU lane's models: the part that stays in RAM
        self._load_s: dict[str, float] = {}
        self._reported_expiry: dict[str, float | None] = {}  # as last sent (ModelExpiry)
        self._expiry_changed: set[str] = set()  # to tell at the next expire()
        self.clock = clock

    def footprint(self, name: str) -> int | None:
        """What `name` takes of the budget, from its files; None while no file says (kept only
        once known: a model whose file was missing when first asked for counted 0 for the
        worker's life after the file came, and loaded beside others past the budget)."""
        if name not in self._footprints:
            try:
                fp = model_footprint(self._cfg.models[name], self._cfg.parallel, self._device)
            except Exception:  # noqa: BLE001 - an unreadable header: the load itself will say why
                if name not in self._unreadable:
                    traceback.print_exc()
                    self._unreadable.add(name)
                fp = None
            if fp is None:
                return None
            if self._gpu_budget is None:
                self._footprints[name] = fp.total
            else:  # on the card only what the backend places there (layers, an offload plan)
                layers = self._cfg.models[name].options.get("n_gpu_layers")
                need = gpu_bytes_needed(fp, self._gpu_budget, None if layers is None else int(layers))
                self._footprints[name] = need
                self._in_ram[name] = ram_bytes_beside(fp, need)
        return self._footprints[name]

    def in_ram(self, name: str) -> int:
        """What a GPU lane's model keeps in RAM beside its part on the card (0 on a CPU lane,
        where the footprint is all RAM, or where no file says)."""
        self.footprint(name)
        return self._in_ram.get(name, 0)

    def get(self, name: str, *, announce: bool = True) -> Any | Hold:
        """The backend of `name`, loaded if need be (evicting idle models least recently used
        first), or Hold while only running models stand in the way. Raises BackendError
        `model_too_large` for a model over the whole budget, and whatever the load raises."""
        from ris.lanes.base import BackendError

        need = self.footprint(name) or 0
        in_ram = self.in_ram(name)
        decision = self.residency.plan(name, need, in_ram)
        if isinstance(decision, Ready):
            return self.models[name]
        if isinstance(decision, Refuse):
            raise BackendError("model_too_large", decision.message)
        if isinstance(decision, Wait):
            return Hold(decision.blocked_by)
        assert isinstance(decision, Load)
        self._check(name)  # a load sure to fail evicts nothing (BackendError: the task's)
        for other in decision.evict:
            self.unload(other, "evicted")
        if announce:
            self._send(m.ModelLoading(name))
        started = time.perf_counter()
        try:
            backend = self._construct(name)
        except MemoryError:
            raise  # the worker's ceiling: the worker is replaced
        except Exception as e:  # noqa: BLE001 - a model that cannot load fails its task alone
            if not isinstance(e, BackendError):  # a backend's own refusal says enough
                traceback.print_exc()
            failure = self._failure(e)  # no frame of the half-built model survives the block
        else:
            failure = None
        if failure is not None:
            # Only now, with the exception and its frames gone, are the half-built model's
            # tensors free: collected, and torch's cached blocks handed back to the card.
            gc.collect()
            return_gpu_memory()
            if failure.code == "gpu_out_of_memory":
                failure = BackendError(failure.code, self._load_oom_message(name, need, failure.message))
            raise failure
        load_s = time.perf_counter() - started
        self.models[name] = backend
        self._load_s[name] = load_s
        self.residency.loaded(name, need, in_ram)
        if announce:
            self._send(m.ModelLoaded(self.info(name)))
        self._expiry_changed.add(name)  # a start's: told after WorkerReady
        return backend

    @staticmethod
    def _failure(e: Exception) -> Any:
        """What a failed load raises, holding no traceback: a backend's own BackendError (a bad
        model, a KV cache that does not fit), torch's out-of-memory error as
        `gpu_out_of_memory` (its message is finished once the memory is back), anything else
        as `model_load_failed`."""
        from ris.lanes.base import BackendError

        if isinstance(e, BackendError):
            # Itself (its class kept), without what holds the load's frames.
            e.__traceback__ = e.__context__ = e.__cause__ = None
            return e
        code = "gpu_out_of_memory" if gpu_out_of_memory(e) else "model_load_failed"
        return BackendError(code, f"{type(e).__name__}: {e}")

    def _load_oom_message(self, name: str, need: int, error: str) -> str:
        """Why `name` did not load for want of GPU memory, with the numbers to act on: what
        the model was counted at, the budget, what torch still holds, what stayed loaded."""
        counted = f"counted at {need / 2**20:,.0f} MiB" if need else "its footprint unknown"
        budget = "none" if self._gpu_budget is None else f"{self._gpu_budget / 2**20:,.0f} MiB"
        return (
            f"model {name!r} ran out of GPU memory while loading ({counted}, the lane's GPU budget "
            f"{budget}); after the failed load {held_on_gpu()}; still loaded: "
            f"{', '.join(self.models) or 'none'}. Raise the lane's gpu_memory_gb, or keep fewer "
            f"models on this card. {error[:400]}"
        )

    def info(self, name: str) -> m.ModelInfo:
        details: m.ModelDetails = self.models[name].describe()
        return m.ModelInfo(
            name,
            self._cfg.models[name].backend,
            details,
            footprint_bytes=self.footprint(name),
            ram_bytes=self.in_ram(name) if self._gpu_budget is not None else None,
            placement=details.placement or ("gpu" if self._device.startswith("cuda") else "cpu"),
            load_s=self._load_s.get(name),
        )

    def unload(self, name: str, reason: Literal["evicted", "expired"]) -> None:
        backend = self.models.pop(name, None)
        self.residency.unloaded(name)
        self._reported_expiry.pop(name, None)
        if backend is None:
            return
        for forget in self.unloading:
            forget(backend)
        backend.close()
        del backend
        gc.collect()  # the library's buffers go with the last reference, now rather than later
        return_gpu_memory()
        self._send(m.ModelUnloaded(name, reason))

    def started(self, name: str, keep_alive_s: float | None = None) -> None:
        """`keep_alive_s` is the request's (RunTask.keep_alive_s): None the lane's, negative
        forever; the latest started request's applies once the model is idle."""
        self.residency.started(name, _ttl(keep_alive_s))

    def finished(self, name: str, keep_alive_s: float | None) -> None:
        """`keep_alive_s` is the request's (RunTask.keep_alive_s): None the lane's, negative
        forever."""
        self.residency.finished(name, _ttl(keep_alive_s))
        self._expiry_changed.add(name)  # told in expire(), after the task's end

    def keep(self, name: str, keep_alive_s: float | None) -> None:
        """m.KeepModel: `name`'s keep_alive from now (once idle), as a request's; 0 unloads it
        now if nothing runs on it."""
        self.residency.keep(name, _ttl(keep_alive_s))
        self._expiry_changed.add(name)
        self.expire()

    def _report_expiry(self, name: str) -> None:
        """m.ModelExpiry when an idle model's expiry changed (none for a model kept for ever
        all along: nothing is sent per task then)."""
        if self.residency.running(name):
            return
        due = self.residency.expires_at(name)
        if due is None and self._reported_expiry.get(name) is None:
            return
        self._reported_expiry[name] = due
        self._send(m.ModelExpiry(name, None if due is None else max(due - self.clock(), 0.0)))

    def expire(self) -> None:
        """Unload the idle models past their keep_alive; tell the server when the others now
        leave (m.ModelExpiry), once each task's end has been sent."""
        for name in self.residency.expired():
            self.unload(name, "expired")
        if self._expiry_changed:  # (this runs after every batch step)
            changed, self._expiry_changed = self._expiry_changed, set()
            for name in changed:
                self._report_expiry(name)

    def seconds_to_expiry(self) -> float | None:
        """How long the idle worker may wait before a model's keep_alive ends (at most an
        hour: a queue's wait overflows past ~292 years, and a keep_alive may say 3000000h)."""
        due = self.residency.next_expiry()
        return None if due is None else min(max(due - self.clock(), 0.0), MAX_IDLE_WAIT_S)

    def close(self) -> None:
        for backend in self.models.values():
            backend.close()


def _ttl(keep_alive_s: float | None) -> float | None | Literal["lane"]:
    """A request's keep_alive as the residency reads it: None the lane's, negative forever."""
    if keep_alive_s is None:
        return "lane"
    return None if keep_alive_s < 0 else keep_alive_s
