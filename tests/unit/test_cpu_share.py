"""The batch lane's minimum CPU share: the weight a share needs, the nice level that gives it,
and the mechanism applied to a real child process, read back from the OS."""

from __future__ import annotations

import multiprocessing as mp
import os
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


def _child(server_pid: int, out: mp.Queue[CpuShareInfo], read: Any) -> None:
    os.nice(19)
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
        else:
            assert info.mechanism == "nice"
            assert os.getpriority(os.PRIO_PROCESS, proc.pid or 0) == info.nice <= 9
    finally:
        read.set()
        proc.join(30)
        cpu_share.remove_groups(os.getpid())
    assert not list(Path(info.cgroup).parent.glob(f"ris-{os.getpid()}-*")) if info.cgroup else True
