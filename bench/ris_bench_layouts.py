"""`ris bench`'s isolated layout beside variants of it, under the same mixed workload.

`ris bench` compares isolation with no isolation; this compares layouts of the isolated
configuration with each other, for a change of the machine-built layout (ris.config.defaults)
to be measured before it is made. Each repetition starts the layout as shipped ("isolated":
each lane alone, then all three at once) and every variant (all three at once), in an order
that alternates between repetitions; a variant's ratios are taken to the same repetition's
lanes alone, as `ris bench`'s goals are.

`--variant NAME='{"image": {"cores": [1], "borrow_idle_cores": true}}'` (repeatable): the
machine-built layout with those lanes' fields replaced (tuples for cores are fine as lists).
The key `server_cores` (not a lane) pins every thread of the API process to those cores once it
is up (its workers keep their own bindings): where the API process runs, measured. The key
`image_replica_cores` (`[[0], [1]]` with the image lane's `"replicas": 2`) pins each image
worker to its own cores once it is up: independent pictures, one per core, rather than one
picture's threads, measured.

"isolated" is the machine-built layout as the code under test builds it: since 2026-12-06 that
includes the image lane's `min_cpu_share` (0.1), so a variant `{"image": {"min_cpu_share":
0.1}}` compares it with itself; `{"image": {"min_cpu_share": null}}` is the layout before.

`--variant-alone`: each variant also runs its LLM alone (the lanes alone are otherwise the
shipped layout's only), and its LLM's gap p99 is also given as a multiple of that
(`llm_gap_p99_x_own_alone`), the shipped layout's as a multiple of each variant's
(`llm_gap_p99_x_alone_of_<variant>`): with `{"llm": {"borrow_idle_cores": false}}`, what the
mixed load costs the LLM beside the LLM alone on its own core, lending's gain to the LLM alone
taken out.

Prints, per layout, the median and range over repetitions of the figures `ris bench`'s goals
read: the LLM's gap between tokens p99 and TTS's real-time factor p99 as multiples of alone,
and image denoising steps/s; writes them with every repetition's figures, and the samples
counted as stalls (which lane, how long), to `--out`.

    python bench/ris_bench_layouts.py --variant NAME=JSON [--variant ...] [--repetitions 3]
                                      [--duration 30] [--out bench/results/ris_bench_layouts.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

from ris.benchmark import configs
from ris.benchmark import run as bench_run
from ris.benchmark import summary as bench_summary
from ris.benchmark.workload import STALL_S
from ris.config import Config
from ris.lanes import Lane

SHIPPED = "isolated"
SERVER_CORES = "server_cores"
# Not a lane either: the image lane's replicas (worker processes, by start order) pinned one
# to each listed core set once the service is up, e.g. [[0], [1]] with `"replicas": 2`.
IMAGE_REPLICA_CORES = "image_replica_cores"
# And: every thread of the image workers under SCHED_IDLE once the service is up.
IMAGE_SCHED_IDLE = "image_sched_idle"


def patched(base: Config, lanes: dict[str, dict[str, Any]]) -> Config:
    new = dict(base.lanes)
    for lane, fields in lanes.items():
        if lane in (SERVER_CORES, IMAGE_REPLICA_CORES, IMAGE_SCHED_IDLE):
            continue
        if lane not in new:
            raise SystemExit(f"unknown lane {lane!r}; known: {', '.join(new)}")
        new[Lane(lane)] = new[Lane(lane)].model_copy(
            update={k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        )
    return base.model_copy(update={"lanes": new})


def variant(text: str) -> tuple[str, dict[str, dict[str, Any]]]:
    name, sep, spec = text.partition("=")
    if not sep or not name or name in configs.CONFIGS:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON with a new name, got {text!r}")
    return name, json.loads(spec)


def pin_threads(pid: int, cores: list[int]) -> None:
    """Every thread of `pid` onto `cores` (threads it starts later inherit the creator's set)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), set(cores))
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def image_workers(server_pid: int) -> list[int]:
    """The server's image workers, oldest first: its children above nice 0 (the batch lane's:
    19, or 9 where its share is a nice level; the real-time lanes run at 0)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == server_pid and int(fields[16]) > 0:  # ppid; nice (fields 4, 19)
            pids.append(int(entry))
    return sorted(pids)


def stalled(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The samples `ris bench` counts as stalls (no progress for longer than STALL_S), by lane."""
    return [
        {"lane": lane, **{k: v for k, v in s.items() if k not in ("itl_s",)}}
        for lane, samples in raw["samples"].items()
        for s in samples
        if s.get("max_gap_s", 0.0) > STALL_S
    ]


def figures(rep: dict[str, dict[str, Any]], name: str, own_alone: dict[str, float]) -> dict[str, float]:
    """`own_alone`: the LLM-alone gap p99 of each layout that ran one (--variant-alone)."""
    alone, mixed = rep["alone"], rep[name]
    out = {
        "llm_gap_p99_x_alone": mixed["llm_itl_p99"] / alone["llm_itl_p99"],
        "tts_rtf_p99_x_alone": mixed["tts_rtf_p99"] / alone["tts_rtf_p99"],
        "image_steps_s": mixed["image_steps_s"],
        "stalls": mixed["stalls"],
        "errors": mixed["errors"],
    }
    if name in own_alone:
        out["llm_gap_p99_x_own_alone"] = mixed["llm_itl_p99"] / own_alone[name]
    elif name == SHIPPED:
        for other, p99 in own_alone.items():
            out[f"llm_gap_p99_x_alone_of_{other}"] = mixed["llm_itl_p99"] / p99
    return out


def own_alone(raw_rep: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The variants' LLM-alone gap p99 in one repetition."""
    out = {}
    for name, phases in raw_rep.items():
        if name != SHIPPED and "llm" in phases:
            p99 = bench_summary.phase_figures(phases["llm"])["llm_itl_p99"]
            if p99:
                out[name] = float(p99)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", type=variant, action="append", default=[], required=True)
    p.add_argument("--repetitions", type=bench_run._repetitions, default=3)
    p.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    p.add_argument("--variant-alone", action="store_true", help="each variant's LLM alone too")
    p.add_argument("--rounds", type=bench_run._rounds, default=1, help="as ris bench --rounds")
    p.add_argument("--out", type=Path, default=Path("bench/results/ris_bench_layouts.json"))
    args = p.parse_args()
    variants = dict(args.variant)
    shipped_build = configs.build

    def build(name: str, kind: str, machine: Any = None, tts_model: str | None = None) -> Config:
        base = shipped_build(SHIPPED, kind, machine, tts_model)
        return base if name == SHIPPED else patched(base, variants[name])

    configs.build = build  # ris bench builds each named configuration through this

    class PinnedService(bench_run.ServiceProcess):
        def start(self, *a: Any, **kw: Any) -> Any:
            started = super().start(*a, **kw)
            name = self.config_path.parent.name.rsplit("-", 1)[0]  # "<config>-<repetition>"
            cores = variants.get(name, {}).get(SERVER_CORES)
            if cores is not None and self.proc is not None:
                pin_threads(self.proc.pid, cores)
            per_replica = variants.get(name, {}).get(IMAGE_REPLICA_CORES)
            if per_replica is not None and self.proc is not None:
                workers = image_workers(self.proc.pid)
                if len(workers) != len(per_replica):
                    raise SystemExit(f"{name}: {len(workers)} image workers for {per_replica}")
                for pid, replica_cores in zip(workers, per_replica, strict=True):
                    pin_threads(pid, replica_cores)
            if variants.get(name, {}).get(IMAGE_SCHED_IDLE) and self.proc is not None:
                for pid in image_workers(self.proc.pid):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        try:
                            os.sched_setscheduler(int(tid), os.SCHED_IDLE, os.sched_param(0))
                        except ProcessLookupError:
                            pass  # a thread that ended since the listing
            return started

    bench_run.ServiceProcess = PinnedService  # type: ignore[misc]
    if args.variant_alone:
        shipped_plan = bench_run.plan

        def plan(config_names: list[str], repetitions: int) -> list[bench_run.Step]:
            return [
                s if s.config == SHIPPED else dataclasses.replace(s, phases=("llm", *s.phases))
                for s in shipped_plan(config_names, repetitions)
            ]

        bench_run.plan = plan
    names = [SHIPPED, *variants]
    ns = argparse.Namespace(
        gpu=False, quick=False, duration=args.duration, configs=names, tts_model=None,
        repetitions=args.repetitions, rounds=args.rounds,
    )  # fmt: skip
    result = bench_run.run(ns)
    per_rep = [
        {name: figures(rep, name, own_alone(raw)) for name in names}
        for rep, raw in zip(result["per_repetition"], result["raw"], strict=True)
    ]
    summary: dict[str, dict[str, Any]] = {}
    for name in names:
        summary[name] = {}
        for key in per_rep[0][name]:
            values = [rep[name][key] for rep in per_rep]
            summary[name][key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        line = ", ".join(
            f"{k} {v['median']:.3g} ({v['min']:.3g}-{v['max']:.3g})" for k, v in summary[name].items()
        )
        print(f"{name}: {line}")
    out = {
        "benchmark": "ris_bench_layouts",
        "meta": result["meta"],
        "variants": {SHIPPED: "the machine-built layout as shipped", **{k: v for k, v in variants.items()}},
        "summary": summary,
        "per_repetition": per_rep,
        "ris_bench_figures": result["per_repetition"],
        "stalled_samples": [
            {name: stalled(phases["mixed"]) for name, phases in rep.items() if "mixed" in phases}
            for rep in result["raw"]
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
