"""`ris test isolation` finds the description's resource isolation test in this checkout;
`ris pull --list` prints the catalogue; a reader that leaves early gets no traceback; `ris
status` says who answered what, against a stand-in server."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from ris.runtime import data_lock


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


def test_cli_slips_are_said_in_words() -> None:
    """`ris pull` alone printed the catalogue and exited 2 saying nothing; `--url localhost:1`
    read as "unsupported protocol 'localhost://'"."""
    done = ris("pull")
    assert done.returncode == 2 and "ris pull: name a model to pull" in done.stderr, done.stderr
    done = ris("status", "--url", "localhost:1")
    assert done.returncode == 1 and "cannot reach http://localhost:1" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://127.0.0.1:99999", "the port must be a number from 1 to 65535"),
        ("localhost:8x", "the port must be a number from 1 to 65535"),
        (":8080", "names no host"),
        ("ftp://localhost", "must be http:// or https://"),
        ("http://[::1", "is not a URL"),
        # httpx sent these as Basic credentials in place of the key; the password was echoed.
        ("http://user:pw@127.0.0.1:8080", "carries a user name or password"),
    ],
)
def test_a_url_that_cannot_be_a_server_is_a_usage_error_not_cannot_reach(url: str, said: str) -> None:
    """Port 99999 read "cannot reach ...: Connection refused", as if the server were down."""
    from ris.cli import main

    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["status", "--url", url])
    assert exit_.value.code == 2 and said in err.getvalue(), err.getvalue()
    assert "pw" not in err.getvalue()


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


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="Linux's always-full device")
def test_output_onto_a_full_disk_is_a_line_not_a_traceback() -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "ris", "pull", "--list"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "ris: the output could not be written: No space left on device" in done.stderr


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
        (("serve", "--data-dir", str(not_a_dir)), 1, "it is a file, not a folder"),  # was "File exists"
        # --port checked with the rest of the server's settings, not by a failed bind later
        (("config", "--config", str(with_ollama), "--port", "11434"), 2, "11434 is server.port too"),
    ]:
        done = ris(*args)
        assert done.returncode == code and said in done.stderr, (args, done.returncode, done.stderr)
        assert "Traceback" not in done.stderr, args


@contextlib.contextmanager
def answering(status: int, body: bytes, content_type: str = "application/json") -> Iterator[str]:
    """A server at the URL given that answers every GET with `status` and `body`."""

    class Fixed(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Fixed)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def refusal(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def test_status_told_no_by_the_server_says_so_not_cannot_reach() -> None:
    """A server that needs a key answered: 'cannot reach' would send the user looking at the network."""
    with answering(401, refusal("unauthorized", "this server needs an API key")) as url:
        env = {k: v for k, v in os.environ.items() if k != "RIS_API_KEY"}
        done = subprocess.run(
            [sys.executable, "-m", "ris", "status", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env=env,
        )
    assert done.returncode == 1, done.stderr
    assert "cannot reach" not in done.stderr and "401 unauthorized" in done.stderr, done.stderr
    assert "--api-key" in done.stderr and "Traceback" not in done.stderr


def status(url: str, *flags: str) -> tuple[int, str, str]:
    """`ris status --url URL` in this process: its exit status, stdout and stderr."""
    from ris.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["status", "--url", url, *flags])
    return code, out.getvalue(), err.getvalue()


def test_status_says_what_to_do_about_each_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Host the server does not serve is not a missing key: --api-key would not help."""
    monkeypatch.delenv("RIS_API_KEY", raising=False)
    foreign = refusal(
        "host_not_allowed", "Host 'box' is not served here; allowed: localhost (server.allowed_hosts)"
    )
    with answering(403, foreign) as url:
        code, _, err = status(url)
    assert code == 1 and "403 host_not_allowed" in err, err
    assert "--api-key" not in err and "add the URL's host to the server's server.allowed_hosts" in err
    with answering(401, refusal("unauthorized", "this server needs an API key")) as url:
        code, _, err = status(url, "--api-key", "wrong")
    assert code == 1 and "the key given was refused" in err, err


