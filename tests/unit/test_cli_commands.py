"""`ris test isolation` finds the description's resource isolation test in this checkout;
`ris pull --list` prints the catalogue."""

from __future__ import annotations

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
