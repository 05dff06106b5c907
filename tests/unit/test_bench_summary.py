"""The benchmark's arithmetic: figures from samples, ratios within repetitions, goals."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest

from ris.benchmark import configs, report, summary
from ris.config.load import parse_config
from ris.config.sharing import resolve_policy
from ris.lanes import Lane
from ris.machine import MachineInfo
from ris.scheduler import Ordering


def phase(
    lanes: list[str], samples: dict[str, list[dict[str, Any]]], duration: float = 10.0
) -> dict[str, Any]:
    return {
        "lanes": lanes,
        "workload": {"duration_s": duration},
        "samples": {"llm": [], "tts": [], "image": [], **samples},
    }


def llm(t0: float, ttft: float, gaps: list[float], ok: bool = True) -> dict[str, Any]:
    end = t0 + ttft + sum(gaps)
    return {"t0": t0, "t_end": end, "latency_s": end - t0, "stream": True, "ok": ok, "ttft_s": ttft,
            "itl_s": gaps, "tokens": len(gaps) + 1, "decode_tok_s": len(gaps) / sum(gaps),
            "max_gap_s": max([ttft, *gaps])}  # fmt: skip


def test_a_burst_takes_until_its_last_answer_and_counts_only_if_all_succeeded() -> None:
    tts = [
        {"t0": 1.0, "t_end": 1.3, "ok": True, "burst": 1},
        {"t0": 1.0, "t_end": 1.9, "ok": True, "burst": 1},
        {"t0": 5.0, "t_end": 5.2, "ok": True, "burst": 2},
        {"t0": 5.0, "t_end": 9.0, "ok": False, "burst": 2},
        {"t0": 2.0, "t_end": 9.0, "ok": True, "burst": 0},  # not part of a burst
    ]
    assert summary.burst_times(tts) == [pytest.approx(0.9)]


def test_phase_figures_from_samples() -> None:
    r = phase(
        ["llm", "tts", "image"],
        {
            "llm": [
                llm(0, 0.1, [0.02] * 9),
                llm(2, 3.0, [0.02] * 9),
                {"t0": 5, "t_end": 6, "ok": False, "error": "http_500"},
            ],
            "tts": [
                {"t0": 1, "t_end": 1.5, "latency_s": 0.5, "ok": True, "rtf": 0.2, "max_gap_s": 0.5},
                {"t0": 1.2, "t_end": 1.4, "latency_s": 0.2, "ok": True, "rtf": 0.1, "max_gap_s": 0.2},
            ],
            "image": [
                {
                    "t0": 0,
                    "t_end": 4,
                    "ok": True,
                    "queue_wait_s": 0.0,
                    "steps_in_window": 8,
                    "max_gap_s": 0.5,
                },
                {
                    "t0": 0,
                    "ok": False,
                    "unfinished": True,
                    "queue_wait_s": 4.0,
                    "steps_in_window": 2,
                    "max_gap_s": 0.1,
                },
            ],
        },
    )
    f = summary.phase_figures(r)
    assert f["llm_ttft_p50"] == pytest.approx(0.1) and f["llm_ttft_p99"] == pytest.approx(3.0)
    assert f["llm_itl_p99"] == pytest.approx(0.02)
    assert f["tts_burst_s"] is None  # no bursts in this phase
    assert f["image_steps_s"] == pytest.approx(1.0)  # 10 steps in a 10 s window
    assert f["image_wait_p99"] == pytest.approx(4.0)
    assert f["requests_per_min"] == pytest.approx(5 / 10 * 60)  # 2 LLM + 2 TTS + 1 image
    assert f["errors"] == 1  # the unfinished image at the window's end is not an error
    assert f["stalls"] == 1  # the 3 s time to first token


def test_lanes_not_driven_have_no_figures() -> None:
    f = summary.phase_figures(phase(["tts"], {}))
    assert "llm_itl_p99" not in f and "image_steps_s" not in f
    assert f["tts_rtf_p99"] is None  # driven, but nothing finished


def test_ratios_are_taken_within_each_repetition() -> None:
    reps: list[dict[str, dict[str, float | None]]] = [
        {
            "alone": {"llm_itl_p99": 0.020},
            "isolated": {"llm_itl_p99": 0.021},
            "traditional": {"llm_itl_p99": 0.2},
        },
        {
            "alone": {"llm_itl_p99": 0.030},
            "isolated": {"llm_itl_p99": 0.030},
            "traditional": {"llm_itl_p99": 0.6},
        },
    ]
    c = summary.combine(reps)
    iso = c["ratios"]["isolated/alone"]["llm_itl_p99"]
    assert iso["min"] == pytest.approx(1.0) and iso["max"] == pytest.approx(1.05) and iso["n"] == 2
    assert c["ratios"]["isolated/traditional"]["llm_itl_p99"]["median"] == pytest.approx((0.105 + 0.05) / 2)
    assert c["figures"]["traditional"]["llm_itl_p99"]["max"] == pytest.approx(0.6)
    goals = summary.goals("cpu", c)
    assert goals[0]["met"] is True and goals[0]["worst"] == pytest.approx(1.05)
    assert goals[1]["met"] is None  # no TTS figures: not measured, not "met"


def test_alone_column_merges_each_lanes_own_phase() -> None:
    merged = summary.merge_alone(
        {
            "llm": {"llm_itl_p99": 0.02, "requests_per_min": 30.0, "errors": 0.0, "stalls": 1.0},
            "tts": {"tts_rtf_p99": 0.2, "requests_per_min": 60.0, "errors": 1.0, "stalls": 0.0},
        }
    )
    assert merged == {
        "llm_itl_p99": 0.02,
        "tts_rtf_p99": 0.2,
        "requests_per_min": 90.0,
        "errors": 1.0,
        "stalls": 1.0,
    }


@pytest.mark.parametrize(
    "kind,machine", [("cpu", MachineInfo((0, 1), 0)), ("gpu", MachineInfo(tuple(range(16)), 1))]
)
def test_benchmark_configurations_are_valid_and_differ_as_documented(kind: str, machine: MachineInfo) -> None:
    built = {name: configs.build(name, kind, machine) for name in configs.CONFIGS}
    for cfg in built.values():
        parse_config(configs.as_json(cfg, "/tmp/ris-bench-test"), machine)  # round-trips through config.json
    iso, trad, shared = built["isolated"], built["traditional"], built["shared"]
    assert (
        iso.scheduling is Ordering.LANES
        and trad.scheduling is Ordering.FIFO
        and shared.scheduling is Ordering.LANES
    )
    # On CPU the image lane yields through its OS priority; on a GPU it pauses itself.
    assert resolve_policy(iso, Lane.IMAGE).mode == ("block" if kind == "gpu" else "none")
    assert resolve_policy(trad, Lane.IMAGE).mode == "none"
    assert set(iso.lane(Lane.LLM).cores or ()).isdisjoint(iso.lane(Lane.TTS).cores or ())
    for lane in Lane:
        assert trad.lane(lane).cores is None and trad.lane(lane).threads is None and trad.lane(lane).nice == 0
        assert not trad.lane(lane).borrow_idle_cores
        assert trad.lane(lane).models == iso.lane(lane).models  # the same models, only isolation differs
    if kind == "gpu":
        assert iso.lane(Lane.LLM).device == iso.lane(Lane.IMAGE).device == "cuda:0"
        assert iso.lane(Lane.LLM).models["llm"].source == "qwen2.5-7b"


def test_gpu_variant_refuses_a_machine_without_gpu() -> None:
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        configs.build("isolated", "gpu", MachineInfo((0, 1), 0))


def test_bench_refuses_an_unknown_configuration_before_starting_anything() -> None:
    from ris.cli import main

    for given, said in (
        ("bogus,isolated", "unknown configuration 'bogus'; known: traditional, shared"),
        ("", "name at least one configuration"),  # it ran the whole default benchmark
        ("traditional", "must include isolated"),
    ):
        with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(io.StringIO()) as err:
            main(["bench", "--configs", given, "--out", "/nonexistent"])
        assert exit_.value.code == 2 and said in err.getvalue(), (given, err.getvalue())


@pytest.mark.parametrize(
    ("option", "value"),
    [("--duration", v) for v in ("0", "-5", "nan", "inf", "ten")]
    + [("--repetitions", v) for v in ("0", "-1", "two", "1.5")],
)
def test_bench_refuses_a_bad_count_before_starting_anything(
    option: str, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--duration 0 ran the whole benchmark, then failed dividing by it (ZeroDivisionError);
    --repetitions 0 exited 1 with a message of its own, not argparse's usage error."""
    from ris.benchmark import run
    from ris.cli import main

    def started(args: object) -> None:
        raise AssertionError(f"the benchmark started with {option} {value}")

    monkeypatch.setattr(run, "run", started)
    with pytest.raises(SystemExit) as exit_:
        main(["bench", option, value, "--out", "/nonexistent"])
    assert exit_.value.code == 2  # argparse's usage error, as any other bad argument
    assert f"argument {option}" in capsys.readouterr().err


