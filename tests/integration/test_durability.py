"""Image tasks survive SIGKILL of the server: every accepted id can be polled after a restart,
queued tasks complete, a task that was running is re-run once and then fails with a clear code."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ris import Client

from .server import Server, make_config
from .waiting import wait_state

pytestmark = pytest.mark.slow

LONG: dict[str, Any] = {"prompt": "long", "width": 256, "height": 256, "steps": 100}
SMALL: dict[str, Any] = {"prompt": "small", "width": 64, "height": 64, "steps": 3}


def sigkill_server(srv: Server) -> None:
    assert srv.proc is not None
    children = psutil.Process(srv.proc.pid).children(recursive=True)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(10)
    srv.proc = None
    # Orphaned workers notice the broken pipe and exit by themselves.
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"workers outlived a killed server: {[p.pid for p in alive]}"


def test_tasks_survive_sigkill_and_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    srv = Server(tmp_path, config).start()
    try:
        with Client(srv.url, max_retries=0) as c:
            long_id = c.generate_image(**LONG)["task_id"]
            wait_state(c, long_id, ("running",))
            queued = [c.generate_image(**SMALL, seed=i)["task_id"] for i in range(3)]
            assert [c.progress(t)["status"] for t in queued] == ["queued"] * 3
    finally:
        sigkill_server(srv)

    # Second life: everything is still known; the interrupted task runs again first.
    srv = Server(tmp_path, config).start()
    try:
        with Client(srv.url, max_retries=0) as c:
            for t in [long_id, *queued]:
                assert c.progress(t)["status"] in ("queued", "running")
            wait_state(c, long_id, ("running",))
    finally:
        sigkill_server(srv)

    # Third life: the task interrupted twice fails with a clear code; the queued ones complete.
    srv = Server(tmp_path, config).start()
    try:
        with Client(srv.url, max_retries=0) as c:
            final = c.progress(long_id)
            assert final["status"] == "failed" and final["error"]["code"] == "interrupted"
            for t in queued:
                c.wait(t, timeout=120)
                assert c.result(t)[:8] == b"\x89PNG\r\n\x1a\n"
            statuses = {t["task_id"]: t["status"] for t in c.image_tasks()}
            assert statuses[long_id] == "failed"
            assert all(statuses[t] == "succeeded" for t in queued)
            assert "running" not in statuses.values()
            r = httpx.get(f"{srv.url}/api/tasks/{queued[0]}", timeout=10)
            assert r.status_code == 200 and r.json()["state"] == "succeeded"
    finally:
        srv.stop()


def test_speech_stays_reachable_across_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, llm={"enabled": False}, image={"enabled": False})
    srv = Server(tmp_path, config).start()
    try:
        r = httpx.post(f"{srv.url}/api/tts/synthesize", json={"text": "Kept across restarts."}, timeout=60)
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]
        wav = httpx.get(f"{srv.url}/api/tts/audio/{task_id}").content
        assert wav[:4] == b"RIFF" and len(wav) > 1000
    finally:
        sigkill_server(srv)
    srv = Server(tmp_path, config).start()
    try:
        again = httpx.get(f"{srv.url}/api/tts/audio/{task_id}")
        assert again.status_code == 200 and again.content == wav
        assert httpx.get(f"{srv.url}/api/tasks/{task_id}").json()["state"] == "succeeded"
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, getattr(signal, "SIGHUP", signal.SIGINT)], ids=["sigint", "sighup"]
)
def test_ctrl_c_reaching_every_process_of_the_service_sets_a_running_image_aside(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """Ctrl-C in a terminal signals the workers with the server, as a closed terminal's hangup
    does. A worker that died of it first had its running image failed as a crash, for good;
    workers leave SIGINT and SIGHUP to the server, which sets the image aside for the next
    start. (A service manager stops the server alone: systemd's KillMode=mixed, in the
    deployment guide's unit.)"""
    config, srv, long_id = _image_running(tmp_path)
    try:
        assert srv.proc is not None
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        for proc in workers:  # the workers first, and the server told a moment later: a
            proc.send_signal(sig)  # worker that died meanwhile failed its task
        psutil.wait_procs(workers, timeout=2)  # the engine looks at its workers every 0.25 s
    finally:
        srv.stop()  # the server's own stop; every worker gone with it, checked
    _set_aside_for_the_next_start(tmp_path, config, long_id)


def _image_running(tmp_path: Path) -> tuple[dict[str, Any], Server, str]:
    """A server of the image lane alone, running a long image: its config, itself, the id."""
    config = make_config(tmp_path, llm={"enabled": False}, tts={"enabled": False})
    srv = Server(tmp_path, config).start()
    with Client(srv.url, max_retries=0) as c:
        long_id = c.generate_image(**LONG)["task_id"]
        wait_state(c, long_id, ("running",))
    return config, srv, long_id


def _set_aside_for_the_next_start(tmp_path: Path, config: dict[str, Any], long_id: str) -> None:
    """The image that ran at the stop is run again at the next start (or finished during the
    stop, its worker reading no Shutdown mid-image): anything but failed."""
    srv = Server(tmp_path, config).start()
    try:
        with Client(srv.url, max_retries=0) as c:
            assert c.progress(long_id)["status"] in ("queued", "running", "succeeded"), c.progress(long_id)
    finally:
        srv.stop()


def test_sigterm_to_the_whole_process_group_sets_a_running_image_aside(tmp_path: Path) -> None:
    """systemd's default KillMode (control-group), `kill -- -PGID`: SIGTERM reaches the server
    and its workers together, and a worker ends at once by it. Seen as a crash, the running
    image failed for good and the worker was restarted into the stop; the server, told first,
    leaves the dead worker to the stop, which sets the image aside for the next start."""
    config, srv, long_id = _image_running(tmp_path)
    try:
        assert srv.proc is not None
        # A client waiting on its connection for a picture: the server's stop waits for its
        # answer (up to uvicorn's grace), and the supervisor's passes go on meanwhile.
        waiter = threading.Thread(
            target=lambda: httpx.post(
                f"{srv.url}/v1/images/generations", json={"prompt": "w", "size": "256x256"}, timeout=60
            ),
            daemon=True,
        )
        waiter.start()
        time.sleep(1.0)
        workers = psutil.Process(srv.proc.pid).children(recursive=True)
        srv.proc.send_signal(signal.SIGTERM)  # the group's members, in the kernel's order
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        code, srv.proc = srv.proc.wait(30), None
        assert code == -signal.SIGTERM, srv.log()  # uvicorn raises the signal again once stopped
        assert not psutil.wait_procs(workers, timeout=10)[1]
        assert "restarting the image worker" not in srv.log() and "worker process died" not in srv.log()
    finally:
        srv.stop()
    _set_aside_for_the_next_start(tmp_path, config, long_id)
