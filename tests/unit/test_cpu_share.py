"""The batch lane's minimum CPU share: the weight a share needs, the nice level that gives it,
and the mechanism applied to a real child process, read back from the OS."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from ris.messages import CpuShareInfo
from ris.runtime import cpu_share


def test_weights_and_nice_levels_give_at_least_the_share() -> None:
    assert cpu_share.weight_for(0.1) == 114  # 114 / (1024 + 114) = 10.0%
    assert cpu_share.share_of(cpu_share.weight_for(0.1)) >= 0.1
    assert cpu_share.nice_for(0.1) == 9  # weight 137: 11.8%; nice 10 (110) would give 9.7%
    assert cpu_share.share_of(cpu_share.NICE_WEIGHTS[19]) < 0.015  # nice 19 alone: 1.4%
    assert cpu_share.nice_for(0.1, at_most=5) == 5  # never a lower priority than configured
    assert cpu_share.nice_for(0.6) == 0  # more than nice 0 gives: the best a nice can do


def _child(server_pid: int, out: mp.Queue[CpuShareInfo], read: Any, unprivileged: bool = False) -> None:
    # As a worker: bound, its nice left to the share (worker_main), at its parent's nice.
    if unprivileged:  # as a server that is not root: no cgroup to write, no lowering of a nice
        setpriority = os.setpriority

        def only_up(which: int, who: int, level: int) -> None:
            if level < os.getpriority(which, who):
                raise PermissionError(13, "Permission denied")
            setpriority(which, who, level)

        os.setpriority = only_up  # type: ignore[assignment]
        cpu_share._cgroup_v1 = lambda name, weight: None
    # A thread started before the share (a worker has its pipe's reader by then) and, after
    # it, the queue's feeder thread (started by the put): both must end up in the policy.
    threading.Thread(target=read.wait, args=(60,), daemon=True).start()
    out.put(cpu_share.apply_min_cpu_share(0.1, "unit-test", 19, server_pid))
    read.wait(60)  # alive while the parent reads it from the OS


def test_the_share_is_set_on_a_real_process_and_read_back_from_the_os() -> None:
    ctx = mp.get_context("spawn")
    out: mp.Queue[CpuShareInfo] = ctx.Queue()
    read = ctx.Event()
    proc = ctx.Process(target=_child, args=(os.getpid(), out, read))
    proc.start()
    try:
        info = out.get(timeout=60)
        if info.mechanism == "cgroup_v1":
            assert info.cgroup is not None
            group = Path(info.cgroup)
            assert group.name == f"ris-{os.getpid()}-unit-test"
            assert (group / "cpu.shares").read_text().strip() == "114"
            assert str(proc.pid) in (group / "cgroup.procs").read_text().split()
            assert info.share == pytest.approx(114 / 1138)
            assert os.getpriority(os.PRIO_PROCESS, proc.pid or 0) == info.nice == 19  # weightless inside
            # Inside its group, under SCHED_IDLE (never held back as cache-hot by the balancer),
            # every thread, the ones the child had before the share was set included.
            assert info.policy == "idle"
            threads = os.listdir(f"/proc/{proc.pid}/task")
            assert len(threads) >= 3  # main, the one started before the share, the queue's feeder
            assert {os.sched_getscheduler(int(t)) for t in threads} == {os.SCHED_IDLE}
        else:
            assert info.mechanism == "nice"
            assert os.getpriority(os.PRIO_PROCESS, proc.pid or 0) == info.nice <= 9
            # No group, no SCHED_IDLE: its weight (3) would be all the worker has.
            assert info.policy == "other" and os.sched_getscheduler(proc.pid or 0) == os.SCHED_OTHER
    finally:
        read.set()
        proc.join(30)
        cpu_share.remove_groups(os.getpid())
    assert not list(Path(info.cgroup).parent.glob(f"ris-{os.getpid()}-*")) if info.cgroup else True


def test_an_unprivileged_worker_gets_the_share_by_nice() -> None:
    """No cgroup to write, no right to lower a nice: the worker starts at its parent's nice and
    only raises it, to the level that gives the share (9). Niced to 19 first, as it was, it
    could not come back down and kept 1.4%."""
    ctx = mp.get_context("spawn")
    out: mp.Queue[CpuShareInfo] = ctx.Queue()
    read = ctx.Event()
    proc = ctx.Process(target=_child, args=(os.getpid(), out, read, True))
    proc.start()
    try:
        info = out.get(timeout=60)
        assert info.mechanism == "nice" and info.nice == 9 and info.share >= 0.1
        assert os.getpriority(os.PRIO_PROCESS, proc.pid or 0) == 9
        assert info.policy == "other" and os.sched_getscheduler(proc.pid or 0) == os.SCHED_OTHER
    finally:
        read.set()
        proc.join(30)


def _owned_by_itself(out: mp.Queue[CpuShareInfo]) -> None:
    # As a Ray actor: its group is named after itself (worker_main's share_owner).
    out.put(cpu_share.apply_min_cpu_share(0.1, "unit-actor", 19, os.getpid()))


def test_a_group_outlives_its_owner_only_until_the_next_worker_starts() -> None:
    """A Ray actor's group is named after the actor: once it is gone, the group is stale and
    the next actor's start (remove_stale) removes it; a live owner's group stays."""
    ctx = mp.get_context("spawn")
    out: mp.Queue[CpuShareInfo] = ctx.Queue()
    proc = ctx.Process(target=_owned_by_itself, args=(out,))
    proc.start()
    info = out.get(timeout=60)
    proc.join(30)
    if info.mechanism != "cgroup_v1":
        pytest.skip("no writable cpu cgroup here: the share is a nice level, with nothing to remove")
    assert info.cgroup is not None
    group = Path(info.cgroup)
    assert group.name == f"ris-{proc.pid}-unit-actor" and group.is_dir()
    live = group.parent / cpu_share.group_name(os.getpid(), "unit-live")
    live.mkdir()
    try:
        cpu_share.remove_stale()
        assert not group.exists() and live.is_dir()
    finally:
        live.rmdir()
