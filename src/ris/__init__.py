"""RIS, the Resource Isolation Scheduler: LLM, TTS and image lanes on one machine.

The package imports without torch, llama.cpp or any speech engine; backends load inside the
lanes' worker processes. The SDK's names load on first use (PEP 562): the server, the CLI and
every worker process import `ris` too, and need not pay for httpx to start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ris.sdk import AsyncClient, Client, Generation, RISError, RISWarning, Speech, TaskTimeout

__all__ = [
    "AsyncClient",
    "Client",
    "Generation",
    "RISError",
    "RISWarning",
    "Speech",
    "TaskTimeout",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import ris.sdk

        return getattr(ris.sdk, name)
    raise AttributeError(f"module 'ris' has no attribute {name!r}")
