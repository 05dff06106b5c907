"""`ris bench`: start each configuration of the service in turn and drive the same workload.

For every repetition and configuration, a fresh `ris serve` is started, warmed up (one request
per lane, not measured), and the load generator process drives its phases: in the isolated
configuration each lane alone, then all three at once ("mixed"); in the others the mixed phase.
Configurations alternate their order between repetitions so drift does not favour one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil

from ris import __version__
from ris.benchmark import configs, report, summary
from ris.benchmark.workload import Workload, preset
from ris.config import Config
from ris.launch import ServiceProcess

ALONE_PHASES = ("llm", "tts", "image")
STARTUP_ESTIMATE_S = {"cpu": 15.0, "gpu": 120.0}


@dataclass(frozen=True)
class Step:
    repetition: int
    config: str
    phases: tuple[str, ...]


def plan(config_names: list[str], repetitions: int) -> list[Step]:
    steps = []
    for rep in range(repetitions):
        order = config_names if rep % 2 == 0 else list(reversed(config_names))
        for name in order:
            phases = (*ALONE_PHASES, "mixed") if name == "isolated" else ("mixed",)
            steps.append(Step(rep, name, phases))
    return steps


def round_order(phases: tuple[str, ...], rounds: int) -> list[tuple[int, str]]:
    """The phases of one service, in rounds: each round runs every phase for its share of the
    duration, odd rounds in reverse order. A phase's rounds are pooled into one (summary.pool),
    so the lanes alone and all lanes at once are measured in turns across the whole run, and
    what the machine does meanwhile (a burst of other work, a slow drift) falls on both rather
    than on whichever phase it happened to meet; the reversal keeps each phase's place in the
    sequence from favouring it (exactly with an even number of rounds; with an odd one the
    first round's order has one round more)."""
    return [
        (k, phase) for k in range(rounds) for phase in (phases if k % 2 == 0 else tuple(reversed(phases)))
    ]


class ProgressBar:
    """One line redrawn in place on a terminal; a line every few seconds otherwise."""

    def __init__(self, total_s: float, out: TextIO = sys.stderr) -> None:
        self.total_s = total_s
        self.done_s = 0.0
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._last_line = 0.0

    def show(self, label: str, extra_s: float = 0.0, detail: str = "") -> None:
        frac = min(1.0, (self.done_s + extra_s) / self.total_s) if self.total_s else 1.0
        elapsed = time.monotonic() - self.started
        left = elapsed / frac - elapsed if frac > 0.02 else None
        bar = "#" * int(frac * 30) + "-" * (30 - int(frac * 30))
        eta = (
            f"~{left / 60:.0f} min left"
            if left is not None and left >= 60
            else (f"~{left:.0f} s left" if left else "")
        )
        line = f"[{bar}] {frac:4.0%}  {label}  {detail}  {eta}"
        if self.tty:
            self.out.write("\r" + line[: shutil.get_terminal_size().columns - 1].ljust(80))
            self.out.flush()
        elif time.monotonic() - self._last_line >= 5.0:
            self._last_line = time.monotonic()
            print(line, file=self.out, flush=True)

    def advance(self, seconds: float) -> None:
        self.done_s += seconds

    def close(self) -> None:
        if self.tty:
            self.out.write("\n")


def warm_up(url: str, w: Workload, lanes: tuple[str, ...] = ALONE_PHASES) -> None:
    """One request per lane before measuring: first calls pay one-off costs (graphs, caches)."""
    with httpx.Client(base_url=url, timeout=600) as c:
        if "llm" in lanes:
            c.post("/api/llm/generate", json={"prompt": "Hello", "max_tokens": 8}).raise_for_status()
        if "tts" in lanes:
            c.post("/api/tts/synthesize", json={"text": "Hello there."}).raise_for_status()
        if "image" not in lanes:
            return
        size = w.image_size
        r = c.post(
            "/api/image/generate", json={"prompt": "warm up", "width": size, "height": size, "steps": 2}
        )
        r.raise_for_status()
        task_id = r.json()["task_id"]
        while c.get(f"/api/tasks/{task_id}").json()["state"] in ("queued", "running"):
            time.sleep(0.1)


def run_loadgen(url: str, lanes: str, w: Workload, out: Path, bar: ProgressBar, label: str) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "ris.benchmark.loadgen",
        "--url", url, "--lanes", lanes, "--workload", json.dumps(w.to_json()), "--out", str(out),
    ]  # fmt: skip
    err_path = out.with_suffix(".stderr")
    with err_path.open("wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                p = json.loads(line)
            except ValueError:
                continue
            d = p["done"]
            t = min(p["t"], w.duration_s)
            done = f"llm {d['llm']} tts {d['tts']} image {d['image']}"
            detail = f"{t:.0f}/{w.duration_s:g} s  {done}  errors {p['errors']}"
            bar.show(label, t, detail)
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"load generator failed ({rc}): {err_path.read_text()[-3000:]}")
    bar.advance(w.duration_s)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def machine_summary() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if shutil.which("nvidia-smi"):
        q = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        )
        gpu = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else psutil.cpu_count()
    mem = psutil.virtual_memory().total / 2**30
    text = f"{cores} cores ({cpu}), {mem:.0f} GiB, " + (f"GPU {gpu}" if gpu else "no GPU")
    return {"summary": text, "cores": cores, "cpu": cpu, "memory_gib": round(mem, 1), "gpu": gpu,
            "python": platform.python_version(), "platform": platform.platform()}  # fmt: skip


