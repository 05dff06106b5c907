"""Waiting on the real service in tests: poll with a deadline, fail with what was last seen."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from ris import Client

ENDED = ("succeeded", "failed", "cancelled")  # a task in one of these states stays in it


def wait_for(predicate: Callable[[], object], timeout: float) -> float:
    """Poll until `predicate()` is truthy; return how many seconds that took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")


def wait_seen(
    read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    """Poll `read()` until `done` accepts what it returned; return that. On a timeout, fail
    saying `what` was awaited and what was seen last."""
    seen: dict[str, Any] = {}

    def accepted() -> bool:
        seen.update(read())
        return done(seen)

    try:
        wait_for(accepted, timeout)
    except AssertionError:
        raise AssertionError(f"{what}: {seen}") from None
    return seen


def wait_state(client: Client, task_id: str, states: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
    """An image task's progress, once its status is one of `states`."""
    return wait_seen(
        lambda: client.progress(task_id),
        lambda p: p["status"] in states,
        timeout,
        f"{task_id} never reached {states}",
    )


def finished_task(http: httpx.Client, task_id: str, timeout: float) -> dict[str, Any]:
    """A task's record from the generic task API (any lane), once it has ended."""
    return wait_seen(
        lambda: dict(http.get(f"/api/tasks/{task_id}").json()),
        lambda t: t["state"] in ENDED,
        timeout,
        f"{task_id} had not ended after {timeout} s",
    )


def running_task(client: Client, lane: str, timeout: float = 10) -> str:
    """The id of a task running on `lane`, once there is one."""
    found: list[str] = []

    def started() -> bool:
        found[:] = [t["task_id"] for t in client.tasks(lane=lane, state="running")]
        return bool(found)

    wait_for(started, timeout)
    return found[0]


def post_in_background(
    url: str, body: dict[str, Any], timeout: float = 300
) -> tuple[threading.Thread, list[httpx.Response]]:
    """POST in a thread (a request that runs long); its response lands in the returned list."""
    result: list[httpx.Response] = []
    t = threading.Thread(target=lambda: result.append(httpx.post(url, json=body, timeout=timeout)))
    t.start()
    return t, result
