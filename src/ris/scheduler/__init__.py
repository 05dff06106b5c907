"""Scheduling policy: pure code with an injected clock; no processes, sockets or devices."""

from ris.scheduler.queue import LaneQueue
from ris.scheduler.scheduler import (
    CancelOutcome,
    LanePolicy,
    LaneStats,
    ModelWait,
    Ordering,
    QueueFull,
    Scheduler,
    percentile,
)
from ris.scheduler.tasks import PriorityClass, Task, TaskSpec, TaskState

__all__ = [
    "CancelOutcome",
    "LanePolicy",
    "LaneQueue",
    "LaneStats",
    "ModelWait",
    "Ordering",
    "PriorityClass",
    "QueueFull",
    "Scheduler",
    "Task",
    "TaskSpec",
    "TaskState",
    "percentile",
]
