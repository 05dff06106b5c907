"""`bench/llm_concurrency.py --as-shipped`: both servers as their users run them (issue 26).

llama-server at its defaults: `-m MODEL --host 127.0.0.1 --port P`, nothing else (127.0.0.1 is
its default host anyway; the port is a free one so that nothing else on the machine collides).
No taskset: it sees both cores and picks its own threads, slots, context and flash attention;
what it picked goes into the results, from its /props and its start-up log (threads, slots)
and, for what its default log level does not print (flash attention's 'auto' resolved, n_ctx,
the KV buffer), from the log of a separate short start with only `-lv 4` (log verbosity) added,
stopped before the measured one starts.

RIS with the repository's config.json as it is, but for `data_dir` (a temporary folder) and
`server.port` (a free one): the TTS and image lanes stay enabled (they load their models and
stay idle), so the LLM lane on core 0 borrows the idle TTS core 1 as `borrow_idle_cores` says.

The client is not pinned either: both servers and the load generator see the whole machine,
as on a user's box; the client costs both servers alike, within a repeat.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from llm_concurrency import (  # type: ignore[import-not-found]
    LLAMA,
    RIS,
    ROOT,
    Target,
    burst,
    burst_messages,
    model_path,
    stop_process,
    wait_http_ok,
)

from ris.launch import ServiceProcess, free_port

# What llama-server says at start-up about the settings it chose (kept verbatim in the results).
STARTUP_LINES = re.compile(
    r"system_info: n_threads|threadpool init|n_parallel is set|n_slots|llama_context: n_ctx +=|"
    r"flash_attn +=|Flash Attention|n_u?batch +=|KV buffer size|compute buffer size"
)


def _portable(arg: str) -> str:
    """A command-line argument without this machine's paths: one inside the repository
    relative to it, one inside the Python environment relative to its prefix (<venv> or <prefix>)."""
    if "/" not in arg:
        return arg
    path = Path(arg)
    env = "<venv>" if sys.prefix != sys.base_prefix else "<prefix>"
    for base, label in ((Path(sys.prefix), env), (Path(__file__).resolve().parents[1], "")):
        try:
            rel = path.resolve().relative_to(base.resolve())
        except ValueError:
            continue
        return f"{label}/{rel}" if label else str(rel)
    return arg


def llama_server_defaults_command(binary: Path, port: int) -> list[str]:
    return [str(binary), "-m", str(model_path()), "--host", "127.0.0.1", "--port", str(port)]


def startup_lines(log_path: Path) -> list[str]:
    lines = log_path.read_text(errors="replace").splitlines()
    return [x.strip() for x in lines if STARTUP_LINES.search(x)]


def verbose_startup(binary: Path, folder: Path) -> list[str]:
    """The start-up lines of the same command with `-lv 4` added, started and stopped at once."""
    log_path = folder / "llama-server-lv4.log"
    with log_path.open("ab") as out:
        cmd = [*llama_server_defaults_command(binary, free_port()), "-lv", "4"]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}/health", proc, log_path)
    finally:
        stop_process(proc)
    return startup_lines(log_path)


@contextmanager
def llama_server_at_defaults(binary: Path, folder: Path, meta: dict[str, Any]) -> Iterator[Target]:
    """llama-server as its users start it; `meta` gets its command line and what it chose."""
    verbose = verbose_startup(binary, folder)
    port = free_port()
    log_path = folder / "llama-server.log"
    cmd = llama_server_defaults_command(binary, port)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health", proc, log_path)
        props = httpx.get(f"{url}/props", timeout=10).json()
        gen = props.get("default_generation_settings") or {}
        lines = startup_lines(log_path)
        meta["llama_server"] = {
            # Paths as the repository and the environment name them, not this machine's.
            "command": [_portable(a) for a in cmd],
            "pinned": False,
            "props": {
                "total_slots": props.get("total_slots"),
                "n_ctx_per_slot": gen.get("n_ctx"),
                "build_info": props.get("build_info"),
            },
            "startup_log": lines,
            "startup_log_lv4": verbose,
            **parse_startup(lines + verbose),
        }
        chose = {k: v for k, v in meta["llama_server"].items() if not k.startswith(("startup", "command"))}
        print(f"llama-server at its defaults chose: {json.dumps(chose)}", flush=True)
        yield Target(LLAMA, url, "smollm2")
    finally:
        stop_process(proc)


def parse_startup(lines: list[str]) -> dict[str, Any]:
    """Threads, slots, context and flash attention from the start-up lines (None: not found)."""
    text = "\n".join(lines)

    def find(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1) if m else None

    def number(pattern: str) -> int | None:
        return int(x) if (x := find(pattern)) else None

    fa = find(r"flash_attn += (\w+)")  # the setting: auto unless -fa says otherwise
    if fa == "auto":
        fa = "auto -> " + (find(r"Flash Attention (enabled|not supported)") or "?")
    return {
        "threads": number(r"n_threads = (\d+)"),
        "threads_batch": number(r"n_threads_batch = (\d+)"),
        "slots": number(r"n_slots = (\d+)"),
        "n_ctx": number(r"llama_context: n_ctx += (\d+)"),
        "n_ctx_slot": number(r"n_ctx_slot = (\d+)"),
        "kv_unified": find(r"kv_unified = '(\w+)'"),
        "kv_buffer": find(r"KV buffer size = +([\d.]+ MiB)"),
        "flash_attn": fa,
    }


def shipped_config(folder: Path, commit: str | None) -> tuple[dict[str, Any], list[str]]:
    """config.json of the working tree (or of `commit`), and what was changed to run it here."""
    if commit is None:
        text = (ROOT / "config.json").read_text()
    else:
        show = ["git", "-C", str(ROOT), "show", f"{commit}:config.json"]
        text = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    cfg: dict[str, Any] = json.loads(text)
    cfg["data_dir"] = str(folder / "data")
    cfg.setdefault("server", {})["port"] = 0  # ServiceProcess picks a free one
    return cfg, ["data_dir: a temporary folder", "server.port: a free port (config.json: 8080)"]


@contextmanager
def ris_as_shipped(
    folder: Path, env: dict[str, str], commit: str | None, meta: dict[str, Any]
) -> Iterator[Target]:
    """RIS from config.json, every lane it enables; `meta` gets the config's LLM lane, what
    /api/models says of the model (parallel, KV memory) and the lanes' states."""
    cfg, changes = shipped_config(folder, commit)
    svc = ServiceProcess(folder, cfg)
    svc.start(timeout=600, env=env)
    try:
        models = httpx.get(f"{svc.url}/api/models", timeout=10).json()
        meta["ris"] = {
            "config": "config.json" + (f" at {commit}" if commit else " (working tree)"),
            "changed": changes,
            "lanes_enabled": sorted(svc.stats()),
            "llm_lane": cfg["lanes"]["llm"] | {"models": sorted(cfg["lanes"]["llm"]["models"])},
            "llm_models": llm_models(models),
            "pid": svc.proc.pid if svc.proc else None,
        }
        yield Target(RIS, svc.url, cfg["lanes"]["llm"]["default_model"])
    finally:
        svc.stop()