def revision() -> str:
    """What was measured: RIS's version, and the git commit when it runs from a checkout
    ("+dirty" with uncommitted changes), so a result file names its code."""
    version = f"ris {__version__}"
    here = Path(__file__).resolve()
    root = here.parents[3]
    # RIS's own checkout (src/ris/benchmark/run.py under it), not a folder it was installed in.
    checkout = here.parents[2].name == "src" and (root / "pyproject.toml").exists()
    if not checkout or not (root / ".git").exists():
        return version

    def git(*argv: str) -> str:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *argv], capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.SubprocessError):  # no git here: the version says enough
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return version
    dirty = "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"{version}, git {commit}{dirty}"


def applied_layout(url: str, cfg: Config) -> dict[str, Any]:
    """Each lane as the service applied it (its /api/stats: its worker's affinity and threads
    as the worker read them, its nice level, the CPU share and how the OS keeps it, cores lent
    or borrowed at that moment): a result file says which layout it measured."""
    with httpx.Client(base_url=url, timeout=30) as c:
        answer = c.get("/api/stats")
        answer.raise_for_status()
        stats = answer.json()["lanes"]
    return {
        lane: {
            "cores": s.get("cores"),
            "affinity": s["worker"].get("cpu_affinity"),
            "threads": s["worker"].get("threads"),
            # As the worker read it; the configured one for a worker not up.
            "nice": cfg.lane(lane).nice if s["worker"].get("nice") is None else s["worker"]["nice"],
            "min_cpu_share": s.get("min_cpu_share"),
            "lent_cores": s.get("lent_cores"),
            "borrowed_cores": s.get("borrowed_cores"),
        }
        for lane, s in stats.items()
        if s.get("enabled")
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    kind = "gpu" if args.gpu else "cpu"
    w = preset(kind, args.quick)
    if args.duration is not None:
        w = replace(w, duration_s=args.duration)
    names = (
        args.configs
        if args.configs is not None
        else (["traditional", "isolated"] if args.quick else list(configs.CONFIGS))
    )
    try:  # fail before starting anything: an unknown name, no GPU, no image extra
        built = {name: configs.build(name, kind, tts_model=args.tts_model) for name in names}
    except ValueError as e:
        raise SystemExit(f"ris bench: {e}") from None
    code = revision()  # now: the code that runs, not what the checkout holds at the end
    steps = plan(names, args.repetitions)
    slice_w = replace(w, duration_s=w.duration_s / args.rounds)
    if args.rounds > 1 and slice_w.duration_s < w.tts_burst_every_s:
        raise SystemExit(
            f"ris bench: --rounds {args.rounds} makes rounds of {slice_w.duration_s:g} s, shorter than "
            f"the {w.tts_burst_every_s:g} s between speech bursts (a round would have none): "
            f"fewer rounds, or --duration {w.tts_burst_every_s * args.rounds:g} or more"
        )
    per_phase = slice_w.duration_s + 2.0
    total = sum(STARTUP_ESTIMATE_S[kind] + per_phase * len(s.phases) * args.rounds for s in steps)
    bar = ProgressBar(total)
    raw: list[dict[str, dict[str, Any]]] = [{} for _ in range(args.repetitions)]
    layouts: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ris-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for step in steps:
            label = f"rep {step.repetition + 1}/{args.repetitions}  {step.config}"
            bar.show(label, 0.0, "starting the service")
            folder = tmp / f"{step.config}-{step.repetition}"
            service = ServiceProcess(folder, configs.as_json(built[step.config], str(folder / "data")))
            service.start(timeout=900)
            try:
                warm_up(service.url, w)
                if step.config not in layouts:
                    layouts[step.config] = applied_layout(service.url, built[step.config])
                bar.advance(STARTUP_ESTIMATE_S[kind])
                measured: dict[str, list[dict[str, Any]]] = {}
                for k, phase in round_order(step.phases, args.rounds):
                    lanes = "llm,tts,image" if phase == "mixed" else phase
                    out = folder / f"{phase}-{k}.json"
                    what = "all lanes" if phase == "mixed" else phase + " alone"
                    if args.rounds > 1:
                        what += f", round {k + 1}/{args.rounds}"
                    measured.setdefault(phase, []).append(
                        run_loadgen(service.url, lanes, slice_w, out, bar, f"{label}: {what}")
                    )
                    bar.advance(per_phase - slice_w.duration_s)
                raw[step.repetition][step.config] = {ph: summary.pool(rs) for ph, rs in measured.items()}
            finally:
                service.stop()
    bar.close()
    result = assemble(raw, names, kind, w, args)
    result["meta"]["layouts"] = layouts
    result["meta"]["revision"] = code
    result["raw"] = raw
    return result


def assemble(
    raw: list[dict[str, dict[str, Any]]], names: list[str], kind: str, w: Workload, args: argparse.Namespace
) -> dict[str, Any]:
    per_rep = []
    for rep in raw:
        figs = {
            "alone": summary.merge_alone(
                {lane: summary.phase_figures(rep["isolated"][lane]) for lane in ALONE_PHASES}
            )
        }
        figs.update({name: summary.phase_figures(rep[name]["mixed"]) for name in names})
        per_rep.append(figs)
    combined = summary.combine(per_rep)
    pooled: dict[str, list[dict[str, Any]]] = {
        "alone": [rep["isolated"][lane] for rep in raw for lane in ALONE_PHASES]
    }
    pooled.update({name: [rep[name]["mixed"] for rep in raw] for name in names})
    return {
        "meta": {
            "kind": kind,
            "quick": args.quick,
            "repetitions": args.repetitions,
            "rounds": args.rounds,
            "configs": names,
            "workload": w.to_json(),
            "machine": machine_summary(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": "ris bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
        },
        "per_repetition": per_rep,
        "combined": combined,
        "goals": summary.goals(kind, combined),
        "distributions": report.distributions(pooled),
    }


def _seconds(text: str) -> float:
    """--duration as a phase's length: each figure is a count per second of it, so 0 (or less)
    ran the whole benchmark and then divided by zero; refused here, before anything starts."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (0 < seconds < math.inf):
        raise argparse.ArgumentTypeError(f"{text!r}: a phase lasts more than 0 seconds")
    return seconds


def _configs(text: str) -> list[str]:
    """--configs as the names it lists, checked before anything starts: an empty value ran the
    whole default benchmark (about 10 minutes), an unknown name said only "must include
    isolated"."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = ", ".join(configs.CONFIGS)
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one configuration: {known}")
    unknown = [n for n in names if n not in configs.CONFIGS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown configuration {', '.join(map(repr, unknown))}; known: {known}"
        )
    if "isolated" not in names:
        raise argparse.ArgumentTypeError("must include isolated (its alone phases are the baseline)")
    return list(dict.fromkeys(names))


def _count(text: str, most: int | None = None) -> int:
    """A count of at least one (and at most `most`), refused as a usage error (exit 2) like
    any other bad argument, not after argparse has accepted it."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1 or (most is not None and n > most):
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1" + (f", at most {most}" if most else ""))
    return n


def _repetitions(text: str) -> int:
    return _count(text)


def _rounds(text: str) -> int:
    return _count(text, most=20)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="short phases, one repetition, two configurations")
    p.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU variant: 7B-shape LLM and SD 1.5-shape images (dummy weights)",
    )
    p.add_argument(
        "--repetitions", type=_repetitions, default=None, help="at least 1; default 3 (1 with --quick)"
    )
    p.add_argument("--duration", type=_seconds, default=None, help="seconds per phase (more than 0)")
    p.add_argument(
        "--rounds",
        type=_rounds,
        default=1,
        help="split each phase into this many rounds taken in turns with the other phases of the "
        "same service, pooled (default 1: each phase at once); the duration is the rounds' total",
    )
    p.add_argument(
        "--tts-model",
        default=None,
        help="the TTS model the lane loads (piper, espeak); default: the default config's (piper)",
    )
    p.add_argument(
        "--configs",
        type=_configs,
        default=None,
        help=f"comma-separated, from {', '.join(configs.CONFIGS)}; isolated among them",
    )
    p.add_argument(
        "--out", default=None, help="folder for ris_bench[_gpu].json/.md/.png (default bench/results)"
    )


def main(args: argparse.Namespace) -> int:
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else 3
    result = run(args)
    out = Path(args.out or "bench/results")
    out.mkdir(parents=True, exist_ok=True)
    stem = "ris_bench_gpu" if args.gpu else "ris_bench"
    if args.quick:
        stem += "_quick"
    # Every request's samples go beside the report, for a second look at any figure; the
    # chart's distributions are drawn from them and not repeated in the report.
    (out / f"{stem}_raw.json").write_text(json.dumps(result.pop("raw")))
    distributions = result.pop("distributions")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    text = report.markdown(result)
    (out / f"{stem}.md").write_text(text)
    title = f"ris bench ({result['meta']['kind']}) — {result['meta']['machine']['summary']}"
    drew = report.chart(distributions, out / f"{stem}.png", title)
    print(text)
    print(f"wrote {out / stem}.json, .md" + (", .png" if drew else " (no chart: pip install 'ris[bench]')"))
    return 0
