"""`ris test isolation` finds the description's resource isolation test in this checkout;
`ris pull --list` prints the catalogue; a reader that leaves early gets no traceback."""

from __future__ import annotations

import json
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


def test_ordinary_bad_input_is_a_message_and_exit_1_or_2_never_a_traceback(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    utf16 = folder / "config.json"
    utf16.write_text('{"server": {"port": 8080}}', encoding="utf-16")  # PowerShell 5.1's `>`
    not_a_dir = folder / "a-file"
    not_a_dir.write_text("x")
    from ris.config.defaults import default_config

    ollama = default_config().model_dump(mode="json")
    ollama["server"].update(port=8080, ollama_port=11434)
    with_ollama = folder / "ollama.json"
    with_ollama.write_text(json.dumps(ollama))
    for args, code, said in [
        (("serve", "--port", "70000"), 2, "70000 is not a TCP port"),
        (("config", "--port", "-1"), 2, "-1 is not a TCP port"),
        (("config", "--config", str(utf16)), 2, "not UTF-8 text"),  # a config error: 2
        (("pull", "qwen2.5", "--config", str(utf16)), 1, "not UTF-8 text"),
        (("serve", "--data-dir", str(not_a_dir / "data")), 1, "cannot use the data folder"),
        # --port checked with the rest of the server's settings, not by a failed bind later
        (("config", "--config", str(with_ollama), "--port", "11434"), 2, "11434 is server.port too"),
    ]:
        done = ris(*args)
        assert done.returncode == code and said in done.stderr, (args, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, args


def test_status_told_no_by_the_server_says_so_not_cannot_reach() -> None:
    """A server that needs a key answered: 'cannot reach' would send the user looking at the network."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class NeedsKey(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = json.dumps({"error": {"code": "unauthorized", "message": "this server needs an API key"}})
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NeedsKey)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        env = {k: v for k, v in os.environ.items() if k != "RIS_API_KEY"}
        done = subprocess.run(
            [sys.executable, "-m", "ris", "status", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env=env,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 1, done.stderr
    assert "cannot reach" not in done.stderr and "401 unauthorized" in done.stderr, done.stderr
    assert "--api-key" in done.stderr and "Traceback" not in done.stderr
