"""From raw samples to figures, and from repetitions to medians, spreads and ratios. Pure.

A phase's figures are a flat dict of metric name -> number (or None when the phase had no such
samples), so repetitions and configurations combine by name. Ratios are taken inside one
repetition (same run, same machine state) and only then summarised across repetitions.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ris.benchmark.workload import STALL_S
from ris.scheduler import percentile


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str
    lane: str
    better: str  # "lower" or "higher"
    scale: float = 1.0  # shown value = stored value * scale


METRICS: tuple[Metric, ...] = (
    Metric("llm_ttft_p50", "LLM time to first token p50", "ms", "llm", "lower", 1000),
    Metric("llm_ttft_p99", "LLM time to first token p99", "ms", "llm", "lower", 1000),
    Metric("llm_itl_p50", "LLM inter-token latency p50", "ms", "llm", "lower", 1000),
    Metric("llm_itl_p99", "LLM inter-token latency p99", "ms", "llm", "lower", 1000),
    Metric("llm_latency_p50", "LLM full answer p50", "s", "llm", "lower"),
    Metric("llm_tok_s", "LLM tokens/s per stream (p50)", "tok/s", "llm", "higher"),
    Metric("tts_latency_p50", "TTS latency p50", "s", "tts", "lower"),
    Metric("tts_latency_p99", "TTS latency p99", "s", "tts", "lower"),
    Metric("tts_rtf_p50", "TTS real-time factor p50", "", "tts", "lower"),
    Metric("tts_rtf_p99", "TTS real-time factor p99", "", "tts", "lower"),
    Metric("tts_burst_s", "TTS burst of concurrent requests, all answered (p50)", "s", "tts", "lower"),
    Metric("image_wait_p50", "image queue wait p50", "s", "image", "lower"),
    Metric("image_wait_p99", "image queue wait p99", "s", "image", "lower"),
    Metric("image_steps_s", "image denoising steps/s", "steps/s", "image", "higher"),
    Metric("requests_per_min", "requests completed per minute (all lanes)", "req/min", "all", "higher"),
    Metric("errors", "errors", "", "all", "lower"),
    Metric("stalls", f"stalls (no progress > {STALL_S:g} s)", "", "all", "lower"),
)
BY_NAME = {m.name: m for m in METRICS}


def _ok(xs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in xs if s.get("ok")]


def _p(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q)


def burst_times(tts: Iterable[dict[str, Any]]) -> list[float]:
    """Per burst whose requests all succeeded: seconds from its submission to its last answer."""
    bursts: dict[int, list[dict[str, Any]]] = {}
    for s in tts:
        if s.get("burst"):
            bursts.setdefault(int(s["burst"]), []).append(s)
    return [
        max(s["t_end"] for s in group) - min(s["t0"] for s in group)
        for group in bursts.values()
        if all(s.get("ok") for s in group)
    ]


def gaps_in_window(stream: dict[str, Any], end: float) -> list[float]:
    """A streamed answer's gaps between tokens that ended by `end`, its window's end: after
    it the load eases (no new speech, images cancelled), and the gaps of the drain would be
    the calm ones, one more drain per round (`--rounds`) diluting the phase's tail."""
    t = stream["t0"] + stream["ttft_s"]
    out = []
    for gap in stream["itl_s"]:
        t += gap
        if t > end:
            break
        out.append(gap)
    return out


def phase_figures(result: dict[str, Any]) -> dict[str, float | None]:
    """One phase's raw samples -> its figures (see METRICS)."""
    samples: dict[str, list[dict[str, Any]]] = result["samples"]
    window = float(result["workload"]["duration_s"])
    lanes = set(result["lanes"])
    f: dict[str, float | None] = {}
    llm = _ok(samples.get("llm", []))
    streams = [s for s in llm if s.get("stream")]
    if "llm" in lanes:
        f["llm_ttft_p50"] = _p([s["ttft_s"] for s in streams], 50)
        f["llm_ttft_p99"] = _p([s["ttft_s"] for s in streams], 99)
        itl = [g for s in streams for g in gaps_in_window(s, s.get("window_end", window))]
        f["llm_itl_p50"], f["llm_itl_p99"] = _p(itl, 50), _p(itl, 99)
        f["llm_latency_p50"] = _p([s["latency_s"] for s in llm], 50)
        f["llm_tok_s"] = _p([s["decode_tok_s"] for s in streams if s.get("decode_tok_s")], 50)
    tts = _ok(samples.get("tts", []))
    if "tts" in lanes:
        f["tts_latency_p50"] = _p([s["latency_s"] for s in tts], 50)
        f["tts_latency_p99"] = _p([s["latency_s"] for s in tts], 99)
        f["tts_rtf_p50"] = _p([s["rtf"] for s in tts], 50)
        f["tts_rtf_p99"] = _p([s["rtf"] for s in tts], 99)
        f["tts_burst_s"] = _p(burst_times(samples.get("tts", [])), 50)
    images = samples.get("image", [])
    if "image" in lanes:
        waits = [s["queue_wait_s"] for s in images if "queue_wait_s" in s]
        f["image_wait_p50"], f["image_wait_p99"] = _p(waits, 50), _p(waits, 99)
        f["image_steps_s"] = sum(s.get("steps_in_window", 0) for s in images) / window
    everything = [s for xs in samples.values() for s in xs]
    # A pooled sample carries the end of its own round's window (pool).
    completed = [s for s in everything if s.get("ok") and s["t_end"] <= s.get("window_end", window)]
    f["requests_per_min"] = len(completed) / window * 60
    f["errors"] = float(sum(1 for s in everything if s.get("error")))
    f["stalls"] = float(sum(1 for s in everything if s.get("max_gap_s", 0.0) > STALL_S))
    return f


