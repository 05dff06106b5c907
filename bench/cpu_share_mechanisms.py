"""What each way of ranking the batch lane below the real-time lanes buys it under saturation:
nice 19 (the lane's old setting), SCHED_IDLE, nice 9 (min_cpu_share 0.1 where no cgroup can be
made), a cpu cgroup with cpu.shares 114 (min_cpu_share 0.1 on cgroup v1, this machine), and
that group with SCHED_IDLE inside (what the worker sets now: ris.runtime.cpu_share).

Two nice-0 spinners stand for the LLM and TTS lanes, one pinned to each of cores 0 and 1
(both real-time lanes saturated), and a third spinner stands for the image worker on both
cores under the mechanism measured. Each run lasts `--seconds`; the mechanisms take turns,
rotating which goes first each round. Reported per mechanism: the batch spinner's CPU seconds
per wall second (of one core), and its CPU time over a real-time spinner's (the "share" the
kernel gave it against one nice-0 task); median and range over the rounds.

`--load bursty`: the real-time spinners work `--burst-ms` and sleep as long, each at its own
pace (half of each core idle, at moments that do not line up), the load of a lane serving
requests rather than a saturated one. What counts there is how much of the idle time the one
batch thread finds: it can run on one core at a time, and when a real-time task wakes on its
core it must move to the other core if that one is idle, at once, or lose the time.

    python bench/cpu_share_mechanisms.py [--rounds 3] [--seconds 5] [--load bursty]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MECHANISMS = ("nice 19", "SCHED_IDLE", "nice 9", "cgroup cpu.shares 114", "cgroup 114, SCHED_IDLE inside")


def spin() -> None:
    while True:
        pass


def bursts(burst_s: float, seed: int) -> None:
    """Work `burst_s`, sleep about as long (jittered, so the two cores' bursts drift apart)."""
    rng = random.Random(seed)
    while True:
        end = time.perf_counter() + burst_s
        while time.perf_counter() < end:
            pass
        time.sleep(burst_s * rng.uniform(0.5, 1.5))


def start(cores: set[int], setup: Any = None, work: Any = spin) -> int:
    pid = os.fork()
    if pid == 0:  # the child: bind, rank, work until killed
        os.sched_setaffinity(0, cores)
        if setup is not None:
            setup()
        work()
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

    def idle() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    if mechanism == "SCHED_IDLE":
        return idle

    def cgroup() -> None:
        nice(19)  # as the image lane keeps its nice: inside its own group it ranks nobody
        (group / "cgroup.procs").write_text(str(os.getpid()))
        if "SCHED_IDLE" in mechanism:
            idle()

    return cgroup


def run(mechanism: str, seconds: float, group: Path, burst_s: float | None = None) -> dict[str, float]:
    if burst_s is None:
        rt = [start({0}), start({1})]
    else:
        rt = [start({c}, work=lambda c=c: bursts(burst_s, c)) for c in (0, 1)]
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


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--load", choices=("saturated", "bursty"), default="saturated")
    ap.add_argument("--burst-ms", type=float, default=10.0, help="--load bursty: each burst's length")
    ap.add_argument(
        "--out", type=Path, default=None, help="default bench/results/cpu_share_mechanisms[_bursty].json"
    )
    args = ap.parse_args()
    burst_s = args.burst_ms / 1000 if args.load == "bursty" else None
    suffix = "" if args.load == "saturated" else "_bursty"
    out = args.out or ROOT / "bench" / "results" / f"cpu_share_mechanisms{suffix}.json"
    group = Path(f"/sys/fs/cgroup/cpu/ris-bench-{os.getpid()}")
    group.mkdir()
    (group / "cpu.shares").write_text("114")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MECHANISMS}
    try:
        for r in range(args.rounds):
            order = MECHANISMS[r % len(MECHANISMS) :] + MECHANISMS[: r % len(MECHANISMS)]
            for mech in order:
                rows[mech].append(run(mech, args.seconds, group, burst_s))
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
    out.write_text(
        json.dumps(
            {
                "benchmark": f"the batch lane's CPU under a {args.load} real-time load, by mechanism",
                "machine": f"{os.cpu_count()} cores, {cpu_model()}, cgroup v1",
                "load_average_at_end": os.getloadavg(),
                "seconds_per_run": args.seconds,
                "load": args.load,
                "burst_ms": args.burst_ms if burst_s is not None else None,
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
