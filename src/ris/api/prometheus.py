"""/metrics: the engine's snapshot (and the machine's GPUs) in the Prometheus text format,
written by prometheus_client's exposition code.

Names follow Prometheus's conventions (https://prometheus.io/docs/practices/naming/): base units
in the name (`_seconds`, `_bytes`, `_ratio` for 0-1), counters end in `_total`, durations are
histograms (`_bucket{le=...}`, `_sum`, `_count`) that can be summed over lanes and models, and
build facts are an `_info` gauge of 1. A family with no sample (no GPU, no streamed output yet)
is left out rather than printed as a bare HELP/TYPE. docs/DEPLOYMENT_GUIDE.md lists them all.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ris import __version__
from ris.gpus import GPUDevice
from ris.messages import EngineFigures
from ris.preemption.policy import Activity
from ris.runtime.metrics import HistogramView
from ris.runtime.snapshot import Snapshot

log = logging.getLogger("ris.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LANE_MODEL = ["lane", "model"]
WORKER = ["lane", "replica"]

# name, help, the MetricsView field: each a histogram per lane and model.
HISTOGRAMS = (
    ("ris_task_latency_seconds", "submission to end of succeeded tasks", "latency"),
    ("ris_task_queue_wait_seconds", "submission to start of tasks that started", "queue_wait"),
    (
        "ris_time_to_first_output_seconds",
        "submission to a task's first streamed output: its first token (llm), its first audio chunk (tts)",
        "first_output",
    ),
    (
        "ris_inter_output_seconds",
        "time between two streamed outputs of a task: inter-token latency (llm), between audio chunks (tts), "
        "between two denoising steps, pauses included (image)",
        "output_gap",
    ),
)


OUTCOMES = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class ServerFacts:
    """The API process and its data folder, read when scraped: what an operator alerts on
    beside the lanes (a disk filling, the server's own memory near its ceiling, task records
    waiting for room on the disk). None: not known here."""

    resident_memory_bytes: int | None = None
    memory_limit_bytes: int | None = None  # server.memory_limit_mb (None: no ceiling)
    data_free_bytes: int | None = None
    held_writes: int = 0
    # Each enabled lane's configured models: their task counters start at 0, so an alert on
    # their increase sees the first failure after a start (a series born at 2 has none).
    models: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # HTTP answers since the start by (listener, status code) (api.response_counts).
    responses: Mapping[tuple[str, str], int] = field(default_factory=dict)


def prometheus_text(
    snapshot: Snapshot, gpus: Sequence[GPUDevice] = (), server: ServerFacts | None = None
) -> bytes:
    """The exposition (text format 0.0.4). Runs off the event loop: the snapshot is frozen."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(snapshot, gpus, server or ServerFacts()))
    # The API process's own process_* figures, as every Prometheus client exports them
    # (process_start_time_seconds, process_cpu_seconds_total, process_open_fds...): read from
    # /proc where it exists, nothing elsewhere.
    ProcessCollector(registry=registry)
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, snapshot: Snapshot, gpus: Sequence[GPUDevice], server: ServerFacts) -> None:
        self._snapshot = snapshot
        self._gpus = gpus
        self._server = server

    def collect(self) -> Iterator[Metric]:
        families = [*_build(), *_server(self._server), *_lanes(self._snapshot)]
        families += _work(self._snapshot, self._server.models)
        families += [*_workers(self._snapshot), *_engines(self._snapshot), *_gpus(self._gpus)]
        families += _counted(self._snapshot, {n for f in families for n in _sample_names(f)})
        return (f for f in families if f.samples)


def _build() -> list[Metric]:
    info = InfoMetricFamily("ris_build", "the running RIS version and Python")
    info.add_metric([], {"version": __version__, "python": platform.python_version()})
    return [info]


def _server(facts: ServerFacts) -> list[Metric]:
    rss = GaugeMetricFamily("ris_server_resident_memory_bytes", "resident memory of the API process")
    limit = GaugeMetricFamily(
        "ris_server_memory_limit_bytes",
        "the API process's memory ceiling (server.memory_limit_mb): past it new work gets 503",
    )
    free = GaugeMetricFamily(
        "ris_data_dir_free_bytes", "free space of the file system holding data_dir (507 storage_full at 0)"
    )
    held = GaugeMetricFamily(
        "ris_store_writes_held",
        "task records (a start, an end) the full disk refused, waiting to be written",
    )
    for family, value in (
        (rss, facts.resident_memory_bytes),
        (limit, facts.memory_limit_bytes),
        (free, facts.data_free_bytes),
        (held, facts.held_writes),
    ):
        if value is not None:
            family.add_metric([], value)
    answers = CounterMetricFamily(
        "ris_http_responses",
        "HTTP answers by status code since the server started (refusals before any task included), "
        "per listener: the main port, or the Ollama one",
        labels=["listener", "code"],
    )
    for (listener, code), n in sorted(facts.responses.items()):
        answers.add_metric([listener, code], n)
    return [rss, limit, free, held, answers]


