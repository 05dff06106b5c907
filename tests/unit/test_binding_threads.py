"""apply_binding binds every thread of the process, not only the main one: a Ray actor binds
from its serving thread beside Ray's own, and its pools are that thread's children. Read back
from the OS in a spawned child, as a worker is."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux threads")


def _bind_from_a_thread(with_nice: bool) -> dict[str, tuple[tuple[int, ...], int]]:
    """Bind as a Ray actor does: from a thread that is not the main one; report each thread's
    cores and nice, and those of a thread started after the binding (a library's pool)."""
    from ris.runtime.binding import Binding, apply_binding

    seen: dict[str, tuple[tuple[int, ...], int]] = {}

    def read(name: str) -> None:
        tid = threading.get_native_id()
        seen[name] = (tuple(sorted(os.sched_getaffinity(tid))), os.getpriority(os.PRIO_PROCESS, tid))

    def serve() -> None:
        apply_binding(Binding(cores=(0,), threads=1, nice=19, gpu=None), with_nice=with_nice)
        read("serving")
        pool = threading.Thread(target=read, args=("pool",))
        pool.start()
        pool.join()

    serving = threading.Thread(target=serve)
    serving.start()
    serving.join()
    read("main")
    return seen


def test_every_thread_is_pinned_and_reniced_and_the_nice_can_be_left_to_the_share() -> None:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        bound = pool.apply(_bind_from_a_thread, (True,))
    with ctx.Pool(1) as pool:
        unniced = pool.apply(_bind_from_a_thread, (False,))
    assert bound == {name: ((0,), 19) for name in ("serving", "pool", "main")}, bound
    parent = os.getpriority(os.PRIO_PROCESS, 0)
    assert unniced == {name: ((0,), parent) for name in ("serving", "pool", "main")}, unniced


def _oom_score_adj_after(adj: int, inherited: int = 0) -> int:
    from ris.runtime.binding import Binding, apply_binding

    if inherited:  # as Ray starts its workers (worker_oom_score_adjustment 1000)
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(inherited))
    apply_binding(Binding(cores=None, threads=1, nice=0, gpu=None, oom_score_adj=adj))
    with open("/proc/self/oom_score_adj") as f:
        return int(f.read())


def test_a_batch_lanes_worker_is_the_oom_killers_first_choice() -> None:
    """With the machine out of memory before any lane's ceiling (their shares add up to more
    than it has), the kernel killed an idle LLM worker, the biggest, not the growing image one."""
    from ris.config import Config
    from ris.config.load import with_lane_defaults
    from ris.runtime.binding import BATCH_OOM_SCORE_ADJ
    from ris.runtime.specs import worker_spec

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_oom_score_adj_after, (BATCH_OOM_SCORE_ADJ,)) == BATCH_OOM_SCORE_ADJ
    with ctx.Pool(1) as pool:  # never lowered: under Ray it spared the image actor first
        assert pool.apply(_oom_score_adj_after, (BATCH_OOM_SCORE_ADJ, 1000)) == 1000
    lanes = {"lanes": {"llm": {"enabled": True}, "image": {"enabled": True}}}
    config = Config.model_validate(with_lane_defaults(lanes))
    assert worker_spec(config, "image").binding.oom_score_adj == BATCH_OOM_SCORE_ADJ
    assert worker_spec(config, "llm").binding.oom_score_adj == 0
