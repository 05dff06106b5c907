"""Worker kinds: where a lane's worker runs, one module each, chosen by `cluster.engine`.

As uvicorn chooses its event loop, a kind is a name in `KINDS` mapped to the "module:Class" of
its pool (see base.py for what a pool and its workers promise), imported only when chosen: the
Ray kind imports ray, an optional extra. A kind that is not listed is named by its
"module:Class" in the config itself, so a new kind is one module, touching no existing file.
"""

from __future__ import annotations

import importlib
from typing import cast

from ris.runtime.workers.base import PoolOpener

KINDS: dict[str, str] = {
    "process": "ris.runtime.workers.process:ProcessWorkers",
    "ray": "ris.runtime.workers.ray:RayWorkers",
}
# Older names for a kind: `cluster.engine: local` is the process kind.
ALIASES: dict[str, str] = {"local": "process"}


def pool_class(kind: str) -> PoolOpener:
    """The pool class of a kind: a name in KINDS (or ALIASES), or a "module:Class" string."""
    target = KINDS.get(ALIASES.get(kind, kind), kind)
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        known = ", ".join([*KINDS, *ALIASES])
        raise ValueError(f"unknown worker kind {kind!r}: use one of {known}, or 'module:Class'")
    return cast(PoolOpener, getattr(importlib.import_module(module), name))


__all__ = ["ALIASES", "KINDS", "pool_class"]