def _lanes(snap: Snapshot) -> list[Metric]:
    enabled = GaugeMetricFamily("ris_lane_enabled", "1 for a lane the config enables", labels=["lane"])
    queued = GaugeMetricFamily("ris_tasks_queued", "tasks waiting in the lane's queue", labels=["lane"])
    running = GaugeMetricFamily("ris_tasks_running", "tasks the lane's workers run now", labels=["lane"])
    slots = GaugeMetricFamily("ris_lane_slots", "tasks the lane's ready workers run at once", labels=["lane"])
    limit = GaugeMetricFamily(
        "ris_lane_queue_limit", "tasks the lane's queue holds before refusing with 429", labels=["lane"]
    )
    rejected = CounterMetricFamily(
        "ris_tasks_rejected",
        "submissions refused with 429 because the lane's queue was full",
        labels=["lane"],
    )
    held = GaugeMetricFamily(
        "ris_lane_held",
        "1 while the lane's queue starts nothing (a durable lane with no room on the data folder's disk)",
        labels=["lane"],
    )
    activity = GaugeMetricFamily(
        "ris_lane_activity",
        "1 for what the lane's worker is doing now (idle, prefill, decode, busy), 0 for the others",
        labels=["lane", "activity"],
    )
    lent = GaugeMetricFamily(
        "ris_lane_lent_cores", "the lane's idle cores another lane's worker runs on now", labels=["lane"]
    )
    borrowed = GaugeMetricFamily(
        "ris_lane_borrowed_cores", "other lanes' idle cores the lane's workers run on now", labels=["lane"]
    )
    for lane in snap.lanes:
        s = lane.stats
        enabled.add_metric([lane.lane], 1 if lane.enabled else 0)
        if not lane.enabled:
            continue
        queued.add_metric([lane.lane], s.queued)
        running.add_metric([lane.lane], s.running)
        slots.add_metric([lane.lane], s.slots)
        limit.add_metric([lane.lane], lane.max_queue)
        rejected.add_metric([lane.lane], s.rejected)
        held.add_metric([lane.lane], 0 if s.held is None else 1)
        if lane.activity is not None:
            for state in Activity:
                activity.add_metric([lane.lane, state.name.lower()], 1 if state is lane.activity else 0)
        borrowed.add_metric([lane.lane], len({c for w in lane.workers for c in w.borrowed_cores or ()}))
        lent.add_metric([lane.lane], len(snap.lent_cores(lane)))
    return [enabled, queued, running, slots, limit, rejected, held, activity, lent, borrowed]


def _work(snap: Snapshot, models: Mapping[str, Sequence[str]]) -> list[Metric]:
    view = snap.metrics
    tasks = CounterMetricFamily(
        "ris_tasks",
        "finished tasks by outcome: succeeded, failed or cancelled",
        labels=["lane", "model", "outcome"],
    )
    counts = {
        (lane, model, outcome): 0 for lane, names in models.items() for model in names for outcome in OUTCOMES
    }
    counts.update(view.tasks)
    for (lane, model, outcome), n in sorted(counts.items()):
        tasks.add_metric([lane, model, outcome], n)
    failures = CounterMetricFamily(
        "ris_task_failures",
        "failed tasks by error code (the code of the API's error answer: worker_crashed, "
        "deadline_exceeded, gpu_out_of_memory...)",
        labels=["lane", "code"],
    )
    for (lane, code), n in sorted(view.failures.items()):
        failures.add_metric([lane, code], n)
    out: list[Metric] = [tasks, failures]
    for name, help_, kept_in in HISTOGRAMS:
        histogram = HistogramMetricFamily(name, help_, labels=LANE_MODEL)
        histograms: Mapping[tuple[str, str], HistogramView] = getattr(view, kept_in)
        for (lane, model), h in sorted(histograms.items()):
            histogram.add_metric([lane, model], _buckets(h), h.sum)
        out.append(histogram)
    loads = CounterMetricFamily(
        "ris_model_loads", "models loaded after their worker's start (on first use)", labels=LANE_MODEL
    )
    for (lane, model), n in sorted(snap.models.loads.items()):
        loads.add_metric([lane, model], n)
    unloads = CounterMetricFamily(
        "ris_model_unloads",
        "models unloaded: evicted (another needed the memory) or expired (idle past keep_alive)",
        labels=["lane", "model", "reason"],
    )
    for (lane, model, reason), n in sorted(snap.models.unloads.items()):
        unloads.add_metric([lane, model, reason], n)
    return [*out, loads, unloads]


