"""Lane kinds by name: llm, tts, image (their names: `Lane`), and any registered later.

Adding a kind is one module defining a `LaneKind` and one `register()` call; a config.json that
does not mention a lane leaves it disabled. A kind is registered with the "module:attribute"
where it lives, so a worker process (spawned fresh) imports the same object.
"""

from __future__ import annotations

import importlib
from typing import Any

from ris.lanes.base import LaneKind
from ris.lanes.names import Lane

_KINDS: dict[str, LaneKind[Any, Any, Any]] = {}
_TARGETS: dict[str, str] = {}


def register(kind: LaneKind[Any, Any, Any], target: str) -> None:
    """Make a lane kind known; `target` ("module:ATTR") is where a worker imports it from."""
    if not kind.name.isidentifier() or not kind.name.islower():
        raise ValueError(f"lane name {kind.name!r}: use a lowercase identifier such as 'ocr'")
    _KINDS[kind.name] = kind
    _TARGETS[kind.name] = target


def unregister(name: str) -> None:
    """Forget a kind registered by `register` (tests)."""
    _KINDS.pop(name, None)
    _TARGETS.pop(name, None)


def kinds() -> dict[str, LaneKind[Any, Any, Any]]:
    """Every known kind, built-in ones first."""
    return dict(_KINDS)


def kind(name: str) -> LaneKind[Any, Any, Any]:
    try:
        return _KINDS[name]
    except KeyError:
        raise KeyError(f"unknown lane {name!r}; known lanes: {', '.join(_KINDS)}") from None


def target(name: str) -> str:
    return _TARGETS[name]


def import_kind(target: str) -> LaneKind[Any, Any, Any]:
    """The kind at "module:ATTR" (inside a worker process), registered there too."""
    module_name, _, attr = target.partition(":")
    obj = getattr(importlib.import_module(module_name), attr)
    if not isinstance(obj, LaneKind):
        raise TypeError(f"{target!r} is not a LaneKind")
    register(obj, target)
    return obj


def _builtins() -> None:
    from ris.lanes import image, llm, tts

    for module in (llm, tts, image):
        register(module.LANE, f"{module.__name__}:LANE")


_builtins()

__all__ = ["Lane", "LaneKind", "import_kind", "kind", "kinds", "register", "target", "unregister"]
