"""Model backends, registered by name and imported only when a lane's worker loads one.

The `ris` package imports without torch, llama.cpp or any speech engine: each entry below is a
"module:Class" string resolved inside the worker process, after its resources are bound.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ris.backends.base import BackendError, ImageBackend, LLMBackend, TTSBackend
from ris.scheduler import Lane

REGISTRY: dict[Lane, dict[str, str]] = {
    Lane.LLM: {
        "llama_cpp": "ris.backends.llm_llama_cpp:LlamaCppLLM",
        "transformers": "ris.backends.llm_transformers:TransformersLLM",
        # Benchmark-only: no model, measures the service's own overhead.
        "noop": "ris.backends.llm_noop:NoopLLM",
    },
    Lane.TTS: {
        "espeak": "ris.backends.tts_espeak:EspeakTTS",
        "piper": "ris.backends.tts_piper:PiperTTS",
    },
    Lane.IMAGE: {
        "diffusers": "ris.backends.image_diffusers:DiffusersImage",
    },
}


@dataclass(frozen=True)
class BackendContext:
    """Where a backend runs: what the worker was bound to."""

    device: str  # "cpu" or "cuda:N" as configured (the worker sees only that GPU, as cuda:0)
    threads: int
    data_dir: Path
    # The image worker's preemption points (ris.scheduler.preemption.Yielder); None elsewhere.
    yielder: Any = None


def backend_class(lane: Lane, name: str) -> type:
    try:
        target = REGISTRY[lane][name]
    except KeyError:
        allowed = ", ".join(REGISTRY.get(lane, {})) or "none"
        raise BackendError(
            "unknown_backend", f"no {lane.value} backend named {name!r}; available: {allowed}"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendError(
            "backend_unavailable",
            f"the {name!r} backend needs a package that is not installed ({e.name}): {e}",
        ) from e
    cls: type = getattr(module, attr)
    return cls


def resolve_source(source: str | None) -> Path:
    """A model source as a path: 'package:<module>[/<file>]' points into an installed package."""
    if source is None:
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


__all__ = [
    "REGISTRY",
    "BackendContext",
    "BackendError",
    "ImageBackend",
    "LLMBackend",
    "TTSBackend",
    "backend_class",
    "resolve_source",
]