def lending_probe(target: Target, users: int = 8) -> dict[str, Any]:
    """Before the repeats, not measured: a burst of `users` on RIS while /api/stats is read every
    0.2 s: whether its LLM worker widened to the idle TTS core (threads_now, borrowed_cores)."""
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.2):
            w = httpx.get(f"{target.url}/api/stats", timeout=10).json()["lanes"]["llm"]["worker"]
            seen.append({k: w[k] for k in ("threads_now", "borrowed_cores", "cpu_affinity", "running")})

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        asyncio.run(burst(target, burst_messages("lending-probe", users)))
    finally:
        done.set()
        poller.join()
    return {
        "users": users,
        "samples": len(seen),
        "threads_now_max": max((x["threads_now"] for x in seen), default=None),
        "borrowed_cores_seen": sorted({c for x in seen for c in x["borrowed_cores"] or []}),
        "share_of_samples_widened": sum(bool(x["borrowed_cores"]) for x in seen) / max(len(seen), 1),
    }


def llm_models(models: dict[str, Any]) -> list[dict[str, Any]]:
    """What GET /api/models says of the LLM lane's models: parallel, placement, memory."""
    keep = ("name", "backend", "parallel", "placement", "footprint", "kv_cache_bytes", "flash_attn")
    return [{k: m[k] for k in keep if k in m} for m in models["lanes"]["llm"]]


