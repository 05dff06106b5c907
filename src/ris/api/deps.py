"""Small helpers the route modules share."""

from __future__ import annotations

import re

from fastapi import Request

from ris.api.errors import APIError
from ris.runtime.engine import Engine
from ris.scheduler import Task

_TASK_ID = re.compile(r"^[0-9a-f]{32}$")


def engine_of(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def task_or_404(engine: Engine, task_id: str) -> Task:
    if not _TASK_ID.match(task_id):
        raise APIError(404, "not_found", "task ids are 32 lowercase hex characters")
    task = engine.scheduler.get(task_id)
    if task is None:
        raise APIError(404, "not_found", f"no task {task_id}")
    return task
