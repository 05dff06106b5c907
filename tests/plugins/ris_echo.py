"""Recipe: a new lane kind. One module, one registration (docs/DEVELOPER_GUIDE.md).

A test-only "echo" lane: it repeats text back, upper-cased by its one backend. Its requests go
through the generic POST /api/tasks; config.json loads it with `"plugins": ["ris_echo"]` and
configures it like any lane: `"lanes": {"echo": {"models": {"up": {"backend": "upper"}}}}`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ris import lanes
from ris.lanes.base import (
    Backend,
    LaneKind,
    LaneResult,
    LaneRunner,
    ResultFiles,
    Seen,
    result_from_json,
)


@dataclass(frozen=True)
class EchoRequest:
    text: str
    times: int = 1


@dataclass(frozen=True)
class EchoOutcome:
    parts: int


@dataclass(frozen=True)
class EchoPart:
    text: str


class EchoBackend(Backend):
    """The lane's backend interface: say each part through `emit`, stop when `cancelled()`."""

    @abstractmethod
    def echo(
        self, req: EchoRequest, emit: Callable[[str], None], cancelled: Callable[[], bool]
    ) -> EchoOutcome: ...


class UpperEcho(EchoBackend):
    def echo(
        self, req: EchoRequest, emit: Callable[[str], None], cancelled: Callable[[], bool]
    ) -> EchoOutcome:
        for _ in range(req.times):
            if cancelled():
                break
            emit(req.text.upper())
        return EchoOutcome(parts=req.times)


@dataclass(frozen=True)
class EchoResult(LaneResult):
    text: str
    parts: int


class EchoRunner(LaneRunner[EchoBackend, EchoRequest, EchoOutcome]):
    def run(
        self, backend: EchoBackend, task_id: str, request: EchoRequest, cancelled: Callable[[], bool]
    ) -> EchoOutcome:
        def emit(text: str) -> None:
            self.env.output(task_id, EchoPart(text))

        return backend.echo(request, emit, cancelled)


class EchoLane(LaneKind[EchoRequest, EchoOutcome, EchoResult]):
    name = "echo"
    request_type, outcome_type, backend_type, runner_type = EchoRequest, EchoOutcome, EchoBackend, EchoRunner
    builtin_backends = {"upper": f"{__name__}:UpperEcho"}

    def build_result(self, seen: Seen, outcome: EchoOutcome, files: ResultFiles) -> EchoResult:
        text = " ".join(part.text for part in seen.outputs)
        return EchoResult(model=seen.model, timings=seen.timings, text=text, parts=outcome.parts)

    def result_from_json(self, data: Mapping[str, Any]) -> EchoResult:
        return result_from_json(EchoResult, data)


LANE = EchoLane()
# The one registration: "echo" is now a lane config.json may name.
lanes.register(LANE, f"{__name__}:LANE")