# ---------------------------------------------------------------------------------------------
# Output

# (figure, goal, higher is better) — issue 26's goal for this comparison.
GOALS = (
    ("c8.tok_s", 0.95, True),
    ("c8.ttft_p50", 1.2, False),
    ("c1.tok_s", 0.95, True),
    ("c4.tok_s", 0.95, True),
)


def goal_lines(summary: dict[str, dict[str, Any]], reps: list[dict[str, Any]]) -> list[str]:
    """Met: the median ratio meets the goal and every repetition is within 10% of it."""
    lines = ["| goal (RIS / llama-server) | median (range) | each repetition | met |", "|---|---|---|---|"]
    for key, goal, higher in GOALS:
        s = summary.get(key, {}).get("ratio")
        if s is None:
            continue
        per_rep = [r["figures"][RIS][key] / r["figures"][LLAMA][key] for r in reps]
        median_ok = s["median"] >= goal if higher else s["median"] <= goal
        reps_ok = all(x >= goal * 0.9 for x in per_rep) if higher else all(x <= goal * 1.1 for x in per_rep)
        sign = ">=" if higher else "<="
        verdict = "met" if median_ok and reps_ok else "**not met**"
        lines.append(
            f"| {key} {sign} {goal}x | {s['median']:.2f}x ({s['min']:.2f}–{s['max']:.2f}) | "
            + ", ".join(f"{x:.2f}" for x in per_rep)
            + f" | {verdict} |"
        )
    return lines


def markdown_parts(result: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The set-up lines and the goals' table of llm_concurrency.markdown in this mode."""
    m = result["meta"]
    goals = ["", "Issue 26's goals (median of the ratios; each repetition within 10% of the goal):", ""]
    goals += goal_lines(result["summary"], result["repeats"])
    return setup_lines(m), goals


def setup_lines(m: dict[str, Any]) -> list[str]:
    ls, ris = m["llama_server"], m["ris"]
    llm = ris["llm_lane"]
    command = " ".join(Path(a).name if "/" in a else a for a in ls["command"])
    return [
        f"- Model: {Path(ls['command'][2]).name}.",
        "- Mode `--as-shipped`: each server as its users run it; neither is pinned, nor is the "
        "client (all three see both cores).",
        f"- llama-server {m['llama_server_version']}: `{command}` (the model by its full path; nothing "
        "else). It chose: "
        f"{ls['threads']} threads (batch {ls['threads_batch']}), {ls['props']['total_slots']} slots, "
        f"n_ctx {ls['n_ctx']} shared (kv_unified {ls['kv_unified']}, KV buffer {ls['kv_buffer']}; "
        f"{ls['props']['n_ctx_per_slot']} per slot in /props), flash attention {ls['flash_attn']}. "
        "Its start-up lines: " + "; ".join(f"`{short(x)}`" for x in ls["startup_log"]) + "; with "
        "`-lv 4` (a separate start): " + "; ".join(f"`{short(x)}`" for x in ls["startup_log_lv4"]),
        f"- RIS: {m['ris_source']}, {ris['config']} with only {'; '.join(ris['changed'])}. Lanes enabled: "
        f"{', '.join(ris['lanes_enabled'])} (TTS and image idle). LLM lane: cores {llm.get('cores')}, "
        f"threads {llm.get('threads')}, borrow_idle_cores {llm.get('borrow_idle_cores')}, `parallel` "
        f"{llm.get('parallel', 'not set: the default')}; /api/models: `{json.dumps(ris['llm_models'])}`.",
        f"- RIS's LLM worker during a burst of 8 before the repeats (/api/stats every 0.2 s): "
        f"`{json.dumps(ris.get('lending_during_burst'))}`.",
    ]


def short(line: str) -> str:
    """A start-up line without its timestamp and the CPU feature list."""
    return line.split(" ", 1)[-1].split(" | CPU")[0]
