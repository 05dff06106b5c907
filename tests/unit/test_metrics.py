"""The work counters and histograms behind /metrics and `ris status`: the pure accumulator on a
fake clock, the engine feeding it from a fake worker's messages, and the exposition text parsed
back as Prometheus would."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ris import messages as m
from ris.api.prometheus import ServerFacts, prometheus_text
from ris.gpus import GPUDevice
from ris.lanes import Lane
from ris.lanes.base import Counted
from ris.lanes.image import LANE as IMAGE
from ris.lanes.image import ImageRequest
from ris.lanes.llm import LANE as LLM
from ris.lanes.llm import LLMOutcome, LLMRequest, TextDelta
from ris.preemption.policy import Activity
from ris.runtime.metrics import MAX_FAILURE_SERIES, Histogram, WorkMeter
from ris.runtime.snapshot import LaneStatus, Snapshot, WorkerStatus
from ris.scheduler.scheduler import LaneStats

from .fakes import IMAGE_ON, FakeClock, client_with_a_defect, run, started_engine


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
    meter.started("llm", "a", 0.5)
    meter.started("llm", "a", 0.0)
    meter.finished("llm", "a", "succeeded", latency_s=2.0, counted=tokens)
    meter.finished("llm", "a", "succeeded", latency_s=4.0, counted=tokens)
    meter.finished("llm", "b", "cancelled", latency_s=9.0)
    meter.finished("llm", "b", "failed", latency_s=1.0, code="worker_crashed")
    meter.finished("llm", "b", "failed", latency_s=1.0, code=None)
    view = meter.view()
    assert view.tasks == {
        ("llm", "a", "succeeded"): 2,
        ("llm", "b", "cancelled"): 1,
        ("llm", "b", "failed"): 2,
    }
    assert view.failures == {("llm", "worker_crashed"): 1, ("llm", "other"): 1}
    # Latency of succeeded tasks only; queue wait of those that started.
    assert set(view.latency) == {("llm", "a")} and view.latency["llm", "a"].sum == 6.0
    assert view.queue_wait["llm", "a"].count == 2 and ("llm", "b") not in view.queue_wait
    assert view.counted["generated_tokens"].values == {("llm", "a"): 14}
    assert view.counted["prompt_tokens"].help == "prompt"


def test_failure_codes_past_the_cap_are_counted_together() -> None:
    """A plugin's backend may invent codes: their series stay bounded."""
    meter = WorkMeter(FakeClock())
    for i in range(MAX_FAILURE_SERIES + 5):
        meter.finished("x", "m", "failed", latency_s=None, code=f"code_{i}")
    failures = meter.view().failures
    assert len(failures) == MAX_FAILURE_SERIES + 1 and failures["x", "other"] == 5


def test_rates_cover_the_recent_window_and_forget_what_left_it() -> None:
    clock = FakeClock()
    meter = WorkMeter(clock, window_s=10.0)
    meter.finished("tts", "x", "succeeded", latency_s=1, counted=[Counted("audio_seconds", "", 4)])
    clock.advance(5)
    meter.finished("tts", "x", "failed", latency_s=1)
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
        meter.finished("llm", model, "succeeded", latency_s=1)
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


