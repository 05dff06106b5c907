"""A torch lane's GPU budget inside its worker: the caching allocator capped to it, and the
sizes of loaded modules for an offload plan.

The cap is torch's own (`set_per_process_memory_fraction`): an allocation that would take the
process's allocator past it raises `torch.OutOfMemoryError` at once, before the card itself
runs out, so one lane's spike fails its own task (`gpu_out_of_memory`, worker_main) and never
takes the memory another lane on the card was promised. What the cap cannot see: the CUDA
context (a few hundred MiB per process, made before any tensor) and memory allocated outside
torch's allocator; the lanes' budgets leave room for those (ris.config.profiles).

Imported only by torch backends, inside their worker.
"""

from __future__ import annotations

from typing import Any

import torch

from ris.lanes.base import BackendContext


def gpu_budget_bytes(ctx: BackendContext) -> int | None:
    """The lane's budget on its card in bytes: as the server sized it, else the configured
    fraction of the card this worker sees (a cluster node's). None: not on a GPU, or no budget."""
    if not ctx.device.startswith("cuda"):
        return None
    if ctx.gpu_budget_bytes is not None:
        return ctx.gpu_budget_bytes
    if ctx.gpu_memory_fraction is not None:
        return int(torch.cuda.get_device_properties(0).total_memory * ctx.gpu_memory_fraction)
    return None


def cap_allocator(ctx: BackendContext) -> int | None:
    """Cap torch's allocator on the worker's GPU (always cuda:0: it sees only its own) to the
    lane's budget; returns the budget applied (None: none). Idempotent: every model of the lane
    calls it, and the cap is the lane's, shared by its models."""
    budget = gpu_budget_bytes(ctx)
    if budget is None:
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(budget / total, 1.0), 0)
    return budget


def module_bytes(module: Any) -> int:
    """The bytes of a module's parameters and buffers (what moving it to a device moves)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def pipeline_components(pipe: Any) -> dict[str, int]:
    """A diffusers pipeline's torch components and their sizes (the tokenizers and the
    scheduler hold no tensors and are left out)."""
    return {
        name: module_bytes(part)
        for name, part in pipe.components.items()
        if isinstance(part, torch.nn.Module)
    }


__all__ = ["cap_allocator", "gpu_budget_bytes", "module_bytes", "pipeline_components"]
