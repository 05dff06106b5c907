"""The seed's resource_isolation_test: each lane's worker is bound as configured, read from the OS."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from ris import Client

from .server import Server

pytestmark = pytest.mark.slow


def test_each_worker_has_exactly_its_configured_affinity(server: Server) -> None:
    stats = server.stats()
    server_pid = server.proc.pid if server.proc else None
    for lane in ("llm", "tts"):
        cfg = server.config["lanes"][lane]
        pid = server.worker_pid(lane)
        proc = psutil.Process(pid)
        assert proc.ppid() == server_pid, f"{lane} worker is not a child of the server"
        assert sorted(proc.cpu_affinity()) == sorted(cfg["cores"]), lane
        # Named for `top` and `ps -o comm`, not `python` three times over.
        assert proc.name() == f"ris-{lane}"
        # What the worker reports seeing matches what the OS says.
        assert stats[lane]["worker"]["cpu_affinity"] == sorted(cfg["cores"])
        env = proc.environ()
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            assert env[var] == str(cfg["threads"]), (lane, var)
    assert len({server.worker_pid(lane) for lane in ("llm", "tts")} | {server_pid}) == 3


def test_tts_worker_sees_no_gpu(server: Server) -> None:
    env = psutil.Process(server.worker_pid("tts")).environ()
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert server.stats()["tts"]["worker"]["cuda_visible_devices"] == ""


def test_tts_completes_while_a_long_llm_generation_is_still_running(server: Server) -> None:
    first_token = threading.Event()
    llm_done_at: list[float] = []
    pieces: list[str] = []

    def long_generation() -> None:
        with Client(server.url, timeout=300, max_retries=0) as c:
            for piece in c.generate_stream(
                "Write a very long story about a lighthouse keeper.",
                max_tokens=800,
                ignore_eos=True,
                temperature=0.8,
            ):
                pieces.append(piece)
                first_token.set()
        llm_done_at.append(time.monotonic())

    thread = threading.Thread(target=long_generation)
    thread.start()
    try:
        assert first_token.wait(60), "the LLM produced no token"
        with Client(server.url, timeout=120, max_retries=0) as c:
            speech = c.synthesize("The speech lane does not wait for the language model.")
        tts_done_at = time.monotonic()
        assert speech.duration_s > 1.0
        assert not llm_done_at, "the generation ended before the speech was ready"
    finally:
        thread.join(300)
    assert llm_done_at and tts_done_at < llm_done_at[0]
    assert len(pieces) > 100
