"""A batch lane's minimum CPU share under real-time saturation (LaneConfig.min_cpu_share).

The kernel's fair scheduler (CFS) splits a busy core between runnable entities by weight. A
nice-0 task weighs 1024; at nice 19 the image worker weighs 15, so against one saturating
real-time task it gets 15/1039 = 1.4% of the core (measured here: about 2%), and a picture
takes minutes. A share s needs a weight w with w / (1024 + w) = s, that is
w = 1024 * s / (1 - s): 114 for 10%.

Two mechanisms give that weight, tried in this order by the worker itself at start:

* cgroup v1 (this machine's kind): a child group of the worker's cpu cgroup, named after the
  process whose life it lasts (its owner: the server for a local worker, which removes its
  groups when it stops, `remove_groups`; a Ray actor itself, whose group the node's next actor
  removes once the actor is gone, `remove_stale`) and the lane, with `cpu.shares` = w, and the
  worker moved into it. The group is one entity whatever the worker's threads: a torch pool of
  four threads still gets s, where per-task weights (nice) would give each thread s. Needs a
  writable cgroup tree (root, or a delegated tree).
* nice: the highest nice level whose CFS weight is at least w (nice 9 = 137: 11.8%; nice 10 =
  110 would give 9.7% < 10%). Works everywhere, per thread.

Inside its group the worker's threads run under SCHED_IDLE. There the policy's own weight (3)
ranks them against nobody but the lane's own workers (the group holds only those; the group's
weight is what the real-time lanes meet). What it buys: the load balancer never counts an
idle-policy task as cache-hot, so a thread put behind a real-time task may be pulled to a core
that has just gone idle instead of waiting out the kernel's migration cost (0.5 ms) where it
is. Against two bursty real-time loads the batch thread found 0.688 cores of idle time against
0.650 in the group at nice 19, the real-time tasks about 1% slower (0.445 against 0.449 cores;
bench/cpu_share_mechanisms.py --load bursty). Two side effects, both in the real-time lanes'
favour: a core running only idle-policy threads counts as idle where the kernel places waking
tasks (unpinned ones, the API process's, land there), and before Linux 6.12 any waking
non-idle task preempted such a thread at once whatever its group (since 6.12 the comparison
stays within the hierarchy). Measured on 6.18 only. Outside a group SCHED_IDLE is never used:
its weight would be the worker's own, below nice 19's, and no minimum share could hold under it.

cgroup v2 (`cpu.weight`) is not tried: a v2 host needs a delegated subtree for the server,
which this repository has not been able to test; such hosts get the nice level.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from ris.messages import CpuShareInfo
from ris.runtime.binding import each_thread, renice_process

# The kernel's sched_prio_to_weight, nice 0..19 (kernel/sched/core.c).
NICE_WEIGHTS = (1024, 820, 655, 526, 423, 335, 272, 215, 172, 137, 110, 87, 70, 56, 45, 36, 29, 23, 18, 15)
NICE_0_WEIGHT = NICE_WEIGHTS[0]
CGROUP_V1_CPU = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct"))
GROUP_PREFIX = "ris-"


def weight_for(share: float) -> int:
    """The CFS weight that gets `share` of a core against one nice-0 task."""
    return max(2, math.ceil(NICE_0_WEIGHT * share / (1.0 - share)))


def share_of(weight: int) -> float:
    """The share of a core `weight` gets against one nice-0 task."""
    return weight / (NICE_0_WEIGHT + weight)


def nice_for(share: float, at_most: int = 19) -> int:
    """The highest nice level (up to `at_most`) whose weight gives at least `share`."""
    need = weight_for(share)
    return max(n for n in range(at_most + 1) if NICE_WEIGHTS[n] >= need or n == 0)


def group_name(owner_pid: int, lane: str) -> str:
    return f"{GROUP_PREFIX}{owner_pid}-{lane}"


def apply_min_cpu_share(share: float, lane: str, nice: int, owner_pid: int) -> CpuShareInfo:
    """Give the calling process (a batch worker, bound but not yet reniced: it runs at its
    parent's nice) at least `share` of a saturated core: a cgroup where one can be made (and
    the lane's `nice` inside it, which weighs nothing against the group's other members: it
    has none; its threads under SCHED_IDLE, see the module's docstring), else the nice level
    that gives the share (never above `nice`). Either only raises the nice from where it is,
    and SCHED_IDLE only lowers the policy, which needs no privilege. The group is named after
    `owner_pid`: gone with it, it is stale (remove_stale)."""
    weight = weight_for(share)
    group = _cgroup_v1(group_name(owner_pid, lane), weight)
    level = nice if group is not None else min(nice, nice_for(share))
    try:
        renice_process(level)
    except PermissionError:  # a nice below the parent's: kept where it is
        pass
    level = os.getpriority(os.PRIO_PROCESS, 0)
    if group is not None:
        policy = "idle" if _set_idle_policy() else "other"
        return CpuShareInfo("cgroup_v1", weight, share_of(weight), level, str(group), policy)
    weight_now = NICE_WEIGHTS[min(max(level, 0), 19)]  # a parent below nice 0: counted as 0
    return CpuShareInfo("nice", weight_now, share_of(weight_now), level)


def _set_idle_policy() -> bool:
    """Put every thread of this process under SCHED_IDLE (threads started later inherit their
    creator's policy; those started during the pass are reached too: a Ray actor's own threads
    run meanwhile). False where the OS has no such policy, lists no thread, or refused one."""
    idle = getattr(os, "SCHED_IDLE", None)
    if idle is None:
        return False
    refused: list[int] = []

    def switch(tid: int) -> None:
        try:
            os.sched_setscheduler(tid, idle, os.sched_param(0))
        except (ProcessLookupError, FileNotFoundError):
            raise  # gone: each_thread skips it
        except OSError:
            refused.append(tid)

    return each_thread(switch) > 0 and not refused


def _own_cpu_cgroup() -> tuple[Path, str] | None:
    """The cgroup v1 cpu controller's mount and this process's path in it."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            for mount in CGROUP_V1_CPU:
                if (mount / "cpu.shares").exists():
                    return mount, path
    return None


def _cgroup_v1(name: str, weight: int) -> Path | None:
    """Make (or reuse: a restarted worker) the group, set its weight, move this process in."""
    found = _own_cpu_cgroup()
    if found is None:
        return None
    mount, own = found
    group = mount / own.lstrip("/") / name
    try:
        group.mkdir(exist_ok=True)
        (group / "cpu.shares").write_text(str(weight))
        (group / "cgroup.procs").write_text(str(os.getpid()))
    except OSError:
        return None
    return group


def remove_groups(server_pid: int, wait_s: float = 2.0) -> None:
    """The server's groups, once its workers are gone: a worker told to stop may still be
    exiting, so an occupied group is retried for up to `wait_s` (then left, for `remove_stale`)."""
    deadline = time.monotonic() + wait_s
    for group in _groups(f"{GROUP_PREFIX}{server_pid}-*"):
        while True:
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY: a process is still in it
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)


def remove_stale() -> None:
    """Empty groups whose owner no longer runs (a server killed before it could remove its own,
    a Ray actor gone), beside this process (in its own cpu cgroup)."""
    for group in _groups(f"{GROUP_PREFIX}*-*"):
        pid = group.name[len(GROUP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            try:
                group.rmdir()
            except OSError:
                pass  # still occupied, or not ours to remove


def _groups(pattern: str) -> list[Path]:
    found = _own_cpu_cgroup()
    if found is None:
        return []
    mount, own = found
    return sorted((mount / own.lstrip("/")).glob(pattern))