def _counted(snap: Snapshot, taken: set[str]) -> list[Metric]:
    """A counter per kind of work the lanes count (Counted: tokens, audio seconds, steps...),
    named by its lane kind. One whose samples would bear the names of a built-in family (a
    plugin's Counted("tasks") beside ris_tasks_total) or of a counted family before it in name
    order, or a name Prometheus does not allow, is left out, logged once, rather than making
    the whole exposition invalid."""
    out: list[Metric] = []
    for counted in sorted(snap.metrics.counted.values(), key=lambda c: c.name):
        if not _METRIC_NAME.fullmatch(counted.name):
            _skip_once(counted.name, "a metric name is letters, digits and underscores")
            continue
        family = CounterMetricFamily(f"ris_{counted.name}", counted.help, labels=LANE_MODEL)
        if taken & _sample_names(family):
            _skip_once(counted.name, "its name is a built-in metric's")
            continue
        for (lane, model), value in sorted(counted.values.items()):
            family.add_metric([lane, model], value)
        out.append(family)
        taken |= _sample_names(family)  # two lane kinds' names may also meet ("x", "x_total")
    return out


# The series suffixes of each family type, as the text format writes them.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_SKIPPED: set[str] = set()
# The classic metric name (every scraper reads it; prometheus_client would quote others).
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _sample_names(family: Metric) -> set[str]:
    return {family.name, *(family.name + s for s in _SUFFIXES.get(family.type, ()))}


def _skip_once(name: str, why: str) -> None:
    if name not in _SKIPPED:
        _SKIPPED.add(name)
        log.warning("/metrics leaves out the counted work %r: %s", name, why)


def _buckets(h: HistogramView) -> list[tuple[str, float]]:
    bounds = [_le(b) for b in h.bounds] + ["+Inf"]
    return list(zip(bounds, h.counts, strict=True))


def _le(bound: float) -> str:
    """A bucket's bound as Prometheus's own clients write it (Go's float formatting: 1.0, 0.25)."""
    return repr(float(bound))


def _workers(snap: Snapshot) -> list[Metric]:
    up = GaugeMetricFamily("ris_worker_up", "1 when the worker is ready to take tasks", labels=WORKER)
    restarts = CounterMetricFamily(
        "ris_worker_restarts", "times the worker was started again since the server started", labels=WORKER
    )
    cpu = CounterMetricFamily(
        "ris_worker_cpu_seconds",
        "user and system CPU time of the worker process (restarts from 0 with the process)",
        labels=WORKER,
    )
    rss = GaugeMetricFamily(
        "ris_worker_resident_memory_bytes", "resident memory of the worker process", labels=WORKER
    )
    limit = GaugeMetricFamily(
        "ris_worker_memory_limit_bytes", "the resident memory the worker is killed past", labels=WORKER
    )
    gpu = GaugeMetricFamily(
        "ris_worker_gpu_memory_bytes", "GPU memory of the worker process (NVML)", labels=WORKER
    )
    for lane in snap.lanes:
        for i, w in enumerate(lane.workers):
            labels = [lane.lane, str(i)]
            up.add_metric(labels, 1 if w.state == "ready" else 0)
            restarts.add_metric(labels, w.restarts)
            measured = (
                (cpu, w.cpu_seconds),
                (rss, w.rss_bytes),
                (limit, w.memory_limit_bytes),
                (gpu, w.gpu_memory_bytes),
            )
            for family, value in measured:
                if value is not None:  # unknown (a dead worker, no NVML): no sample
                    family.add_metric(labels, value)
    return [up, restarts, cpu, rss, limit, gpu]


# An LLM worker's batching engine (messages.EngineFigures), as llama-server's /metrics has them:
# each field as ris_llm_engine_<field>, a counter or a gauge as its metadata says. Counters
# restart from 0 with the worker process.
ENGINE_FIELDS = dataclasses.fields(EngineFigures)


def _engines(snap: Snapshot) -> list[Metric]:
    families: list[CounterMetricFamily | GaugeMetricFamily] = [
        (GaugeMetricFamily if f.metadata["gauge"] else CounterMetricFamily)(
            f"ris_llm_engine_{f.name}", f.metadata["help"], labels=WORKER
        )
        for f in ENGINE_FIELDS
    ]
    for lane in snap.lanes:
        for i, w in enumerate(lane.workers):
            if w.engine is not None:
                for family, f in zip(families, ENGINE_FIELDS, strict=True):
                    family.add_metric([lane.lane, str(i)], w.engine[f.name])
    return list(families)


def _gpus(gpus: Sequence[GPUDevice]) -> list[Metric]:
    labels = ["gpu", "name"]
    busy = GaugeMetricFamily(
        "ris_gpu_utilization_ratio",
        "share of the last sample period the GPU was busy, 0-1 (NVML)",
        labels=labels,
    )
    used = GaugeMetricFamily(
        "ris_gpu_memory_used_bytes", "GPU memory in use by every process (NVML)", labels=labels
    )
    total = GaugeMetricFamily("ris_gpu_memory_total_bytes", "the GPU's memory (NVML)", labels=labels)
    for g in gpus:
        key = [str(g.index), g.name]
        if g.utilization_percent is not None:  # not said by NVML (MIG): no sample
            busy.add_metric(key, g.utilization_percent / 100)
        used.add_metric(key, g.memory_used_bytes)
        total.add_metric(key, g.memory_total_bytes)
    return [busy, used, total]


__all__ = ["CONTENT_TYPE", "ServerFacts", "prometheus_text"]