def test_status_of_another_service_says_it_is_not_a_ris_server() -> None:
    """A 200 that is not /api/stats' JSON (another service on that port): reached, so not
    'cannot reach ...: Expecting value'."""
    for body, content_type in (
        (b"<html><body>Welcome to nginx!</body></html>", "text/html"),
        (b'{"status": "ok"}', "application/json"),
    ):
        with answering(200, body, content_type) as url:
            code, out, err = status(url)
        assert code == 1 and out == "", err
        assert "answered, but not as a RIS server" in err and "cannot reach" not in err, err
    # Its error page (a wrong path, another server's 404) is named by its status, not printed.
    page = b"<html><body><h1>404 Not Found</h1>" + b"x" * 400 + b"</body></html>"
    with answering(404, page, "text/html") as url:
        code, out, err = status(url)
    assert code == 1 and "answered HTTP 404, but not as a RIS server" in err and "<html>" not in err, err


WORKER = {"state": "ready", "pid": 4242, "cpu_affinity": [0], "cpu_percent": 12.5, "rss_bytes": 300 << 20}
STATS = {
    "lanes": {
        "llm": {
            "state": "idle",
            "device": "cuda:0",
            "cores": [0],
            "worker": WORKER,
            "workers": [WORKER],
            "queue_depth": 0,
            "max_queue": 64,
            "running": 0,
            "succeeded": 3,
            "done": 6,
            "failed": 2,
            "cancelled": 1,
            "latency_s": {"p50": 0.5, "p95": 0.9, "p99": 1.0},
            "throughput_per_s": {},
            "throughput_window_s": 60,
        }
    },
    "gpus": [
        {
            "index": 0,
            "name": "NVIDIA H100",
            "memory_used_bytes": 3 << 30,
            "memory_total_bytes": 80 << 30,
            "utilization_percent": 7,
        },
        {
            "index": 1,
            "name": "NVIDIA A100 MIG 1g.10gb",
            "memory_used_bytes": 0,
            "memory_total_bytes": 10 << 30,
            "utilization_percent": None,
        },
    ],
}


def test_status_json_is_all_of_the_statistics_and_the_table_shows_the_gpus() -> None:
    """--json prints /api/stats as is (the deployment guide says so): the GPUs too, not the
    lanes alone."""
    with answering(200, json.dumps(STATS).encode()) as url:
        code, out, err = status(url, "--json")
        assert code == 0 and json.loads(out) == STATS, err
        code, out, err = status(url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["lane", "state"] and lines[1].split()[:2] == ["llm", "idle"]
    # "ok" is the tasks that succeeded: "done" counted failures and cancels too.
    head, row = lines[0].split(), lines[1].split()
    assert [row[head.index(c)] for c in ("ok", "failed", "cancel")] == ["3", "2", "1"], lines[:2]
    assert lines[-2:] == [
        "gpu 0 NVIDIA H100: 3.0 of 80.0 GiB memory used, 7% busy",
        "gpu 1 NVIDIA A100 MIG 1g.10gb: 0.0 of 10.0 GiB memory used",
    ]
    without = {"lanes": STATS["lanes"]}  # no NVIDIA card (or a server from before "gpus")
    with answering(200, json.dumps(without).encode()) as url:
        code, out, err = status(url)
    assert code == 0 and "gpu" not in out, err


def test_status_numbers_replicas_as_the_start_does_and_a_pending_one_is_on_no_node() -> None:
    """A Ray replica waiting for a node read "replica 1: pending pid - on local" beside a start
    warning that named it replica 2."""
    placed = {**WORKER, "node": "abcdef0123456789", "node_ip": "10.0.0.2", "link": "direct", "running": 1}
    waiting = {**WORKER, "state": "pending", "pid": None, "node": None, "running": 0}
    lanes = {"llm": {**STATS["lanes"]["llm"], "workers": [placed, waiting]}}  # type: ignore[index]
    with answering(200, json.dumps({"lanes": lanes}).encode()) as url:
        code, out, err = status(url)
    assert code == 0, err
    assert "replica 1: ready pid 4242 on node abcdef012345 at 10.0.0.2 (direct link), running 1" in out, out
    assert "replica 2: pending pid - on no node yet, running 0" in out, out


class AppBuilt(Exception):
    """create_app was called: the workers would start next."""


def serve(tmp_path: object, monkeypatch: pytest.MonkeyPatch, built: Any, *flags: str) -> tuple[int, str]:
    """`ris serve` in this process, with `built(config)` in place of create_app: its exit
    status and stderr."""
    from ris.api import app
    from ris.cli import main

    monkeypatch.delenv("RIS_CONFIG", raising=False)
    monkeypatch.setattr(app, "create_app", lambda cfg, **kw: built(cfg))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["serve", "--data-dir", str(tmp_path), *flags])
    return code, err.getvalue()


