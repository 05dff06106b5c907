"""Model backends. Each is registered by name on its lane kind (ris/lanes/*.py) and imported
only inside that lane's worker process, after its resources are bound: the `ris` package
imports without torch, llama.cpp or any speech engine.

The interfaces they implement live with their lanes: LLMBackend (ris.lanes.llm), TTSBackend
(ris.lanes.tts), ImageBackend (ris.lanes.image).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ris.lanes.base import Backend, BackendContext, BackendError


def backend_class(lane: str, name: str) -> type[Backend]:
    """The backend class registered as `name` on `lane`'s kind (imports its module)."""
    from ris.lanes import kind

    return kind(lane).backend_class(name)


def resolve_source(source: str | None) -> Path:
    """A model source as a path: 'package:<module>[/<file>]' points into an installed package."""
    if not source:
        # "" was read as the working folder, which exists: every check passed, and the worker
        # failed each load, restarted for ever.
        raise BackendError("model_source_missing", "this model needs a 'source' file or folder")
    if source.startswith("package:"):
        module, _, rel = source[len("package:") :].partition("/")
        spec = importlib.util.find_spec(module)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise BackendError(
                "model_not_found",
                f"model source {source!r}: the Python package {module!r} is not installed",
            )
        path = Path(next(iter(spec.submodule_search_locations))) / rel
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise BackendError("model_not_found", f"model source {source!r}: {str(path)!r} does not exist")
    return path


__all__ = ["Backend", "BackendContext", "BackendError", "backend_class", "resolve_source"]
