"""The models a worker holds, worker side: loaded on first use (or at start when preloaded),
unloaded least-recently-used when the next one needs their memory, and when idle past their
keep_alive. The rules are ris.memory.residency's (pure); this file applies them to backends and
tells the server what it did (ModelLoaded, ModelUnloaded).

Only the worker's main thread calls it: models are not re-entrant, and neither is this.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ris import messages as m
from ris.config import LaneConfig
from ris.config.fit_checks import ram_budget
from ris.memory.fit import gpu_bytes_needed
from ris.memory.footprint import model_footprint
from ris.memory.residency import Load, Ready, Refuse, Residency, Wait

# The longest single wait of an idle worker for a keep_alive's end; it looks again after.
MAX_IDLE_WAIT_S = 3600.0


@dataclass(frozen=True)
class Hold:
    """The model cannot load until the running work on `blocked_by` drains."""

    blocked_by: tuple[str, ...]


def _return_gpu_memory() -> None:
    """torch keeps a freed model's blocks cached in the worker: give them back to the card, so
    the next model's load (and nvidia-smi, and the lane's reported memory) sees them free. Only
    where torch is already loaded and has touched a GPU: a CPU worker never imports it here."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


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
    ) -> None:
        self._cfg = cfg
        self._device = device
        self._construct = construct
        self._send = send
        self.models: dict[str, Any] = {}
        # A GPU lane's models live on its card: they are counted against its GPU budget there
        # (the RAM they also take while loading is the worker's ceiling's business).
        self._gpu_budget = gpu_budget_bytes if device.startswith("cuda") else None
        budget = self._gpu_budget if self._gpu_budget is not None else ram_budget(cfg, ceiling_bytes)
        self.residency = Residency(budget, cfg.keep_alive_s, clock)
        self._footprints: dict[str, int | None] = {}
        self._load_s: dict[str, float] = {}
        self.clock = clock

    def footprint(self, name: str) -> int | None:
        if name not in self._footprints:
            try:
                fp = model_footprint(self._cfg.models[name], self._cfg.parallel)
            except Exception:  # noqa: BLE001 - an unreadable header: the load itself will say why
                traceback.print_exc()
                fp = None
            if fp is None or self._gpu_budget is None:
                self._footprints[name] = None if fp is None else fp.total
            else:  # on the card only what the backend places there (layers, an offload plan)
                layers = self._cfg.models[name].options.get("n_gpu_layers")
                need = gpu_bytes_needed(fp, self._gpu_budget, None if layers is None else int(layers))
                self._footprints[name] = need
        return self._footprints[name]

    def get(self, name: str, *, announce: bool = True) -> Any | Hold:
        """The backend of `name`, loaded if need be (evicting idle models least recently used
        first), or Hold while only running models stand in the way. Raises BackendError
        `model_too_large` for a model over the whole budget, and whatever the load raises."""
        from ris.lanes.base import BackendError

        need = self.footprint(name) or 0
        decision = self.residency.plan(name, need)
        if isinstance(decision, Ready):
            return self.models[name]
        if isinstance(decision, Refuse):
            raise BackendError("model_too_large", decision.message)
        if isinstance(decision, Wait):
            return Hold(decision.blocked_by)
        assert isinstance(decision, Load)
        for other in decision.evict:
            self.unload(other, "evicted")
        started = time.perf_counter()
        backend = self._construct(name)
        load_s = time.perf_counter() - started
        self.models[name] = backend
        self._load_s[name] = load_s
        self.residency.loaded(name, need)
        if announce:
            self._send(m.ModelLoaded(self.info(name)))
        return backend

    def info(self, name: str) -> m.ModelInfo:
        details: m.ModelDetails = self.models[name].describe()
        return m.ModelInfo(
            name,
            self._cfg.models[name].backend,
            details,
            footprint_bytes=self.footprint(name),
            placement=details.placement or ("gpu" if self._device.startswith("cuda") else "cpu"),
            load_s=self._load_s.get(name),
        )

    def unload(self, name: str, reason: Literal["evicted", "expired"]) -> None:
        backend = self.models.pop(name, None)
        self.residency.unloaded(name)
        if backend is None:
            return
        backend.close()
        del backend
        gc.collect()  # the library's buffers go with the last reference, now rather than later
        _return_gpu_memory()
        self._send(m.ModelUnloaded(name, reason))

    def started(self, name: str) -> None:
        self.residency.started(name)

    def finished(self, name: str, keep_alive_s: float | None) -> None:
        """`keep_alive_s` is the request's (RunTask.keep_alive_s): None the lane's, negative
        forever."""
        own: float | None | Literal["lane"] = "lane" if keep_alive_s is None else keep_alive_s
        if isinstance(own, float | int) and own < 0:
            own = None
        self.residency.finished(name, own)

    def expire(self) -> None:
        for name in self.residency.expired():
            self.unload(name, "expired")

    def seconds_to_expiry(self) -> float | None:
        """How long the idle worker may wait before a model's keep_alive ends (at most an
        hour: a queue's wait overflows past ~292 years, and a keep_alive may say 3000000h)."""
        due = self.residency.next_expiry()
        return None if due is None else min(max(due - self.clock(), 0.0), MAX_IDLE_WAIT_S)

    def close(self) -> None:
        for backend in self.models.values():
            backend.close()
