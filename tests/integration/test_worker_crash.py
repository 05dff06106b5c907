"""A lane's worker dies: its task fails with a clear code, the worker comes back, the other
lane is not disturbed, and /ready tells the truth meanwhile."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ris import Client

from .server import Server, kill, make_config
from .waiting import post_in_background, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("crash")
    cfg = make_config(
        tmp,
        tts={"heartbeat_timeout_s": 2.0},
        llm={"heartbeat_timeout_s": 2.0, "busy_timeout_s": 2.0},
    )
    srv = Server(tmp, cfg).start()
    yield srv
    srv.stop()


def ready(srv: Server) -> dict[str, bool]:
    return dict(httpx.get(f"{srv.url}/ready", timeout=5).json()["lanes"])


def long_generation_running(srv: Server) -> tuple[int, threading.Thread, list[httpx.Response]]:
    """The LLM worker's pid, once a 1,500-token generation runs on it; the generation's
    response lands in the returned list."""
    pid = srv.worker_pid("llm")
    body = {"prompt": "A long tale:", "max_tokens": 1500, "ignore_eos": True}
    t, result = post_in_background(f"{srv.url}/api/llm/generate", body, timeout=120)
    with Client(srv.url, max_retries=0) as c:
        wait_for(lambda: c.tasks(lane="llm", state="running"), 30)
    return pid, t, result


def test_llm_worker_killed_mid_generation(crash_server: Server) -> None:
    srv = crash_server
    old_pid, t, result = long_generation_running(srv)
    with Client(srv.url, max_retries=0) as c:
        kill(old_pid)
        t.join(15)
        assert result, "the in-flight request did not end within 15 s"
        r = result[0]
        assert r.status_code == 503 and r.json()["error"]["code"] == "worker_crashed"
        # How it died, said (it was "the llm worker process died", kill or crash alike) ...
        assert "(killed by SIGKILL: a kill -9, or the kernel's OOM killer" in r.json()["error"]["message"]
        # ... and not to be sent again: it may be what killed the worker (OpenAI's SDKs obey).
        assert r.headers["x-should-retry"] == "false" and "Retry-After" not in r.headers
        wait_for(lambda: not ready(srv)["llm"], 5)
        # Speech is untouched while the LLM lane recovers.
        assert c.synthesize("Still speaking.").duration_s > 0.3
        wait_for(lambda: ready(srv)["llm"], 60)
        assert srv.worker_pid("llm") != old_pid
        assert c.generate("Hello", max_tokens=3, ignore_eos=True).usage["completion_tokens"] == 3
        assert srv.stats()["llm"]["worker"]["restarts"] == 1


def test_hung_tts_worker_is_replaced(crash_server: Server) -> None:
    srv = crash_server
    old_pid = srv.worker_pid("tts")
    kill(old_pid, signal.SIGSTOP)
    try:
        took = wait_for(lambda: not ready(srv)["tts"], 10)
        assert took < 2.0 + 3.0  # heartbeat timeout plus the monitor's period
    finally:
        try:
            kill(old_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    wait_for(lambda: ready(srv)["tts"], 60)
    with Client(srv.url, max_retries=0) as c:
        assert c.synthesize("Back again.").duration_s > 0.3
    assert srv.worker_pid("tts") != old_pid


def test_image_worker_killed_mid_task(crash_server: Server) -> None:
    srv = crash_server
    old_pid = srv.worker_pid("image")
    with Client(srv.url, max_retries=0) as c:
        task_id = c.generate_image("x", width=256, height=256, steps=100)["task_id"]
        wait_for(lambda: c.progress(task_id)["status"] == "running", 30)
        kill(old_pid)
        took = wait_for(lambda: c.progress(task_id)["status"] == "failed", 15)
        assert took < 15
        assert c.progress(task_id)["error"]["code"] == "worker_crashed"
        wait_for(lambda: ready(srv)["image"], 60)
        assert srv.worker_pid("image") != old_pid
        png = c.image("y", width=64, height=64, steps=2)
        assert png[:4] == b"\x89PNG"


def test_stopped_llm_worker_times_out_its_task_and_is_replaced(crash_server: Server) -> None:
    srv = crash_server
    old_pid, t, result = long_generation_running(srv)
    kill(old_pid, signal.SIGSTOP)
    start = time.monotonic()
    t.join(2.0 + 5.0 + 1.0)  # heartbeat timeout + 5 s (+1 s for the client)
    assert result, f"no answer {time.monotonic() - start:.1f} s after the worker stopped"
    assert result[0].status_code == 504 and result[0].json()["error"]["code"] == "worker_timeout"
    wait_for(lambda: ready(srv)["llm"], 60)
    assert srv.worker_pid("llm") != old_pid
    assert not psutil_alive(old_pid)


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_tts_worker_killed_mid_synthesis(crash_server: Server) -> None:
    srv = crash_server
    old_pid = srv.worker_pid("tts")
    text = "This is a long passage that keeps the speech lane busy for a while. " * 40
    t, result = post_in_background(f"{srv.url}/api/tts/synthesize", {"text": text, "voice": "en-US"}, 120)
    with Client(srv.url, max_retries=0) as c:
        wait_for(lambda: c.tasks(lane="tts", state="running"), 30)
        kill(old_pid)
        t.join(15)
        assert result and result[0].json()["error"]["code"] == "worker_crashed"
        wait_for(lambda: ready(srv)["tts"], 60)
        assert c.synthesize("Recovered.").duration_s > 0.3


def test_speech_asked_as_the_tts_worker_dies_waits_for_its_successor(crash_server: Server) -> None:
    """A request that came between the worker's death and the supervision pass that finds it
    (up to 0.25 s) was sent into the dead pipe and failed with worker_crashed, marked not to be
    retried, though it never ran; and streamed speech asked while the worker restarted was a 503
    (its sample rate unknown). Both wait for the new worker now."""
    srv = crash_server
    wait_for(lambda: ready(srv)["tts"], 60)
    body = {"model": "tts-1", "input": "Hello there.", "voice": "alloy", "response_format": "wav"}
    pid = srv.worker_pid("tts")
    kill(pid)
    # Once it is a zombie its pipe is closed: a request sent before that (while the kernel tears
    # down a killed process's memory, a few ms) reached a worker not known dead, as any would.
    deadline = time.monotonic() + 5
    while psutil_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.001)
    answers = [httpx.post(f"{srv.url}/v1/audio/speech", json=body, timeout=60) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200], [r.text[:200] for r in answers]
    assert all(r.content[:4] == b"RIFF" and len(r.content) > 1000 for r in answers)


def test_a_pause_of_the_server_itself_replaces_no_worker(crash_server: Server) -> None:
    """SIGSTOP of the API process past the workers' heartbeat timeout (2 s here; a paused
    container, a VM, swapping): its supervision pass ran before the heartbeats waiting in the
    pipes were read, and every healthy worker was declared hung, replaced, its tasks failed."""
    srv = crash_server
    wait_for(lambda: all(ready(srv).values()), 60)
    pids = {lane: srv.worker_pid(lane) for lane in ("llm", "tts")}
    assert srv.proc is not None
    kill(srv.proc.pid, signal.SIGSTOP)
    time.sleep(3.5)
    kill(srv.proc.pid, signal.SIGCONT)
    time.sleep(1.5)  # several supervision passes
    assert {lane: srv.worker_pid(lane) for lane in pids} == pids
    with Client(srv.url, max_retries=0) as c:
        assert c.synthesize("Still here.").duration_s > 0.3


def test_long_work_that_makes_progress_is_never_killed(crash_server: Server) -> None:
    # busy_timeout_s is 2 s on this server; this generation runs far longer, token by token.
    with Client(crash_server.url, max_retries=0, timeout=120) as c:
        pid = crash_server.worker_pid("llm")
        gen = c.generate("A long tale:", max_tokens=300, ignore_eos=True)
        assert gen.usage["completion_tokens"] == 300 and (gen.timings["total_ms"] or 0) > 2000
        assert crash_server.worker_pid("llm") == pid
