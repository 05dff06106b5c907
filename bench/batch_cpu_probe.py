"""Where the batch lane's time goes while a benchmark runs: beside `ris bench` or
`bench/ris_bench_layouts.py`, reading their progress output to know the phase.

Every second it reads the machine's idle time per core (/proc/stat, iowait counted as idle)
and, for every batch worker (a process above nice 0 or under SCHED_IDLE: the image lane's
workers, at nice 19, or 9 where its share is a nice level), each thread's time running and
waiting on a run queue (/proc/<pid>/task/<tid>/schedstat). At the end, per phase: the cores'
idle share and the busiest batch thread's running / run-queue wait / sleeping shares. Totals
over a phase, not moments: a thread that waits half the time beside a core idle a quarter of
it has not been shown to wait while that core idles (issue 26: 55% and 0.25-0.31 cores at nice
19; 52% and 0.26 with the image lane's share and SCHED_IDLE).

    ris bench --configs isolated --repetitions 1 > /tmp/bench.log &
    python bench/batch_cpu_probe.py --log /tmp/bench.log --until-exit $!

It also reads each process's CPU time, summed by role (the lane workers by the names they give
themselves, `ris-llm`, `ris-tts`, `ris-image`; the server, their parent; the benchmark's load
generator; everything else): per phase, how many cores each took. Beside the lanes-alone
phases this is the accounting behind the image lane's goal: what the real-time lanes use alone,
and what is left for images under the mixed load without taking from them.

`--soaker` runs, beside the benchmark, a process that only spins, unpinned, under SCHED_IDLE
(it runs only where nothing else wants a core) and reports per phase how many cores it got:
whether the idle time the cores show could be taken at all by a task that is always runnable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

PHASE = re.compile(r"rep (\d+)/\d+\s+(\S+?): ([a-z ]+?)\s+(\d+)/(\d+) s")


def phase(log: Path) -> str | None:
    """The phase the benchmark's last progress line names ("1 isolated all lanes"), None
    between phases and while one drains after its window."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - 400))
            found = PHASE.findall(fh.read().decode(errors="replace"))
    except OSError:
        return None
    if not found:
        return None
    rep, config, name, at, window = found[-1]
    # The bar stays at "30/30 s" while the phase's requests drain: that is not the load.
    return f"{rep} {config} {name}" if int(at) < int(window) else None


def core_times() -> list[tuple[int, int]]:
    """(total, idle + iowait) jiffies per core."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines()[1:]:
        if not re.match(r"cpu\d", line):
            break
        v = [int(x) for x in line.split()[1:]]
        out.append((sum(v), v[3] + v[4]))
    return out


SOAKER = "import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n"


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def role_cpu_seconds(skip: int | None = None) -> dict[str, tuple[str, float]]:
    """'pid' -> (role, CPU seconds ever: user + system) of every process."""
    by_pid: dict[int, tuple[str, int, float]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if skip is not None and int(pid) == skip:
            continue
        try:
            head, tail = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
            fields = tail.split()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        name = head.split("(", 1)[1]
        if name.startswith("ris-"):
            role = name
        elif b"ris.benchmark.loadgen" in cmd:
            role = "load generator"
        else:
            role = ""
        ticks = int(fields[11]) + int(fields[12])
        by_pid[int(pid)] = (role, int(fields[1]), ticks / os.sysconf("SC_CLK_TCK"))
    servers = {ppid for role, ppid, _ in by_pid.values() if role.startswith("ris-")}
    return {
        str(pid): (role or ("server" if pid in servers else "other"), seconds)
        for pid, (role, _, seconds) in by_pid.items()
    }


def batch_threads(skip: int | None = None) -> dict[str, tuple[int, int]]:
    """'pid/tid' -> (ns running, ns waiting on a run queue) of every batch worker's threads
    (but `skip`'s, the soaker)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if skip is not None and int(pid) == skip:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[16]) <= 0 and os.sched_getscheduler(int(pid)) != os.SCHED_IDLE:
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                run, wait, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
                found[f"{pid}/{tid}"] = (int(run), int(wait))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return found


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase: the cores' idle share over the phase, and the busiest batch thread's shares of
    the time it was seen (sample to sample: a phase's label stays up while its service drains
    and stops, and a service's workers are new in each phase)."""
    by_phase: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        if s["phase"]:
            by_phase[s["phase"]].append(s)
    out = {}
    for name, rows in by_phase.items():
        rows = rows[2:]  # the phase's start-up
        if len(rows) < 3:
            continue
        first, last = rows[0], rows[-1]
        idle = [
            (last["cores"][c][1] - first["cores"][c][1]) / max(1, last["cores"][c][0] - first["cores"][c][0])
            for c in range(len(first["cores"]))
        ]
        seen: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # run, wait, wall (ns)
        for a, b in zip(rows, rows[1:], strict=False):
            for key, (run, wait) in b["threads"].items():
                if key in a["threads"]:
                    acc = seen[key]
                    acc[0] += run - a["threads"][key][0]
                    acc[1] += wait - a["threads"][key][1]
                    acc[2] += (b["t"] - a["t"]) * 1e9
        entry: dict[str, Any] = {
            "seconds": round(last["t"] - first["t"], 1),
            "idle_per_core": [round(x, 3) for x in idle],
        }
        # Sample to sample, processes seen in both: one that ends takes its total with it.
        used: dict[str, float] = defaultdict(float)
        for a, b in zip(rows, rows[1:], strict=False):
            for pid, (role, seconds) in b["roles"].items():
                if pid in a["roles"]:
                    used[role] += seconds - a["roles"][pid][1]
        wall = last["t"] - first["t"]
        entry["cores_by_role"] = {role: round(x / wall, 3) for role, x in sorted(used.items())}
        if first.get("soaker_s") is not None and last.get("soaker_s") is not None:
            spun = last["soaker_s"] - first["soaker_s"]
            entry["soaker_cores"] = round(spun / (last["t"] - first["t"]), 3)
        if seen:
            key, (run, wait, wall) = max(seen.items(), key=lambda kv: kv[1][0] + kv[1][1])
            entry["batch_thread"] = {
                "thread": key,
                "seen_s": round(wall / 1e9, 1),
                "running": round(run / wall, 3),
                "run_queue_wait": round(wait / wall, 3),
                "sleeping": round(1 - (run + wait) / wall, 3),
            }
        out[name] = entry
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, required=True, help="the benchmark's progress output")
    p.add_argument("--until-exit", type=int, default=None, help="stop when this pid exits")
    p.add_argument("--out", type=Path, default=Path("batch_cpu_probe.json"))
    p.add_argument("--soaker", action="store_true", help="spin a SCHED_IDLE process beside it")
    args = p.parse_args()
    samples: list[dict[str, Any]] = []
    soaker = subprocess.Popen([sys.executable, "-c", SOAKER]) if args.soaker else None
    try:
        while args.until_exit is None or Path(f"/proc/{args.until_exit}").exists():
            samples.append(
                {
                    "t": time.monotonic(),
                    "phase": phase(args.log),
                    "cores": core_times(),
                    "threads": batch_threads(skip=soaker.pid if soaker else None),
                    "soaker_s": cpu_seconds(soaker.pid) if soaker else None,
                    "roles": role_cpu_seconds(skip=soaker.pid if soaker else None),
                }
            )
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if soaker is not None:
            soaker.kill()
    summary = summarise(samples)
    for name, entry in summary.items():
        print(name, json.dumps(entry))
    args.out.write_text(json.dumps({"benchmark": "batch_cpu_probe", "phases": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
