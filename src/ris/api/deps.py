"""Small helpers the route modules share."""

from __future__ import annotations

import re

from fastapi import Request

from ris.api.errors import APIError
from ris.runtime.engine import Engine, TaskView

_TASK_ID = re.compile(r"^[0-9a-f]{32}$")


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def view_or_404(engine: Engine, task_id: str) -> TaskView:
    """A task from the scheduler or the durable store; ids are checked before any lookup."""
    if not _TASK_ID.match(task_id):
        raise APIError(404, "not_found", "task ids are 32 lowercase hex characters")
    view = engine.lookup(task_id)
    if view is None:
        raise APIError(404, "not_found", f"no task {task_id}")
    return view
