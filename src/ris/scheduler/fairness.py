"""Which queued task a lane starts next when clients share it, and the order they will start in.

One rule, two uses: dispatch asks `fair_pick` over the lane's heap at every free slot, and a
queued task's place and ETA ask `fair_order` for the order that rule will start the queue in.
Places read from the priority order alone were wrong whenever two clients shared a lane: on the
one-slot image lane a second user's picture, told "third", ran next (the clients take turns),
and the first user's, told "next", was pushed back a turn when the slot freed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ris.scheduler.tasks import Task


class QueueView(Protocol):
    """What the pick reads of a queue: its first task, the first one a test accepts (both in
    the order tasks would run), and the clients waiting."""

    def peek(self) -> Task | None: ...

    def first(self, wanted: Callable[[Task], bool]) -> Task | None: ...

    def clients(self) -> set[str | None]: ...

    def client_count(self) -> int: ...


def client_cap(share: float, slots: int) -> int:
    """The slots one client may hold while another client's task waits (at least one)."""
    return max(1, math.ceil(share * slots))


def fair_pick(
    queue: QueueView, running: Iterable[Task], last_client: str | None, share: float, slots: int
) -> Task | None:
    """The task to start in a free slot: the queue's first, unless its client already holds
    its share of the lane's slots while another client's task waits; then the first task of a
    client under its share (taken out of the queue's order, which stays as it was for everyone
    else). Nothing is changed: the caller takes the task out of its queue.

    The client that started a task last counts as holding one slot more: on a lane of one
    slot (a share of one slot at least) two clients then take turns, rather than the one that
    queued first running all its tasks while the other waits.

    Costly tasks (TaskSpec.costly) of a client past its share wait even when nobody else does:
    the slots they would take stay free for the next client's request, which would otherwise
    wait for a costly task to end (seconds, where a plain chat takes a fraction of one). A
    client's plain tasks still take any free slot. None: nothing may start now."""
    head = queue.peek()
    if head is None or head.spec.client is None or share >= 1.0:
        return head
    if not head.spec.costly and queue.client_count() == 1:
        # Only the head's client waits, and a plain task takes any free slot: the pass below
        # would pick the head too (the common case of one app or one user, at every dispatch).
        return head
    cap = client_cap(share, slots)
    held: dict[str | None, int] = {last_client: 1}
    held_costly: dict[str | None, int] = {}
    for t in running:  # one pass, plain dicts: this runs at every dispatch
        c = t.spec.client
        held[c] = held.get(c, 0) + 1
        if t.spec.costly:
            held_costly[c] = held_costly.get(c, 0) + 1

    def may_start(task: Task) -> bool:
        client = task.spec.client
        return not task.spec.costly or client is None or held_costly.get(client, 0) < cap

    if held.get(head.spec.client, 0) < cap and may_start(head):
        return head
    # One pass each, no sorting (a full queue of one client's tasks was sorted twice at every
    # dispatch).
    full = {client for client, n in held.items() if n >= cap and client is not None}
    # The pass only where a client under its share waits at all: one client with a queue of
    # its own tasks (an app sending many at once) costs one set difference, not a scan.
    task = None
    if queue.clients() - full:
        task = queue.first(lambda t: t.spec.client not in full and may_start(t))
    if task is None and last_client in full and held[last_client] - 1 < cap:
        # Full only by the turn-taking extra slot, the last starter may hold nothing now: it
        # goes before a client holding its whole share (who took every slot otherwise).
        task = queue.first(lambda t: t.spec.client == last_client and may_start(t))
    if task is None:
        # No one under their share waits: a free slot is not left idle, but for a costly task.
        task = head if may_start(head) else queue.first(may_start)
    return task


class _Listed:
    """A QueueView over a list already in the order tasks would run (fair_order's copy)."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.tasks = list(tasks)

    def peek(self) -> Task | None:
        return self.tasks[0] if self.tasks else None

    def first(self, wanted: Callable[[Task], bool]) -> Task | None:
        return next((t for t in self.tasks if wanted(t)), None)

    def clients(self) -> set[str | None]:
        return {t.spec.client for t in self.tasks}

    def client_count(self) -> int:
        return len(self.clients())


def fair_order(
    queued: Sequence[Task], running: Sequence[Task], last_client: str | None, share: float, slots: int
) -> list[Task]:
    """`queued` (in the order tasks would run by priority) in the order fair_pick will start
    them, if running tasks end oldest first (`running` in the order they started): the order a
    queued task's place and ETA are told in. O(n^2) for n queued; asked once per change of the
    queue (Scheduler caches it)."""
    one_client = len({t.spec.client for t in queued}) <= 1
    if share >= 1.0 or slots < 1 or (one_client and not any(t.spec.costly for t in queued)):
        # No share, or one client's plain tasks: the priority order is the start order (a
        # costly task past its client's share lets a plain one behind it go first).
        return list(queued)
    rest, now_running, last = _Listed(queued), list(running), last_client
    order: list[Task] = []
    while rest.tasks:
        while len(now_running) >= slots:
            now_running.pop(0)
        task = fair_pick(rest, now_running, last, share, slots)
        if task is None:
            if not now_running:  # cannot happen (a client holding nothing may start), but stop
                order.extend(rest.tasks)
                break
            now_running.pop(0)  # a costly task waits for its client's running one to end
            continue
        rest.tasks.remove(task)
        order.append(task)
        now_running.append(task)
        last = task.spec.client
    return order