def test_serve_on_a_port_in_use_is_one_line_before_any_worker(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uvicorn binds after the app's startup, which starts every lane's worker (models loaded):
    the port is bound first, and a taken one is the usage error it is."""

    def built(cfg: object) -> None:
        raise AssertionError("the app was built (its workers would start) before the port was bound")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = serve(tmp_path, monkeypatch, built, "--port", str(port))
    assert code == 2, err
    assert err.splitlines() == [
        f"ris serve: server.port {port}: Address already in use (choose another with --port)"
    ]


def test_serve_on_any_free_port_names_the_port_it_got(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--port 0: the data folder's lock names the port the OS chose (a second server's refusal
    quotes it), not 0, and that port is held before the app is built."""
    from ris.runtime import data_lock

    def built(cfg: Any) -> None:
        held = data_lock.holder(cfg.data_dir)
        port = held["port"]
        assert held["pid"] == os.getpid() and isinstance(port, int) and port != 0, held
        with socket.socket() as other, pytest.raises(OSError) as e:
            other.bind(("127.0.0.1", port))
        assert e.value.errno == errno.EADDRINUSE
        raise AppBuilt

    with pytest.raises(AppBuilt):
        serve(tmp_path, monkeypatch, built, "--port", "0")


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_a_data_folder_left_readable_by_others_is_named_at_start(tmp_path: object) -> None:
    """A folder from before RIS kept its files private (tasks.db 644, folders 755) served
    without a word: every user's prompts readable by any local user."""
    from pathlib import Path

    from ris.cli import _open_to_others

    folder = Path(str(tmp_path)) / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "tasks.db").write_bytes(b"")
    for path in (folder, folder / "images", folder / "tasks.db"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    assert _open_to_others(folder) == []
    folder.chmod(0o755)  # as `ris pull` makes it: names alone are no one's data
    assert _open_to_others(folder) == []
    (folder / "tasks.db").chmod(0o644)
    assert _open_to_others(folder) == ["tasks.db"]
    folder.chmod(0o700)  # no one else may enter: the store's own mode cannot be reached
    assert _open_to_others(folder) == []
    folder.chmod(0o777)
    assert _open_to_others(folder) == ["the folder itself", "tasks.db"]
    folder.chmod(0o700)


def test_the_version_and_where_the_configuration_came_from(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug report could not quote the build (`ris --version` was a usage error); a server
    started without --config beside a config.json ran a layout built from the machine, unsaid."""
    import argparse

    from ris import __version__
    from ris.cli import _config_source

    done = ris("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"ris {__version__}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RIS_CONFIG", raising=False)
    no_flag = argparse.Namespace(config=None)
    assert "built from this machine" in _config_source(no_flag) and "not read" not in _config_source(no_flag)
    (tmp_path / "config.json").write_text("{}")
    assert "./config.json is not read: pass --config config.json" in _config_source(no_flag)
    assert _config_source(argparse.Namespace(config="config.json")).endswith("config.json (--config)")
    monkeypatch.setenv("RIS_CONFIG", "other.json")
    assert _config_source(no_flag).endswith("other.json ($RIS_CONFIG)")


def test_ctrl_c_is_a_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in `ris pull` printed a traceback from deep in huggingface_hub (an outside user)."""
    import ris.cli as cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_pull", interrupted)
    parser = cli.build_parser()
    args = parser.parse_args(["pull", "qwen2.5"])
    args.fn = interrupted
    assert cli._run(args) == 130
    assert capsys.readouterr().err.strip() == "ris: interrupted"


def test_a_bad_ris_url_is_named_as_itself() -> None:
    """`RIS_URL='::garbage' ris status` said "argument --url", a flag nobody gave."""
    done = subprocess.run(
        [sys.executable, "-m", "ris", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RIS_URL": "::garbage"},
    )
    assert done.returncode == 2 and done.stderr.startswith("ris status: $RIS_URL:"), done.stderr
    assert "--url" not in done.stderr.split(":", 2)[1]


def test_config_check_says_what_serve_would_refuse_without_starting_it(tmp_path: Path) -> None:
    """`ris config` validated less than `ris serve` (a model file not there, an open host with
    no keys): a layout it printed was refused at start (a CLI user's run)."""
    config = tmp_path / "config.json"
    tts = {"default_model": "p", "models": {"p": {"backend": "piper", "source": str(tmp_path / "no.onnx")}}}
    lanes = {"llm": {"enabled": False}, "image": {"enabled": False}, "tts": tts}
    config.write_text(
        json.dumps({"server": {"host": "0.0.0.0"}, "data_dir": str(tmp_path / "d"), "lanes": lanes})
    )
    done = ris("config", "--check", "--config", str(config))
    assert done.returncode == 2 and done.stdout == ""
    assert "`ris serve` would refuse this configuration" in done.stderr
    assert "server.host '0.0.0.0' exposes the service" in done.stderr
    assert "lanes.tts.models.p.source" in done.stderr and "does not exist" in done.stderr
    tts["models"] = {"p": {"backend": "espeak"}}
    config.write_text(json.dumps({"server": {"port": 0}, "data_dir": str(tmp_path / "d"), "lanes": lanes}))
    done = ris("config", "--check", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ris config: the configuration can serve (lanes: tts;")
    assert not (tmp_path / "d").exists()  # checked, not made
    # A port in use (a server already there): `ris serve` exits 2 for it; so does the check.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = ris("config", "--check", "--config", str(config), "--port", str(port))
    assert done.returncode == 2 and f"server.port {port}: Address already in use" in done.stderr, done.stderr
    # The data folder as serve refuses it: a file, one that cannot be made, one in use.
    (tmp_path / "afile").write_text("")
    held = tmp_path / "held"
    data_lock.acquire(held, 8123)
    try:
        for folder, why in (
            (tmp_path / "afile", "it is a file, not a folder"),
            (tmp_path / "afile" / "d", "is a file, not a folder"),
            (Path("/proc/ris-nope"), "it cannot be made in '/proc'"),
            (held, "is in use by another RIS server (pid"),
        ):
            config.write_text(json.dumps({"data_dir": str(folder), "lanes": lanes}))
            done = ris("config", "--check", "--config", str(config))
            assert done.returncode == 2 and why in done.stderr, (folder, done.stderr)
    finally:
        data_lock.release(held)


def test_status_says_a_lane_is_held() -> None:
    """Images held for a full disk read "idle" with their queue, the reason only in /api/stats
    and /metrics (an operator's run)."""
    lanes = {"image": {**STATS["lanes"]["llm"], "held": "disk_space", "queue_depth": 2}}  # type: ignore[index]
    with answering(200, json.dumps({"lanes": lanes}).encode()) as url:
        code, out, err = status(url)
    assert code == 0 and "held: disk_space (its queue starts nothing until that passes)" in out, err
    with answering(200, json.dumps(STATS).encode()) as url:
        assert "held" not in status(url)[1]


def test_status_shows_the_llm_engine_of_the_lanes_worker() -> None:
    """What /metrics has of the LLM engine, in words: running now, the KV cache's use, the mean
    batch and the prompt cache's hits."""
    engine = {
        "decode_steps": 10,
        "batched_tokens": 130,
        "prompt_tokens": 100,
        "reused_prompt_tokens": 300,
        "generated_tokens": 14,
        "sequences": 2,
        "kv_cache_tokens": 450,
        "kv_cache_capacity_tokens": 16384,
    }
    worker = {**WORKER, "engine": engine}
    lanes = {"llm": {**STATS["lanes"]["llm"], "worker": worker, "workers": [worker]}}  # type: ignore[index]
    with answering(200, json.dumps({"lanes": lanes}).encode()) as url:
        code, out, err = status(url)
    assert code == 0, err
    assert (
        "engine: 2 running, KV cache 450 of 16384 tokens, mean batch 13.0 tokens over 10 steps, "
        "75% of 400 prompt tokens from the cache"
    ) in out, out
    with answering(200, json.dumps(STATS).encode()) as url:
        assert "engine" not in status(url)[1]
