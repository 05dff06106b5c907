"""Dispatch cost of the pure scheduler: microseconds per task (submit + dispatch + finish) and
tasks/s, at queue depths 10, 1,000 and 100,000. Goal: <= 50 us per task.

    python bench/scheduler_overhead.py [--out bench/results/scheduler_overhead.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

from ris.lanes import Lane
from ris.scheduler import LanePolicy, Scheduler, TaskSpec, TaskState


def measure(depth: int, ops: int) -> float:
    """Seconds per task while the queue holds `depth` tasks: one submit, one dispatch, one finish."""
    ids = (f"t{i}" for i in itertools.count())
    sched = Scheduler(
        {Lane.LLM: LanePolicy(max_queue=depth + 10, keep_finished=1000)},
        time.monotonic,
        new_id=lambda: next(ids),
    )
    for i in range(depth):
        sched.submit(TaskSpec(lane=Lane.LLM, priority=i % 5))
    sched.set_slots(Lane.LLM, 1)
    t0 = time.perf_counter()
    for i in range(ops):
        sched.submit(TaskSpec(lane=Lane.LLM, priority=i % 5))
        (task,) = sched.dispatch()
        sched.finish(task.id, TaskState.SUCCEEDED)
    return (time.perf_counter() - t0) / ops


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ops", type=int, default=20_000)
    p.add_argument("--out", default="bench/results/scheduler_overhead.json")
    args = p.parse_args()
    rows = []
    for depth in (10, 1_000, 100_000):
        runs = [measure(depth, args.ops) for _ in range(args.repeats)]
        us = [1e6 * r for r in runs]
        rows.append(
            {
                "depth": depth,
                "us_per_task_p50": statistics.median(us),
                "us_min": min(us),
                "us_max": max(us),
                "tasks_per_s": 1e6 / statistics.median(us),
            }
        )
        print(
            f"depth {depth:>7}: {rows[-1]['us_per_task_p50']:.1f} us/task "
            f"(min {min(us):.1f}, max {max(us):.1f}), {rows[-1]['tasks_per_s']:,.0f} tasks/s",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": platform.platform(), "ops": args.ops, "repeats": args.repeats, "rows": rows}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