def test_rounds_pool_into_one_phase_counting_each_round_in_its_own_window() -> None:
    first = phase(
        ["llm", "tts", "image"],
        {
            # The second's first gap ends in the window (9.9 s), its next two in the drain.
            "llm": [llm(0, 0.1, [0.02] * 9), llm(9.0, 0.1, [0.8, 0.5, 0.5])],
            "tts": [
                {"t0": 1, "t_end": 1.3, "latency_s": 0.3, "ok": True, "rtf": 0.2, "burst": 1},
                {"t0": 1, "t_end": 1.6, "latency_s": 0.6, "ok": True, "rtf": 0.2, "burst": 1},
            ],
            "image": [{"t0": 0, "t_end": 4, "ok": True, "queue_wait_s": 0.0, "steps_in_window": 8}],
        },
    )
    second = phase(
        ["llm", "tts", "image"],
        {
            "llm": [llm(0, 0.3, [0.04] * 9)],
            "tts": [
                {"t0": 2, "t_end": 2.1, "latency_s": 0.1, "ok": True, "rtf": 0.4, "burst": 1},
                {"t0": 2, "t_end": 3.0, "latency_s": 1.0, "ok": False, "burst": 1},
            ],
            "image": [{"t0": 1, "ok": False, "unfinished": True, "queue_wait_s": 1.0, "steps_in_window": 4}],
        },
    )
    pooled = summary.pool([first, second])
    assert pooled["workload"]["duration_s"] == 20.0 and pooled["rounds"] == 2
    assert [s["t0"] for s in pooled["samples"]["llm"]] == [0, 9.0, 10]
    f = summary.phase_figures(pooled)
    # Every round's gaps count, by the end of its own window: the 0.8 s gap that ended at 9.9 s,
    # not the 0.5 s ones of the first round's drain (after 10 s), though they lie inside the
    # pooled 20 s.
    itl = sorted(g for s in pooled["samples"]["llm"] for g in summary.gaps_in_window(s, s["window_end"]))
    assert itl == [0.02] * 9 + [0.04] * 9 + [0.8]
    assert f["llm_itl_p99"] == pytest.approx(0.8) and f["llm_ttft_p99"] == pytest.approx(0.3)
    # Round 1's burst is whole; round 2's, numbered apart, had a failure and does not count.
    assert f["tts_burst_s"] == pytest.approx(0.6)
    assert f["image_steps_s"] == pytest.approx(12 / 20)
    # Done in its round's window: 1 + 2 + 1 in round 1 (not the chat that ended in its drain,
    # though 10.6 s lies inside the pooled 20 s), 1 + 1 in round 2.
    assert f["requests_per_min"] == pytest.approx(6 / 20 * 60)
    assert summary.pool([first]) is first


