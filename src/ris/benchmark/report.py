"""The benchmark's outputs: a markdown table in the seed's comparison form, and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ris.benchmark.summary import METRICS, Metric, gaps_in_window

SEED_ROWS = {
    "llm": "LLM response time",
    "tts": "TTS concurrency",
    "image": "Image waiting time",
    "all": "Throughput and stability",
}
COLUMN_ORDER = ("alone", "traditional", "shared", "isolated")


def _num(v: float, m: Metric | None = None) -> str:
    x = v * (m.scale if m else 1.0)
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.3f}"


def _cell(s: dict[str, Any] | None, m: Metric | None, suffix: str = "") -> str:
    if s is None:
        return "-"
    text = _num(s["median"], m) + suffix
    if s["n"] > 1 and s["min"] != s["max"]:
        text += f" ({_num(s['min'], m)}–{_num(s['max'], m)})"
    return text


def _layout_lines(meta: dict[str, Any]) -> list[str]:
    """The code measured and each configuration's lanes as the service applied them."""
    out = [f"- code: {meta['revision']}"] if meta.get("revision") else []
    for config, lanes in (meta.get("layouts") or {}).items():
        parts = []
        for lane, got in lanes.items():
            cores = got.get("affinity") or got["cores"]
            text = f"{lane} on cores {cores}, {got['threads']} thread(s), nice {got['nice']}"
            share = got.get("min_cpu_share")
            if share:
                text += (
                    f", min share {share['share']:.2g} ({share['mechanism']}, weight {share['weight']}, "
                    f"policy {share['policy']})"
                )
            parts.append(text)
        out.append(f"- {config}: " + "; ".join(parts))
    return [*out, ""] if out else []


def markdown(report: dict[str, Any]) -> str:
    combined = report["combined"]
    figures, ratios = combined["figures"], combined["ratios"]
    columns = [c for c in COLUMN_ORDER if c in figures]
    ratio_cols = [
        k
        for k in ("isolated/traditional", "isolated/shared", "isolated/alone", "traditional/alone")
        if k in ratios
    ]
    head = ["seed row", "metric", *[f"{c}" for c in columns], *[f"{k}" for k in ratio_cols]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    last_group = None
    for m in METRICS:
        if all(m.name not in figures[c] for c in columns):
            continue
        group = SEED_ROWS[m.lane] if m.lane != last_group else ""
        last_group = m.lane
        label = m.label + (f" ({m.unit})" if m.unit else "")
        cells = [_cell(figures[c].get(m.name), m) for c in columns]
        cells += [_cell(ratios[k].get(m.name), None, "x") for k in ratio_cols]
        lines.append("| " + " | ".join([group, label, *cells]) + " |")
    meta = report["meta"]
    out = [
        f"`ris bench` ({meta['kind']}{', quick' if meta['quick'] else ''}) on {meta['machine']['summary']}, "
        f"{meta['repetitions']} repetition(s), {meta['workload']['duration_s']:g} s per phase"
        f"{_rounds_text(meta.get('rounds', 1))}; "
        "median (min–max over repetitions). Ratios are taken within each repetition.",
        "",
        *_layout_lines(meta),
        *lines,
        "",
        "Goals:",
        "",
    ]
    for g in report["goals"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        if "median" in g:
            why = (
                " (met at the median; a repetition beyond 10% of the goal)"
                if g["met_at_median"] and not g["met"]
                else ""
            )
            out.append(
                f"- {g['goal']}: median {g['median']:.2f}x, "
                f"worst repetition {g['worst']:.2f}x — **{mark}**{why}"
            )
        else:
            out.append(f"- {g['goal']}: errors {g.get('errors')}, stalls {g.get('stalls')} — **{mark}**")
    return "\n".join(out) + "\n"


def chart(distributions: dict[str, dict[str, list[float]]], path: Path, title: str) -> bool:
    """Box plots per lane (LLM first token and inter-token gap, TTS real-time factor, image queue
    wait), one box
    per configuration. False when matplotlib is missing (`pip install ris[bench]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = (
        ("llm_ttft_ms", "LLM time to first token (ms)"),
        ("llm_itl_ms", "LLM inter-token latency (ms)"),
        ("tts_rtf", "TTS real-time factor"),
        ("image_wait_s", "image queue wait (s)"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5))
    for ax, (key, label) in zip(axes, panels, strict=True):
        names = [c for c in COLUMN_ORDER if distributions.get(c, {}).get(key)]
        data = [distributions[c][key] for c in names]
        if data:
            ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(names) + 1), names)
            if min(min(d) for d in data) > 0:
                ax.set_yscale("log")
        ax.set_title(label)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title + " — whiskers: p1–p99")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _rounds_text(rounds: int) -> str:
    return "" if rounds == 1 else f" in {rounds} rounds taken in turns with the service's other phases"


def distributions(phase_results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, list[float]]]:
    """Raw per-request values pooled over repetitions, per column (alone / configurations)."""
    out: dict[str, dict[str, list[float]]] = {}
    for column, results in phase_results.items():
        d = out.setdefault(column, {"llm_ttft_ms": [], "llm_itl_ms": [], "tts_rtf": [], "image_wait_s": []})
        for r in results:
            s = r["samples"]
            d["llm_ttft_ms"] += [1000 * x["ttft_s"] for x in s["llm"] if x.get("ok") and x.get("stream")]
            end = float(r["workload"]["duration_s"])
            d["llm_itl_ms"] += [
                1000 * g
                for x in s["llm"]
                if x.get("ok") and x.get("stream")
                for g in gaps_in_window(x, x.get("window_end", end))
            ]
            d["tts_rtf"] += [x["rtf"] for x in s["tts"] if x.get("ok")]
            d["image_wait_s"] += [x["queue_wait_s"] for x in s["image"] if "queue_wait_s" in x]
    return out
