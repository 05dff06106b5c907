"""RIS, the Resource Isolation Scheduler: LLM, TTS and image lanes on one machine.

The package imports without torch, llama.cpp or any speech engine; backends load inside the
lanes' worker processes.
"""

__version__ = "0.1.0"

from ris.sdk import AsyncClient, Client, Generation, RISError, Speech  # noqa: E402

__all__ = ["AsyncClient", "Client", "Generation", "RISError", "Speech", "__version__"]