def test_rounds_take_the_phases_in_turns_odd_rounds_reversed() -> None:
    from ris.benchmark.run import round_order

    phases = ("llm", "tts", "image", "mixed")
    assert round_order(phases, 1) == [(0, p) for p in phases]
    assert [p for _, p in round_order(phases, 2)] == [*phases, *reversed(phases)]
    assert round_order(("mixed",), 3) == [(0, "mixed"), (1, "mixed"), (2, "mixed")]


def test_a_goal_met_at_the_median_with_a_repetition_far_beyond_it_is_not_met() -> None:
    def combined(itl: list[float], steps: list[float]) -> dict[str, Any]:
        reps: list[dict[str, dict[str, float | None]]] = [
            {
                "alone": {"llm_itl_p99": 0.020},
                "isolated": {"llm_itl_p99": 0.020 * r, "image_steps_s": 10.0 * q},
                "traditional": {"image_steps_s": 10.0},
            }
            for r, q in zip(itl, steps, strict=True)
        ]
        return summary.combine(reps)

    llm, _tts, images, _stalls = summary.goals("cpu", combined([1.0, 1.05, 1.25], [1.0, 0.96, 0.80]))
    # Medians 1.05x and 0.96x; the third repetition 1.25x (over 1.21) and 0.80x (under 0.855).
    assert llm["met_at_median"] and not llm["each_within_10pct"] and llm["met"] is False
    assert images["met_at_median"] and not images["met"]
    llm, _tts, images, _stalls = summary.goals("cpu", combined([1.0, 1.05, 1.20], [1.0, 0.96, 0.86]))
    assert llm["met"] is True and images["met"] is True  # each within 10% of its bound
    text = report.markdown(
        {
            "meta": {"kind": "cpu", "quick": False, "machine": {"summary": "m"}, "repetitions": 3,
                     "workload": {"duration_s": 30}, "configs": []},
            "combined": {"figures": {}, "ratios": {}},
            "goals": summary.goals("cpu", combined([1.0, 1.05, 1.25], [1.0, 0.96, 0.80])),
        }
    )  # fmt: skip
    assert "1.05x, worst repetition 1.25x — **NOT met** (met at the median; a repetition beyond" in text


def test_rounds_too_short_to_hold_a_speech_burst_are_refused_before_anything_starts() -> None:
    import argparse

    from ris.benchmark import run

    ns = argparse.Namespace(
        gpu=False, quick=False, duration=30.0, rounds=10, configs=["isolated"], tts_model=None, repetitions=1
    )
    with pytest.raises(SystemExit, match="rounds of 3 s, shorter than the 8 s between speech bursts"):
        run.run(ns)
