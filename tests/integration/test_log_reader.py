"""A stalled log reader does not stop the server: `ris serve` as users run it (access log on),
its stdout and stderr pipes that nobody reads. Written on the event loop, the access log filled
the pipe after ~1,100 requests and the loop blocked in the write: every lane stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from ris.launch import free_port

from .waiting import wait_for

pytestmark = pytest.mark.slow
REQUESTS = 3000  # ~80 bytes of access log each: several times what a pipe holds (64 KiB)


def test_a_log_reader_that_stalls_does_not_stop_the_server(tmp_path: Path) -> None:
    port = free_port()
    config = {
        "data_dir": str(tmp_path / "data"),
        "server": {"port": port},
        "lanes": {
            "llm": {"cores": [0], "default_model": "noop", "models": {"noop": {"backend": "noop"}}},
            "tts": {"enabled": False},
            "image": {"enabled": False},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "ris", "serve", "--config", str(tmp_path / "config.json")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120)
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
