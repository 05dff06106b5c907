"""The work counters and histograms behind /metrics and `ris status`: the pure accumulator on a
fake clock, the engine feeding it from a fake worker's messages, and the exposition text parsed
back as Prometheus would."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ris import messages as m
from ris.api.prometheus import ServerFacts, prometheus_text
from ris.gpus import GPUDevice
from ris.lanes import Lane
from ris.lanes.base import Counted
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMOutcome, LLMRequest, TextDelta
from ris.runtime.metrics import Histogram, WorkMeter
from ris.runtime.snapshot import Snapshot

from .fakes import FakeClock, run, started_engine


def test_a_histogram_counts_each_value_under_every_bound_it_does_not_pass() -> None:
    h = Histogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 1.0, 20.0):
        h.observe(v)
    view = h.view()
    # le="0.1" holds 0.05 and 0.1 (a bound is inclusive); +Inf holds all five.
    assert view.counts == (2, 4, 4, 5)
    assert view.count == 5 and view.sum == pytest.approx(21.65)


def test_finished_tasks_are_counted_by_lane_model_and_outcome() -> None:
    clock = FakeClock()
    meter = WorkMeter(clock)
    tokens = (Counted("generated_tokens", "tokens", 7), Counted("prompt_tokens", "prompt", 3))
    meter.finished("llm", "a", "succeeded", latency_s=2.0, queue_wait_s=0.5, counted=tokens)
    meter.finished("llm", "a", "succeeded", latency_s=4.0, queue_wait_s=0.0, counted=tokens)
    meter.finished("llm", "b", "cancelled", latency_s=9.0, queue_wait_s=None)
    view = meter.view()
    assert view.tasks == {("llm", "a", "succeeded"): 2, ("llm", "b", "cancelled"): 1}
    # Latency of succeeded tasks only; queue wait of those that started.
    assert set(view.latency) == {("llm", "a")} and view.latency["llm", "a"].sum == 6.0
    assert view.queue_wait["llm", "a"].count == 2 and ("llm", "b") not in view.queue_wait
    assert view.counted["generated_tokens"].values == {("llm", "a"): 14}
    assert view.counted["prompt_tokens"].help == "prompt"


def test_rates_cover_the_recent_window_and_forget_what_left_it() -> None:
    clock = FakeClock()
    meter = WorkMeter(clock, window_s=10.0)
    meter.finished(
        "tts", "x", "succeeded", latency_s=1, queue_wait_s=0, counted=[Counted("audio_seconds", "", 4)]
    )
    clock.advance(5)
    meter.finished("tts", "x", "failed", latency_s=1, queue_wait_s=0)
    assert meter.view().rates == {"tts": {"tasks": 0.2, "audio_seconds": 0.4}}
    clock.advance(6)  # the first task is 11 s old: out of the 10 s window
    assert meter.view().rates == {"tts": {"tasks": 0.1}}
    clock.advance(60)
    view = meter.view()
    assert view.rates == {}
    assert view.counted["audio_seconds"].values == {("tts", "x"): 4}  # the total stays


def test_series_past_the_cap_are_counted_together_not_kept_apart() -> None:
    meter = WorkMeter(FakeClock(), max_series=2)
    for model in ("a", "b", "c", "d"):
        meter.finished("llm", model, "succeeded", latency_s=1, queue_wait_s=0)
    assert meter.view().tasks == {
        ("llm", "a", "succeeded"): 1,
        ("llm", "b", "succeeded"): 1,
        ("llm", "other", "succeeded"): 2,
    }


@run
async def test_the_engine_measures_first_output_gaps_latency_and_tokens(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        handle = eng.submit(LLM, "m", LLMRequest(prompt="hi"))
        clock.advance(0.3)
        for piece in ("a", "b", "c"):
            llm.deliver(m.TaskOutput(handle.task_id, TextDelta(piece)))
            clock.advance(0.02)
        llm.deliver(m.TaskDone(handle.task_id, LLMOutcome("stop", 5, 3)))
        cancelled = eng.submit(LLM, "m", LLMRequest(prompt="x"))
        llm.deliver(m.TaskCancelled(cancelled.task_id))
        await handle.done
        view = eng.snapshot().metrics
        assert view.first_output["llm", "m"].count == 1
        assert view.first_output["llm", "m"].sum == pytest.approx(0.3)
        gaps = view.output_gap["llm", "m"]
        assert gaps.count == 2 and gaps.sum == pytest.approx(0.04)
        assert view.latency["llm", "m"].sum == pytest.approx(0.36)
        assert view.tasks == {("llm", "m", "succeeded"): 1, ("llm", "m", "cancelled"): 1}
        assert view.counted["generated_tokens"].values == {("llm", "m"): 3}
        assert view.counted["prompt_tokens"].values == {("llm", "m"): 5}
        assert view.rates["llm"]["generated_tokens"] == pytest.approx(3 / view.window_s)


def families(text: str) -> dict[str, tuple[str, list[Sample]]]:
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


@run
async def test_the_exposition_parses_with_units_totals_and_no_empty_family(tmp_path: Path) -> None:
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        handle = eng.submit(LLM, "m", LLMRequest(prompt="hi"))
        llm.deliver(m.TaskOutput(handle.task_id, TextDelta("a")))
        llm.deliver(m.TaskDone(handle.task_id, LLMOutcome("stop", 5, 1)))
        await handle.done
        snap = eng.snapshot()
    text = prometheus_text(snap).decode()
    found = families(text)
    assert found["ris_tasks"][0] == "counter"
    assert [(s.name, s.labels, s.value) for s in found["ris_tasks"][1]] == [
        ("ris_tasks_total", {"lane": "llm", "model": "m", "outcome": "succeeded"}, 1)
    ]
    assert found["ris_generated_tokens"][0] == "counter"
    assert found["ris_task_latency_seconds"][0] == "histogram"
    names = {s.name for s in found["ris_task_latency_seconds"][1]}
    assert names == {f"ris_task_latency_seconds_{x}" for x in ("bucket", "sum", "count")}
    # The text format has no info type: an _info gauge of 1, its facts in labels.
    assert found["ris_build_info"][0] == "gauge" and found["ris_build_info"][1][0].value == 1
    # Nothing streamed a second output, and there is no GPU: those families are absent.
    assert "ris_inter_output_seconds" not in found and "ris_gpu_memory_used_bytes" not in found
    for name, (kind, samples) in found.items():
        assert samples, f"{name} has no sample"
        if kind == "counter":
            assert all(s.name == f"{name}_total" for s in samples), name
    assert "percent" not in text and "ris_running" not in text


def test_the_server_its_disk_and_every_configured_outcome_are_there_to_alert_on() -> None:
    """A full disk, the API process's memory and records waiting for room had no metric, and a
    task counter was born at its first count (an alert on its increase missed that one)."""
    facts = ServerFacts(
        resident_memory_bytes=150 << 20,
        memory_limit_bytes=2 << 30,
        data_free_bytes=0,
        held_writes=2,
        models={"llm": ("m",), "tts": ("e", "p")},
    )
    found = families(prometheus_text(Snapshot(0.0, 0.0, ()), (), facts).decode())
    gauges = {
        name: found[name][1][0].value
        for name in found
        if name.startswith(("ris_server", "ris_data", "ris_store"))
    }
    assert gauges == {
        "ris_server_resident_memory_bytes": 150 << 20,
        "ris_server_memory_limit_bytes": 2 << 30,
        "ris_data_dir_free_bytes": 0,
        "ris_store_writes_held": 2,
    }
    series = {
        (s.labels["lane"], s.labels["model"], s.labels["outcome"]): s.value for s in found["ris_tasks"][1]
    }
    assert len(series) == 9 and set(series.values()) == {0}  # 3 models x 3 outcomes, from 0
    assert ("tts", "p", "failed") in series


def test_a_lane_kinds_counted_work_never_breaks_the_exposition() -> None:
    """A plugin's Counted named like a built-in family ("tasks": ris_tasks_total) or not a
    metric name is left out of /metrics; the rest is served, each name once."""
    meter = WorkMeter(FakeClock())
    counted = [Counted("tasks", "", 1), Counted("task_latency_seconds", "", 1), Counted("9 bad", "", 1)]
    counted += [Counted("pages", "pages read", 2), Counted("pages_total", "", 5)]
    meter.finished("ocr", "m", "succeeded", latency_s=1.0, queue_wait_s=0.0, counted=counted)
    found = families(prometheus_text(Snapshot(0.0, 0.0, (), metrics=meter.view())).decode())
    assert [(s.name, s.value) for s in found["ris_tasks"][1]] == [("ris_tasks_total", 1)]
    assert found["ris_task_latency_seconds"][0] == "histogram"
    assert [(s.name, s.value) for s in found["ris_pages"][1]] == [("ris_pages_total", 2)]
    assert not any("bad" in name for name in found)
    assert meter.view().rates["ocr"]["tasks"] == 1 / 60  # finished tasks, not the plugin's "tasks"


def test_gpus_appear_with_memory_in_bytes_and_utilisation_as_a_ratio() -> None:
    text = prometheus_text(Snapshot(0.0, 0.0, ()), [GPUDevice(1, "H100", 2048, 4096, 55)]).decode()
    found = families(text)
    [busy] = found["ris_gpu_utilization_ratio"][1]
    assert busy.labels == {"gpu": "1", "name": "H100"} and busy.value == 0.55
    assert found["ris_gpu_memory_used_bytes"][1][0].value == 2048
    assert found["ris_gpu_memory_total_bytes"][1][0].value == 4096


@run
async def test_http_answers_are_counted_by_status_code_refusals_included(tmp_path: Path) -> None:
    """A 404 or 422 was in the access log only: an alert on bad requests had nothing to read."""
    import httpx

    from ris.api.app import create_app

    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        app = create_app(eng.config, eng)

        async def defect() -> None:
            raise RuntimeError("a defect of the server's")

        app.add_api_route("/defect", defect)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            assert (await client.get("/defect")).status_code == 500  # sent outside the counter
            assert (await client.get("/no/such/route")).status_code == 404
            assert (await client.post("/api/llm/generate", json={"max_tokens": -1})).status_code == 422
            assert (await client.get("/health")).status_code == 200
            text = (await client.get("/metrics")).text
    counted = {
        (s.labels["listener"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "ris_http_responses"
        for s in family.samples
    }
    assert counted == {("main", "500"): 1, ("main", "404"): 1, ("main", "422"): 1, ("main", "200"): 1}, (
        counted
    )
