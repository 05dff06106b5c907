"""What each way of ranking the batch lane below the real-time lanes buys it under saturation:
nice 19 (the lane's old setting), SCHED_IDLE, nice 9 (min_cpu_share 0.1 where no cgroup can be
made) and a cpu cgroup with cpu.shares 114 (min_cpu_share 0.1 on cgroup v1, this machine).

Two nice-0 spinners stand for the LLM and TTS lanes, one pinned to each of cores 0 and 1
(both real-time lanes saturated), and a third spinner stands for the image worker on both
cores under the mechanism measured. Each run lasts `--seconds`; the mechanisms take turns,
rotating which goes first each round. Reported per mechanism: the batch spinner's CPU seconds
per wall second (of one core), and its CPU time over a real-time spinner's (the "share" the
kernel gave it against one nice-0 task); median and range over the rounds.

    python bench/cpu_share_mechanisms.py [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MECHANISMS = ("nice 19", "SCHED_IDLE", "nice 9", "cgroup cpu.shares 114")


def spin() -> None:
    while True:
        pass


def start(cores: set[int], setup: Any = None) -> int:
    pid = os.fork()
    if pid == 0:  # the child: bind, rank, spin until killed
        os.sched_setaffinity(0, cores)
        if setup is not None:
            setup()
        spin()
    return pid


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup_for(mechanism: str, group: Path) -> Any:
    def nice(n: int) -> None:
        os.setpriority(os.PRIO_PROCESS, 0, n)

    if mechanism == "nice 19":
        return lambda: nice(19)
    if mechanism == "nice 9":
        return lambda: nice(9)
    if mechanism == "SCHED_IDLE":
        return lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def cgroup() -> None:
        nice(19)  # as the image lane keeps its nice: inside its own group it ranks nobody
        (group / "cgroup.procs").write_text(str(os.getpid()))

    return cgroup


def run(mechanism: str, seconds: float, group: Path) -> dict[str, float]:
    rt = [start({0}), start({1})]
    batch = start({0, 1}, setup_for(mechanism, group))
    time.sleep(0.5)  # settle
    before = [cpu_seconds(p) for p in (*rt, batch)]
    t0 = time.monotonic()
    time.sleep(seconds)
    after = [cpu_seconds(p) for p in (*rt, batch)]
    wall = time.monotonic() - t0
    for p in (*rt, batch):
        os.kill(p, 9)
        os.waitpid(p, 0)
    used = [a - b for a, b in zip(after, before, strict=True)]
    rt_mean = (used[0] + used[1]) / 2
    return {"batch_cpu_per_s": used[2] / wall, "batch_vs_realtime": used[2] / rt_mean if rt_mean else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_share_mechanisms.json")
    args = ap.parse_args()
    group = Path(f"/sys/fs/cgroup/cpu/ris-bench-{os.getpid()}")
    group.mkdir()
    (group / "cpu.shares").write_text("114")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MECHANISMS}
    try:
        for r in range(args.rounds):
            order = MECHANISMS[r % len(MECHANISMS) :] + MECHANISMS[: r % len(MECHANISMS)]
            for mech in order:
                rows[mech].append(run(mech, args.seconds, group))
            shares = ", ".join(f"{m} {rows[m][-1]['batch_vs_realtime']:.3f}" for m in MECHANISMS)
            print(f"round {r}: {shares}", flush=True)
    finally:
        time.sleep(0.2)
        group.rmdir()
    summary = {}
    for mech, xs in rows.items():
        share = [x["batch_vs_realtime"] for x in xs]
        per_s = [x["batch_cpu_per_s"] for x in xs]
        summary[mech] = {
            "batch_vs_realtime_median": statistics.median(share),
            "batch_vs_realtime_range": [min(share), max(share)],
            "batch_cpu_per_s_median": statistics.median(per_s),
            "batch_cpu_per_s_range": [min(per_s), max(per_s)],
        }
        print(
            f"{mech:24s} batch/real-time CPU {summary[mech]['batch_vs_realtime_median']:.3f} "
            f"(range {min(share):.3f}-{max(share):.3f}), {summary[mech]['batch_cpu_per_s_median']:.3f} core"
        )
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "the batch lane's CPU under real-time saturation, per mechanism (issue 26)",
                "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                "cgroup v1, shared with other engineers' test runs",
                "load_average_at_end": os.getloadavg(),
                "seconds_per_run": args.seconds,
                "rounds": args.rounds,
                "summary": summary,
                "runs": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
