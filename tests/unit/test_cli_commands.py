"""`ris test isolation` finds the description's resource isolation test in this checkout;
`ris pull --list` prints the catalogue; a reader that leaves early gets no traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def ris(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ris", *args], capture_output=True, text=True, timeout=120, cwd="/"
    )


def test_ris_test_isolation_runs_the_isolation_test() -> None:
    done = ris("test", "isolation", "--collect-only", "-q", "-p", "no:cacheprovider")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_tts_worker_sees_no_gpu" in done.stdout and "test_resource_isolation.py" in done.stdout


def test_ris_pull_list() -> None:
    done = ris("pull", "--list")
    assert done.returncode == 0
    for name in ("qwen2.5", "llama3.2:1b", "sdxl-turbo", "piper:zh_CN-huayan-medium", "mobilediffusion"):
        assert name in done.stdout


def test_output_into_a_pipe_whose_reader_left_ends_quietly() -> None:
    """`ris pull --list | head -1` without the server `ris status` needs (its own test with a
    live server is in tests/integration/test_ops.py): no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)  # gone before the first byte: every write meets EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ris", "pull", "--list"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            cwd="/",
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")
