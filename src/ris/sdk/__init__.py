"""The Python SDK."""

from ris.sdk._common import Generation, RISError, RISWarning, Speech, TaskTimeout
from ris.sdk.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "Generation", "RISError", "RISWarning", "Speech", "TaskTimeout"]