def pool(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A phase measured in rounds (`ris bench --rounds`) as one phase: the rounds' windows laid
    end to end, each sample moved by the windows before its own and marked with its own
    window's end (what finished in the drain after its round is not counted as done in the
    window), bursts numbered apart. One round is returned as it is."""
    if len(rounds) == 1:
        return rounds[0]
    samples: dict[str, list[dict[str, Any]]] = {"llm": [], "tts": [], "image": []}
    offset = 0.0
    for k, r in enumerate(rounds):
        window = float(r["workload"]["duration_s"])
        for lane, xs in r["samples"].items():
            for x in xs:
                y = {**x, "window_end": offset + window}
                for t in ("t0", "t_end"):
                    if t in y:
                        y[t] += offset
                if y.get("burst"):
                    y["burst"] = k * BURSTS_PER_ROUND + int(y["burst"])
                samples.setdefault(lane, []).append(y)
        offset += window
    first = rounds[0]
    return {
        "lanes": first["lanes"],
        "workload": {**first["workload"], "duration_s": offset},
        "samples": samples,
        "rounds": len(rounds),
    }


# Bursts of one round are numbered from 1; pooled, round k's start at k * this.
BURSTS_PER_ROUND = 1_000_000


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


def spread(values: Iterable[float | None]) -> Spread | None:
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return Spread(statistics.median(xs), min(xs), max(xs), len(xs))


def combine(reps: list[dict[str, dict[str, float | None]]]) -> dict[str, Any]:
    """Repetitions of {phase: figures} -> medians and spreads per phase and the ratios.

    Phases: "alone" (each lane's figures from its own alone phase, merged) and one per
    configuration's mixed phase. Ratios per repetition: <config> / alone and isolated / <config>.
    """
    phases = sorted({p for rep in reps for p in rep})
    figures = {
        phase: {
            m.name: s.to_json()
            for m in METRICS
            if (s := spread(rep.get(phase, {}).get(m.name) for rep in reps)) is not None
        }
        for phase in phases
    }
    ratios: dict[str, dict[str, Any]] = {}
    for phase in phases:
        if phase == "alone":
            continue
        pairs = [(f"{phase}/alone", "alone")]
        if phase != "isolated" and "isolated" in phases:
            pairs.append((f"isolated/{phase}", phase))
        for key, ref in pairs:
            top = "isolated" if key.startswith("isolated/") else phase
            ratios[key] = {
                m.name: s.to_json()
                for m in METRICS
                if m.name not in ("errors", "stalls")
                and (
                    s := spread(
                        ratio(rep.get(top, {}).get(m.name), rep.get(ref, {}).get(m.name)) for rep in reps
                    )
                )
                is not None
            }
    return {"figures": figures, "ratios": ratios}


GOALS: dict[str, list[tuple[str, str, str, float]]] = {
    # (description, ratio key, metric, bound); "<=" for lower-is-better, ">=" otherwise.
    "cpu": [
        (
            "isolated LLM inter-token latency p99 within 1.10x of the LLM alone",
            "isolated/alone",
            "llm_itl_p99",
            1.10,
        ),
        (
            "isolated TTS real-time factor p99 within 1.10x of TTS alone",
            "isolated/alone",
            "tts_rtf_p99",
            1.10,
        ),
        (
            "isolated image steps/s at least 0.95x of the traditional layout",
            "isolated/traditional",
            "image_steps_s",
            0.95,
        ),
    ],
    "gpu": [
        (
            "isolated LLM time to first token p50 within 1.05x of the LLM alone",
            "isolated/alone",
            "llm_ttft_p50",
            1.05,
        ),
        (
            "isolated image steps/s at least 0.85x of uncoordinated sharing",
            "isolated/shared",
            "image_steps_s",
            0.85,
        ),
    ],
}


# A goal is met at the median of the repetitions with every repetition within this much of
# the bound (issue 26's terms): one good median over repetitions that straddle the bound far
# is not a result the next run would repeat.
EACH_WITHIN = 0.10


def goals(kind: str, combined: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal with its measured ratio (median and worst repetition) and whether it is met:
    at the median, and every repetition within EACH_WITHIN of the bound."""
    out = []
    for text, key, metric, bound in GOALS[kind]:
        s = combined["ratios"].get(key, {}).get(metric)
        higher = BY_NAME[metric].better == "higher"
        if s is None:
            out.append({"goal": text, "measured": None, "met": None})
            continue
        worst = s["min"] if higher else s["max"]
        at_median = s["median"] >= bound if higher else s["median"] <= bound
        each = worst >= bound * (1 - EACH_WITHIN) if higher else worst <= bound * (1 + EACH_WITHIN)
        out.append(
            {
                "goal": text,
                "median": s["median"],
                "worst": worst,
                "met_at_median": at_median,
                "each_within_10pct": each,
                "met": at_median and each,
            }
        )
    iso = combined["figures"].get("isolated", {})
    errors, stalls = iso.get("errors", {}).get("max"), iso.get("stalls", {}).get("max")
    out.append(
        {
            "goal": "no stalls and no errors in the isolated configuration",
            "errors": errors,
            "stalls": stalls,
            "met": None if errors is None else errors == 0 and stalls == 0,
        }
    )
    return out


def merge_alone(per_lane: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """The three alone phases as one "alone" column: each lane's figures from its own phase;
    throughput, errors and stalls summed (what the lanes would do if they never interfered)."""
    merged: dict[str, float | None] = {}
    for lane, figs in per_lane.items():
        merged.update({k: v for k, v in figs.items() if BY_NAME[k].lane == lane})
    for name in ("requests_per_min", "errors", "stalls"):
        merged[name] = sum(f.get(name) or 0.0 for f in per_lane.values())
    return merged