@run
async def test_a_wait_is_measured_when_the_task_starts_and_an_images_steps_are_timed(tmp_path: Path) -> None:
    """An image's queue wait reached /metrics only when it ended (up to its hour-long timeout
    later), its steps were timed nowhere, and a failure's code was nowhere either."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, clock):
        image = workers[Lane.IMAGE]
        picture = eng.submit(IMAGE, "i", ImageRequest(prompt="a"))
        clock.advance(2.0)
        image.ready()
        eng.check()
        waited = eng.snapshot().metrics.queue_wait["image", "i"]
        assert waited.count == 1 and waited.sum == pytest.approx(2.0)
        for step in (1, 2, 3):
            image.deliver(m.TaskProgress(picture.task_id, step, 3))
            clock.advance(0.5)
        image.deliver(m.TaskError(picture.task_id, "worker_timeout", "stuck"))
        await picture.done
        view = eng.snapshot().metrics
    steps = view.output_gap["image", "i"]
    assert steps.count == 2 and steps.sum == pytest.approx(1.0)
    assert {k: n for k, n in view.failures.items() if n} == {("image", "worker_timeout"): 1}


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
    meter.finished("ocr", "m", "succeeded", latency_s=1.0, counted=counted)
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
    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        async with client_with_a_defect(eng) as client:
            assert (await client.get("/defect")).status_code == 500  # sent outside the counter
            assert (await client.get("/no/such/route")).status_code == 404
            assert (await client.post("/api/llm/generate", json={"max_tokens": -1})).status_code == 422
            assert (await client.get("/api/stats")).status_code == 200
            # Probes are not counted: a load balancer polling /ready while a worker started
            # or restarted set off the 5xx alert (18 answers 503 before one server was ready).
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/ready")).status_code == 503  # the TTS worker is not up
            assert (await client.head("/ready")).status_code == 503
            # A probe that fails is counted as any failure.
            real_ready = eng.ready
            eng.ready = lambda: 1 / 0  # type: ignore[assignment,method-assign,return-value]
            assert (await client.get("/ready")).status_code == 500
            eng.ready = real_ready  # type: ignore[method-assign]
            scraped = await client.get("/metrics")  # httpx asks for gzip, as Prometheus does
            plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
            refused = await client.get("/metrics", headers={"Accept-Encoding": "*, gzip;q=0"})
            text = scraped.text
    assert scraped.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
    assert "content-encoding" not in refused.headers  # gzip;q=0: not gzip
    assert plain.text.startswith("# HELP") and scraped.num_bytes_downloaded < len(plain.content) / 3
    counted = {
        (s.labels["listener"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "ris_http_responses"
        for s in family.samples
    }
    assert {k: n for k, n in counted.items() if n} == {
        ("main", "500"): 2,
        ("main", "404"): 1,
        ("main", "422"): 1,
        ("main", "200"): 1,
    }, counted
    # The statuses alerts watch are there from 0: a series born at 1 shows no increase().
    assert {("main", code) for code in ("429", "502", "503", "504", "507")} <= set(counted)
    # The API process's own figures, as every Prometheus client exports them.
    assert {"process_cpu_seconds", "process_start_time_seconds", "process_open_fds"} <= set(families(text))


@run
async def test_ready_asks_only_the_lanes_named(tmp_path: Path) -> None:
    """/ready was all lanes or nothing: a restarting image worker (98 s under load) took a
    server whose chat and speech served out of a load balancer's rotation."""
    import httpx

    from ris.api.app import create_app

    async with started_engine(tmp_path) as (eng, workers, _):
        workers[Lane.LLM].ready()
        app = create_app(eng.config, eng)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            every = await client.get("/ready")
            llm = await client.get("/ready", params={"lane": "llm"})
            both = await client.get("/ready", params=[("lane", "llm"), ("lane", "tts")])
            wrong = await client.get("/ready", params={"lane": "chat"})
    assert every.status_code == 503 and every.json()["lanes"] == {"llm": True, "tts": False}
    assert llm.status_code == 200 and llm.json() == {"ready": True, "lanes": {"llm": True}}
    assert both.status_code == 503
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "unknown_lane"
    assert "enabled: llm, tts" in wrong.json()["error"]["message"]


def test_lent_cores_activity_and_a_held_lane_are_there_to_graph() -> None:
    """Lending, what a lane does and a lane held for disk room were in /api/stats and the
    console only: an operator could neither graph nor alert on them."""

    def lane(
        name: str,
        cores: tuple[int, ...],
        borrowed: tuple[int, ...] | None,
        held: str | None = None,
        lends: bool = False,
    ) -> LaneStatus:
        stats = LaneStats(name, 0, 0, 1, 0, 0, 0, None, None, None, None, None, held=held)
        worker = WorkerStatus("ready", borrowed_cores=borrowed)
        doing = None if held else Activity.DECODE  # the image lane's pool keeps no board
        return LaneStatus(name, True, "cpu", cores, 8, stats, (worker,), activity=doing, lends=lends)

    snap = Snapshot(
        0.0,
        0.0,
        (
            lane("llm", (0,), (1,)),
            lane("tts", (1,), None, lends=True),
            lane("image", (0, 1), None, held="disk_space"),
        ),
    )
    found = families(prometheus_text(snap).decode())

    def values(name: str) -> dict[tuple[str, ...], float]:
        return {
            (s.labels["lane"], *([s.labels["activity"]] if "activity" in s.labels else [])): s.value
            for s in found[name][1]
        }

    assert values("ris_lane_borrowed_cores") == {("llm",): 1, ("tts",): 0, ("image",): 0}
    # Core 1 is the TTS lane's, lent: the image lane shares both cores and lends none (it read
    # 1 there too, two cores lent for one borrowed).
    assert values("ris_lane_lent_cores") == {("llm",): 0, ("tts",): 1, ("image",): 0}
    assert values("ris_lane_held") == {("llm",): 0, ("tts",): 0, ("image",): 1}
    decode = {k: v for k, v in values("ris_lane_activity").items() if v == 1}
    assert decode == {("llm", "decode"): 1, ("tts", "decode"): 1}


