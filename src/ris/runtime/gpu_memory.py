"""What torch holds on a worker's GPU, for code that does not import torch itself (the worker's
serving loop and its model cache): whether an error is torch's out-of-memory one, handing its
cached blocks back to the card, and what it still holds. torch is looked up among the modules
already loaded, never imported: a CPU worker's backends never load it.
"""

from __future__ import annotations

import sys
from typing import Any


def _cuda_torch() -> Any:
    """torch where this worker has loaded it and touched a GPU, else None: a CPU worker never
    imports it here."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_initialized() else None


def return_gpu_memory() -> None:
    """torch keeps freed blocks cached in the worker (an evicted model's, a failed task's):
    give them back to the card, so the next load (and nvidia-smi, and the lane's reported
    memory) sees them free."""
    torch = _cuda_torch()
    if torch is not None:
        torch.cuda.empty_cache()


def gpu_out_of_memory(e: BaseException) -> bool:
    """torch's out-of-memory error (the allocator's cap or the card's own end)."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return isinstance(oom, type) and isinstance(e, oom)


def held_on_gpu() -> str:
    """What torch holds on this worker's GPU, in words (for a failure's message)."""
    torch = _cuda_torch()
    if torch is None:
        return "torch has not touched the GPU"
    return (
        f"this worker's torch holds {torch.cuda.memory_allocated() / 2**20:,.0f} MiB allocated, "
        f"{torch.cuda.memory_reserved() / 2**20:,.0f} MiB reserved"
    )


__all__ = ["gpu_out_of_memory", "held_on_gpu", "return_gpu_memory"]
