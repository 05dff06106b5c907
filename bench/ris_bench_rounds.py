"""Each round's figures of a `ris bench --rounds` run, from its raw samples: where a phase's
spread comes from (one round that went badly, or a whole service instance that mixed worse).

    python bench/ris_bench_rounds.py bench/results/ris_bench_raw.json [--out FILE]

Per repetition, configuration and phase, for each round in the order the rounds ran: the LLM's
gap between tokens at p50 and p99 (ms; gaps that ended by the round's window's end, as
`ris bench` counts them) and the TTS real-time factor at p50 and p99.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ris.benchmark.summary import gaps_in_window
from ris.scheduler import percentile


def rounds_of(phase: dict[str, Any]) -> list[dict[str, Any]]:
    by_round: dict[float, dict[str, list[float]]] = {}
    end = float(phase["workload"]["duration_s"])
    for lane in ("llm", "tts"):
        for s in phase["samples"].get(lane, []):
            if not s.get("ok"):
                continue
            r = by_round.setdefault(s.get("window_end", end), {"itl": [], "rtf": []})
            if lane == "llm" and s.get("stream"):
                r["itl"] += gaps_in_window(s, s.get("window_end", end))
            elif lane == "tts":
                r["rtf"].append(s["rtf"])
    out = []
    for window_end, r in sorted(by_round.items()):
        row: dict[str, Any] = {"window_end_s": window_end}
        if r["itl"]:
            row["llm_itl_p50_ms"] = round(1000 * (percentile(r["itl"], 50) or 0), 1)
            row["llm_itl_p99_ms"] = round(1000 * (percentile(r["itl"], 99) or 0), 1)
        if r["rtf"]:
            row["tts_rtf_p50"] = round(percentile(r["rtf"], 50) or 0, 4)
            row["tts_rtf_p99"] = round(percentile(r["rtf"], 99) or 0, 4)
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw", type=Path)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    raw = json.loads(args.raw.read_text())
    result = [
        {config: {name: rounds_of(phase) for name, phase in phases.items()} for config, phases in rep.items()}
        for rep in raw
    ]
    for i, rep in enumerate(result):
        for config, phases in rep.items():
            for name, rows in phases.items():
                cells = [f"{r.get('llm_itl_p99_ms', '-')}/{r.get('tts_rtf_p99', '-')}" for r in rows]
                joined = "  ".join(cells)
                print(f"rep {i + 1} {config:12} {name:6} by round, LLM gap p99 ms / TTS RTF p99: {joined}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
