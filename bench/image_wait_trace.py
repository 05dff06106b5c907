"""What the image lane's thread waits for under `ris bench`'s mixed load, event by event: the
kernel's scheduler trace (`perf record` of sched_switch, sched_wakeup and sched_migrate_task on
every core) over a few seconds of the "all lanes" phase, replayed to attribute each moment:

  running                the image worker's busiest thread is on a core
  waiting                it is runnable, on a run queue, and something else holds that core
  waiting, a core idle   ... while another core runs nothing: time the scheduler wasted
  sleeping               it waits for nothing of the CPU's (its inbox, a file, a lock)

and, while it waits, who holds its core (by the names the workers give themselves: `ris-llm`,
`ris-tts`; the server and the load generator are `python`/`ris`). Issue 26's images goal asks
whether the lane could get more of the machine without taking from the real-time lanes: the
"core idle" share is the part it could.

    ris bench --configs isolated --repetitions 1 > /tmp/bench.log &
    python bench/image_wait_trace.py --log /tmp/bench.log --out image_wait_trace.json

Needs `perf` and the right to trace (root, or kernel.perf_event_paranoid <= -1). Tracing costs
the traced processes something (more context switches recorded than usual): the shares are
for attribution; the lanes' latencies of a traced run are not results.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from batch_cpu_probe import phase

EVENT = re.compile(r"^\s*.+?\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)$")
EVENTS = ("sched:sched_switch", "sched:sched_wakeup", "sched:sched_wakeup_new", "sched:sched_migrate_task")


def image_thread() -> int | None:
    """The tid of the image worker's busiest thread (the one that denoises)."""
    best: tuple[int, int] | None = None
    for pid in Path("/proc").iterdir():
        try:
            if not pid.name.isdigit() or (pid / "comm").read_text().strip() != "ris-image":
                continue
            for task in (pid / "task").iterdir():
                ticks = sum(int(x) for x in (task / "stat").read_text().rsplit(")", 1)[1].split()[11:13])
                if best is None or ticks > best[1]:
                    best = (int(task.name), ticks)
        except OSError:
            continue
    return best[0] if best else None


def replay(lines: list[str], tid: int, cores: set[int]) -> dict[str, Any]:
    """Attribute the trace's time (see the module docstring) over `cores`, from the moment
    each of them has switched once (before that, what it runs is not known)."""
    on_core: dict[int, int | None] = dict.fromkeys(cores)  # the tid each core runs (0: idle)
    names: dict[int, str] = {0: "idle"}
    state, where = "sleeping", 0
    shares: dict[str, float] = defaultdict(float)
    holders: dict[str, float] = defaultdict(float)
    idle_cores: dict[int, float] = defaultdict(float)
    while_idle: dict[str, float] = defaultdict(float)  # the image thread's state while a core idles
    last: float | None = None
    for line in lines:
        m = EVENT.match(line)
        if not m:
            continue
        cpu, t, event, rest = int(m.group(2)), float(m.group(3)), m.group(4), m.group(5)
        if last is not None and None not in on_core.values():
            dt = t - last
            idle = [c for c, running in on_core.items() if running == 0]
            idle_cores[len(idle)] += dt
            if idle and state == "waiting":
                elsewhere = any(c != where for c in idle)
                while_idle["waiting, another core idle" if elsewhere else "waking on the idle core"] += dt
            elif idle:
                while_idle[state] += dt
            if state == "waiting":
                key = "waiting, a core idle" if any(c != where for c in idle) else "waiting"
                shares[key] += dt
                holder = on_core[where]
                holders[names.get(holder, str(holder)) if holder is not None else "?"] += dt
            else:
                shares[state] += dt
        last = t
        if event == "sched_switch":
            f = re.search(r"prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)", rest)
            if f is None:
                continue
            prev, prev_state, next_name, nxt = int(f.group(1)), f.group(2), f.group(3), int(f.group(4))
            names[nxt] = next_name if nxt else "idle"
            on_core[cpu] = nxt
            if prev == tid:
                state, where = ("waiting" if prev_state.startswith("R") else "sleeping"), cpu
            if nxt == tid:
                state, where = "running", cpu
        elif event.startswith("sched_wakeup"):
            f = re.search(r"pid=(\d+) .*target_cpu=(\d+)", rest)
            if f and int(f.group(1)) == tid and state == "sleeping":
                state, where = "waiting", int(f.group(2))
        elif event == "sched_migrate_task":
            f = re.search(r"pid=(\d+) .*dest_cpu=(\d+)", rest)
            if f and int(f.group(1)) == tid and state == "waiting":
                where = int(f.group(2))
    total = sum(shares.values())
    return {
        "seconds": round(total, 2),
        "image_thread": {k: round(v / total, 3) for k, v in sorted(shares.items())} if total else {},
        "holding_its_core_while_it_waits": {
            k: round(v / total, 3)
            for k, v in sorted(holders.items(), key=lambda kv: -kv[1])[:8]
            if total and v / total >= 0.001
        },
        # Of the moments a core ran nothing: was the image thread running elsewhere already
        # (only a second thread could have used the core), waiting behind another core's task
        # (the scheduler's loss), being woken onto the idle core, or asleep?
        "image_thread_while_a_core_idles": {
            k: round(v / sum(while_idle.values()), 3) for k, v in sorted(while_idle.items())
        }
        if while_idle
        else {},
        "time_with_n_cores_idle": {str(n): round(v / total, 3) for n, v in sorted(idle_cores.items())}
        if total
        else {},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, required=True, help="the benchmark's progress output")
    p.add_argument("--phase", default="all lanes", help="trace during this phase (first seen)")
    p.add_argument("--after", type=float, default=8.0, help="seconds into the phase to start")
    p.add_argument("--seconds", type=float, default=12.0, help="how long to trace")
    p.add_argument("--out", type=Path, default=Path("image_wait_trace.json"))
    args = p.parse_args()
    while not (phase(args.log) or "").endswith(args.phase):
        time.sleep(0.5)
    label = phase(args.log)
    time.sleep(args.after)
    tid = image_thread()
    if tid is None:
        raise SystemExit("no ris-image worker found (an older RIS, whose workers are all `python`?)")
    data = args.out.with_suffix(".perf.data")
    record = ["perf", "record", "-q", "-a", "-o", str(data)]
    for e in EVENTS:
        record += ["-e", e]
    subprocess.run([*record, "--", "sleep", str(args.seconds)], check=True, capture_output=True)
    text = subprocess.run(
        ["perf", "script", "-i", str(data)], check=True, capture_output=True, text=True
    ).stdout
    data.unlink()
    lines = text.splitlines()
    # The cores the trace saw: an offline one, or one outside this cpuset, never switches, and
    # counted it would leave every moment unattributed.
    cores = {int(m.group(2)) for m in map(EVENT.match, lines) if m}
    result = {
        "benchmark": "image_wait_trace",
        "phase": label,
        "image_tid": tid,
        **replay(lines, tid, cores),
    }
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
