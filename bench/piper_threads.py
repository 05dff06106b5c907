"""Piper (onnxruntime) on 1 or 2 intra-op threads, spinning or sleeping when they wait, on both
cores and with every thread confined to one core: what ris.backends.tts_piper's sessions for
lent cores are built from (the lending watcher may confine a borrowing worker's threads to its
own core under a running sentence), and the memory each session adds (resident set, built and
after its first synthesis: onnxruntime's allocator arena grows). One process, the voice of
config.json's TTS lane, a two-sentence text, `--n` syntheses per case in rotation; medians and
ranges.

    python bench/piper_threads.py [--n 5] [--out bench/results/piper_threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import onnxruntime
import psutil
from piper import PiperConfig, PiperVoice

from ris.backends import resolve_source
from ris.backends.tts_piper import _find_voice
from ris.benchmark.run import machine_summary

ROOT = Path(__file__).resolve().parents[1]
TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it runs all the way back home "
    "to sleep until the morning comes again."
)
CASES = {"1 thread": (1, True), "2 threads, spinning": (2, True), "2 threads, sleeping": (2, False)}


def voice(model: Path, config: PiperConfig, threads: int, spin: bool) -> PiperVoice:
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])
    return PiperVoice(config=config, session=session, download_dir=Path("/tmp"))


def timed(v: PiperVoice) -> float:
    t0 = time.perf_counter()
    for _chunk in v.synthesize(TEXT):
        pass
    return time.perf_counter() - t0


def measure(voices: dict[str, PiperVoice], n: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {k: [] for k in voices}
    for _ in range(n):
        for k, v in voices.items():
            times[k].append(timed(v))
    return {
        k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3), "max_s": round(max(v), 3)}
        for k, v in times.items()
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench/results/piper_threads.json"))
    args = p.parse_args()
    lane = json.loads((ROOT / "config.json").read_text())["lanes"]["tts"]
    model, config_path = _find_voice(resolve_source(lane["models"][lane["default_model"]]["source"]))
    config = PiperConfig.from_dict(json.loads(config_path.read_text()))
    proc = psutil.Process()
    voices, rss_mib = {}, {}
    for k, case in CASES.items():  # what each session adds to the process, built and warm
        before = proc.memory_info().rss
        voices[k] = voice(model, config, *case)
        built = proc.memory_info().rss
        timed(voices[k])  # warm-up
        rss_mib[k] = {
            "built": (built - before) >> 20,
            "after a synthesis": (proc.memory_info().rss - before) >> 20,
        }
    cores = sorted(os.sched_getaffinity(0))
    machine = machine_summary()["summary"]  # before this process is confined to one core
    both = measure(voices, args.n)
    for tid in os.listdir("/proc/self/task"):  # every thread, onnxruntime's pools included
        os.sched_setaffinity(int(tid), {cores[-1]})
    one = measure(voices, args.n)
    result = {
        "benchmark": "piper_threads",
        "machine": machine,
        "load_average": round(os.getloadavg()[0], 2),
        "text_chars": len(TEXT),
        "rss_added_mib": rss_mib,
        f"on cores {cores}": both,
        f"confined to core {cores[-1]}": one,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
