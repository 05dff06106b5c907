"""A stalled log reader does not stop the server: `ris serve` as users run it (access log on),
its stdout and stderr pipes that nobody reads. Written on the event loop, the access log filled
the pipe after ~1,100 requests and the loop blocked in the write: every lane stopped. The lines
are written by a thread since, and a server stopped by SIGTERM still writes its last ones."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from ris.launch import free_port

from .waiting import wait_for

pytestmark = pytest.mark.slow
REQUESTS = 3000  # ~80 bytes of access log each: several times what a pipe holds (64 KiB)


def _config(tmp_path: Path, log_probes: bool = True) -> tuple[list[str], str]:
    """`ris serve` on a no-op LLM lane alone, as users run it (log level info), and its URL."""
    port = free_port()
    config = {
        "data_dir": str(tmp_path / "data"),
        # Every probe written, as these tests read /health's lines (by default they are not).
        "server": {"port": port, "log_probes": log_probes},
        "lanes": {
            "llm": {"cores": [0], "default_model": "noop", "models": {"noop": {"backend": "noop"}}},
            "tts": {"enabled": False},
            "image": {"enabled": False},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    return [
        sys.executable,
        "-m",
        "ris",
        "serve",
        "--config",
        str(tmp_path / "config.json"),
    ], f"http://127.0.0.1:{port}"


def _wait_ready(url: str) -> None:
    def ready() -> bool:
        try:
            return httpx.get(f"{url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 120)


def test_a_log_reader_that_stalls_does_not_stop_the_server(tmp_path: Path) -> None:
    command, url = _config(tmp_path)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        _wait_ready(url)
        with httpx.Client(base_url=url, timeout=10) as http:
            for i in range(REQUESTS):
                assert http.get("/health").status_code == 200, i
            r = http.post("/api/llm/generate", json={"prompt": "x", "max_tokens": 1})
            assert r.status_code == 200, r.text  # a lane's work too
    finally:
        proc.kill()
        out, err = proc.communicate(timeout=30)
    # The lines were written all the same, as far as the pipe took them, by the writer thread.
    assert b'"GET /health HTTP/1.1" 200' in out
    assert b"Application startup complete" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_a_server_stopped_by_sigterm_writes_its_last_lines(tmp_path: Path, sig: signal.Signals) -> None:
    # uvicorn raises the signal again once shut down, which ends the process where it stands:
    # the queue is written out before that. A hangup (the terminal that started it closed)
    # killed it at once, with no shutdown and no last lines: now it stops as SIGTERM does.
    command, url = _config(tmp_path)
    logs: dict[str, Any] = {name: (tmp_path / f"{name}.log").open("wb") for name in ("out", "err")}
    # A hangup left ignored by whoever started the tests (nohup: a child inherits it, and the
    # server then leaves it ignored, as it should) is made the default again for the server.
    proc = subprocess.Popen(
        command,
        stdout=logs["out"],
        stderr=logs["err"],
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        _wait_ready(url)
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        proc.send_signal(sig)
        assert proc.wait(60) == -sig  # as before: ended by the signal it was sent
    finally:
        proc.kill()
        proc.wait()
        for f in logs.values():
            f.close()
    err = (tmp_path / "err.log").read_text()
    assert "Application shutdown complete" in err and "Finished server process" in err
    access = next(line for line in (tmp_path / "out.log").read_text().splitlines() if "GET /health" in line)
    assert '"GET /health HTTP/1.1" 200' in access
    # Each line says when, as RIS's own lines do ("2026-12-07 05:12:00,123 INFO: ...").
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO", access), access
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO", err.splitlines()[-1]), err[-300:]


def test_probes_that_found_the_server_well_are_not_in_the_access_log(tmp_path: Path) -> None:
    """A monitor's poll of /health, /ready and /metrics wrote a line each time (121 lines in
    14 s); quieting them took --log-level warning, which dropped the lifecycle lines too."""
    command, url = _config(tmp_path, log_probes=False)
    out = (tmp_path / "out.log").open("wb")
    proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        _wait_ready(url)
        for path in ("/health", "/ready", "/metrics", "/api/models"):
            httpx.get(f"{url}{path}", timeout=10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        proc.kill()
        proc.wait()
        out.close()
    log = (tmp_path / "out.log").read_text()
    assert '"GET /api/models HTTP/1.1" 200' in log and "Application startup complete" in log
    assert "GET /health" not in log and '"GET /ready HTTP/1.1" 200' not in log
    assert '"GET /metrics HTTP/1.1" 200' not in log
