"""Tasks in the store. A durable lane's are recorded when accepted, started and finished, and
found again after a restart; another lane's are recorded at their end when their result is a
file (speech), so it stays reachable after the scheduler forgets the task or the server restarts,
for as long as the retention policy keeps it (ris.runtime.retention)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ris.lanes.base import LaneKind
from ris.runtime.store import ABANDONED, CANCELLED, StoredTask, TaskStore
from ris.scheduler import Task, TaskState

log = logging.getLogger("ris.engine")

# A task found running after a restart is run again at most this many times in all.
MAX_ATTEMPTS = 2


class DurableTasks:
    def __init__(
        self,
        path: Path,
        kinds: Mapping[str, LaneKind[Any, Any, Any]],
        wall: Callable[[], float],
        to_wall: Callable[[float], float],
    ) -> None:
        """`wall`: Unix time now; `to_wall`: a scheduler (monotonic) time as Unix time."""
        self.store = TaskStore(path)
        self._kinds = kinds
        self._wall = wall
        self._to_wall = to_wall
        # Tasks a previous server accepted that this start ended without running them: (lane,
        # model, outcome, error code), for the counters (`ris_tasks_total`: a failure there was
        # unseen by an alert on it; ris_task_failures_total by its code). Taken by the engine
        # after `resumable`.
        self.ended_at_start: list[tuple[str, str, str, str | None]] = []

    def close(self) -> None:
        self.store.close()

    def durable(self, lane: str) -> bool:
        return self._kinds[lane].durable

    def accepted(
        self, task: Task, model: str, request: Any, *, resumable: bool = True, keep_deadline: bool = True
    ) -> None:
        """Record a newly admitted task, and wait until it is on disk: the client hears it
        was accepted only then (the one write the event loop still waits for). Not
        `resumable`: its client waits for it on its connection, which a stop closes; a
        restart finds it ABANDONED instead of running it for nobody. Not `keep_deadline`: its
        deadline is the lane's default, which a restart counts again from then."""
        if self.durable(task.lane):
            req = self._kinds[task.lane].request_to_json(request)
            spec = task.spec
            deadline = None if spec.deadline is None or not keep_deadline else self._to_wall(spec.deadline)
            self.store.add(
                task.id,
                task.lane,
                model,
                spec.priority,
                req,
                self._wall(),
                spec.owner,
                spec.client,
                deadline,
                None if resumable else ABANDONED,
            ).result()

    def started(self, task: Task) -> None:
        if self.durable(task.lane):
            self.store.mark_running(task.id, self._wall())

    def cancel_asked(self, task: Task) -> None:
        """A cancel asked for while the task runs: kept, so that a server stopped before its
        worker stopped the task does not run it again at the next start."""
        if self.durable(task.lane):
            self.store.not_resumed(task.id, CANCELLED)

    def set_aside(self, task: Task) -> None:
        """A task still running when the server stops on purpose: it runs again at the next
        start, its attempt not counted (two restarts during one long image failed it
        'interrupted', as if it had crashed the server twice)."""
        if self.durable(task.lane):
            self.store.set_aside(task.id)

    def finished(self, task: Task) -> Future[None] | None:
        """Record a task's end, on the store's writer thread; the future says when it is on
        disk (None: nothing to record, a lane that keeps neither tasks nor files)."""
        # Only what is recorded is turned into JSON (an LLM answer never is).
        if self.durable(task.lane):
            result = task.result.to_json() if task.result is not None else None
            files = task.result.files() if task.result is not None else ()
            return self.store.finish(
                task.id,
                task.state.value,
                self._wall(),
                task.error_code,
                task.error_message,
                result,
                files,
                (task.progress_done, task.progress_total),
            )
        if task.state is TaskState.SUCCEEDED and task.result is not None and task.result.files():
            model, request = task.spec.payload
            started = task.started_at
            return self.store.keep(
                StoredTask(
                    id=task.id,
                    lane=task.lane,
                    model=model,
                    state=task.state.value,
                    priority=task.spec.priority,
                    request=self._kinds[task.lane].request_to_json(request),
                    submitted_at=self._to_wall(task.submitted_at),
                    started_at=None if started is None else self._to_wall(started),
                    finished_at=self._wall(),
                    attempts=1,
                    error_code=None,
                    error_message=None,
                    result=task.result.to_json(),
                    owner=task.spec.owner,
                ),
                task.result.files(),
            )
        return None

    def resumable(self, enabled: set[str]) -> Iterator[tuple[StoredTask, Any]]:
        """The tasks a previous server accepted but did not finish, oldest first, with their
        requests; those run too often already, or past their client's timeout, fail here
        instead (each said in the log). A lane now off keeps its tasks for a start that has it
        again (an operator pausing images for a while): they failed for good, unsaid."""
        kept: dict[str, int] = {}
        for st in self.store.unfinished():
            now = self._wall()
            if st.on_restart == CANCELLED:
                self.store.finish(st.id, "cancelled", now, "cancelled", "cancelled before the server stopped")
                self.ended_at_start.append((st.lane, st.model, "cancelled", "cancelled"))
            elif st.on_restart == ABANDONED:
                message = "its client waited for it on a connection the server's stop closed"
                self.store.finish(st.id, "cancelled", now, "server_shutdown", message)
                self.ended_at_start.append((st.lane, st.model, "cancelled", "server_shutdown"))
            elif st.deadline is not None and st.deadline <= now:
                self._fail(st, "deadline_exceeded", "its timeout passed while the server was stopped")
            elif st.state == "running" and st.attempts >= MAX_ATTEMPTS:
                self._fail(
                    st, "interrupted", f"the server stopped while this task ran ({st.attempts} attempts)"
                )
            elif st.lane not in enabled:
                # Kept for a start with its lane (past the checks above: a task that ran
                # MAX_ATTEMPTS times fails even so); it does not run while it waits: queued.
                kept[st.lane] = kept.get(st.lane, 0) + 1
                if st.state == "running":
                    self.store.requeue(st.id)
            else:
                try:
                    request = self._kinds[st.lane].request_from_json(st.request)
                except (TypeError, ValueError) as e:
                    # Kept by another version (a field since removed): that task fails, the
                    # others resume and the server starts; it would refuse every start.
                    self._fail(
                        st, "unreadable_request", f"its stored request is not one this version reads: {e}"
                    )
                    continue
                if st.state == "running":
                    self.store.requeue(st.id)
                yield st, request
        for lane, count in kept.items():
            log.warning(
                "%d %s task(s) accepted before this start wait for the %s lane, off in this "
                "configuration: enable it to run them",
                count,
                lane,
                lane,
            )
        # The tasks failed here are read back as failed from the start on (lookups read the disk).
        self.store.flush()

    def cancel_kept(self, st: StoredTask) -> None:
        """A client cancels a task kept for a start with its lane on."""
        self.store.finish(st.id, "cancelled", self._wall(), "cancelled", "cancelled by the client")

    def fail_at_start(self, st: StoredTask, code: str, message: str) -> None:
        """A task accepted before this start that will not run: failed on disk, and said."""
        self._fail(st, code, message)

    def _fail(self, st: StoredTask, code: str, message: str) -> None:
        log.warning("%s task %s accepted before this start failed: %s (%s)", st.lane, st.id, message, code)
        self.store.finish(st.id, "failed", self._wall(), code, message)
        self.ended_at_start.append((st.lane, st.model, "failed", code))
