"""The Python SDK."""

from ris.sdk._common import Generation, RISError, Speech, TaskTimeout
from ris.sdk.client import AsyncClient, Client

__all__ = ["AsyncClient", "Client", "Generation", "RISError", "Speech", "TaskTimeout"]