@run
async def test_work_counters_and_the_servers_failure_codes_start_at_zero(tmp_path: Path) -> None:
    """ris_image_steps_total, ris_generated_tokens_total and ris_task_failures_total appeared
    at their first increase: `increase()` read 0 over a worker's first crash (a series born at
    2), and after a restart a counter came back only with its next task, hiding the reset (16,
    then 30: +14 where 30 were made). Each configured model's counters and each lane's server
    failures are there at 0 from the start."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        text = prometheus_text(eng.snapshot(), (), ServerFacts()).decode()
    found = families(text)

    def zero(name: str, **labels: str) -> bool:
        return any(s.labels == labels and s.value == 0 for s in found[name][1])

    assert zero("ris_generated_tokens", lane="llm", model="m") and zero(
        "ris_prompt_tokens", lane="llm", model="m"
    )
    assert zero("ris_audio_seconds", lane="tts", model="e") and zero(
        "ris_image_steps", lane="image", model="i"
    )
    for lane in ("llm", "tts", "image"):
        assert zero("ris_task_failures", lane=lane, code="worker_crashed"), lane
    assert not any(
        s.labels.get("code") == "unknown_voice" for s in found["ris_task_failures"][1]
    )  # a client's


def test_the_example_alert_rules_read_only_metrics_the_server_exports() -> None:
    """examples/prometheus/ris-alerts.yml names metrics by hand: each `ris_` family it reads is
    one the exporter writes (a renamed metric makes an alert that never fires, silently). Where
    promtool is installed, it checks the rules too."""
    import re
    import shutil
    import subprocess

    import yaml

    import ris.api.prometheus
    from ris.lanes import kinds

    rules_file = Path(__file__).parents[2] / "examples" / "prometheus" / "ris-alerts.yml"
    rules = [r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    read = {n for r in rules for n in re.findall(r"\bris[_:][a-z0-9_:]+", r["expr"])} - recorded
    families_read = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in read}
    exporter = Path(ris.api.prometheus.__file__).read_text()
    written = set(re.findall(r'"(ris_[a-z0-9_]+)"', exporter))
    written |= {f"ris_{c.name}" for k in kinds().values() for c in k.counters}
    assert "ris_worker_up" in written and "ris_generated_tokens" in written  # the scan reads names
    assert families_read and families_read <= written, sorted(families_read - written)
    # The server-failure alert watches the codes whose series start at 0, all of them.
    from ris.failures import SERVER_FAILURES

    failures = next(r["expr"] for r in rules if r.get("alert") == "RISServerFailures")
    watched = re.search(r'code=~\s*"([^"]+)"', failures)
    assert watched is not None and set(watched.group(1).split("|")) == set(SERVER_FAILURES)
    if shutil.which("promtool"):
        checked = subprocess.run(
            ["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_an_llm_workers_engine_figures_are_exported_per_worker() -> None:
    """What llama-server's /metrics tells its users (decode calls, prompt tokens computed and
    reused, the KV cache's use) comes from the heartbeat's engine figures, per worker; a worker
    that counts none has no sample, not a zero."""
    figures = m.EngineFigures(
        decode_steps=10,
        batched_tokens=130,
        prompt_tokens=120,
        reused_prompt_tokens=300,
        generated_tokens=14,
        sequences=2,
        kv_cache_tokens=450,
        kv_cache_capacity_tokens=16384,
    )
    stats = LaneStats("llm", 0, 0, 1, 0, 0, 0, None, None, None, None, None)
    workers = (WorkerStatus("ready", engine=dataclasses.asdict(figures)), WorkerStatus("ready"))
    snap = Snapshot(0.0, 0.0, (LaneStatus("llm", True, "cpu", (0,), 8, stats, workers),))
    found = families(prometheus_text(snap).decode())
    assert found["ris_llm_engine_generated_tokens"][0] == "counter"
    assert found["ris_llm_engine_kv_cache_tokens"][0] == "gauge"
    samples = {
        (s.name, s.labels["replica"]): s.value
        for name, (_kind, xs) in found.items()
        if name.startswith("ris_llm_engine_")
        for s in xs
    }
    assert samples == {
        ("ris_llm_engine_decode_steps_total", "0"): 10,
        ("ris_llm_engine_batched_tokens_total", "0"): 130,
        ("ris_llm_engine_prompt_tokens_total", "0"): 120,
        ("ris_llm_engine_reused_prompt_tokens_total", "0"): 300,
        ("ris_llm_engine_generated_tokens_total", "0"): 14,
        ("ris_llm_engine_sequences", "0"): 2,
        ("ris_llm_engine_kv_cache_tokens", "0"): 450,
        ("ris_llm_engine_kv_cache_capacity_tokens", "0"): 16384,
    }


@run
async def test_a_crashed_workers_engine_figures_go_with_it(tmp_path: Path) -> None:
    """The figures are the process's (its counters from 0): after a crash its successor's are
    shown once it says them, never the dead one's as if they were the new one's."""
    async with started_engine(tmp_path) as (eng, workers, clock):
        llm = workers[Lane.LLM]
        llm.ready()
        llm.deliver(m.Heartbeat(3, engine=m.EngineFigures(decode_steps=40, kv_cache_capacity_tokens=2048)))

        def engine() -> dict[str, int] | None:
            return eng.snapshot().lane(Lane.LLM).workers[0].engine

        assert engine() == dataclasses.asdict(m.EngineFigures(decode_steps=40, kv_cache_capacity_tokens=2048))
        llm.die()
        eng.check()
        clock.advance(1.0)
        eng.check()
        llm.ready()
        assert engine() is None
        llm.deliver(m.Heartbeat(1, engine=m.EngineFigures(decode_steps=2, kv_cache_capacity_tokens=2048)))
        assert engine() is not None and engine()["decode_steps"] == 2  # type: ignore[index]
