"""Clients that stop reading: N raw sockets ask /v1/audio/speech for a long text, read the
status line and headers, then read nothing more while the server synthesizes everything.
Measures the API process's resident memory before, once every task has ended (the clients
still connected, still not reading), and after they hang up. Used by test_slow_readers.py
(a few clients) and runnable alone (issue 23's figure, 50 clients):

    .venv/bin/python -m tests.integration.slow_readers --clients 50 --out bench/results/slow_readers.json
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from .server import Server, make_config

MIB = 2**20
# 5,000 Chinese characters, the server's max_tts_chars: the case (about 46 MB of PCM
# each when the server held it in memory).
CHINESE = ("今天天气很好，我们一起去公园散步吧。" * 300)[:5000]


@dataclass
class SlowReadersReport:
    clients: int
    text_chars: int
    rss_start_mib: float
    rss_all_ended_mib: float  # every task ended, every client connected and not reading
    rss_after_mib: float  # the clients gone
    # What one client was sent, from its task's duration (streamed speech keeps no file).
    audio_bytes_each: int
    tasks_succeeded: int
    machine: str = ""
    response_format: str = "pcm"

    @property
    def growth_mib(self) -> float:
        return self.rss_all_ended_mib - self.rss_start_mib

    @property
    def left_after_mib(self) -> float:
        return self.rss_after_mib - self.rss_start_mib


def rss_mib(pid: int) -> float:
    rss: int = psutil.Process(pid).memory_info().rss
    return rss / MIB


def machine() -> str:
    return f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total // 2**30} GiB"


class SpeechRefused(Exception):
    """The server answered the speech request with an error status (e.g. 503 while the TTS
    worker restarts): `status` is its code."""

    def __init__(self, status: str) -> None:
        super().__init__(f"speech refused: {status}")
        self.status = status


def stalled_speech(
    port: int, text: str, response_format: str = "pcm", api_key: str | None = None
) -> tuple[socket.socket, str]:
    """A connection that asked for speech and read only the head of the answer: its task id.
    SpeechRefused (the socket closed) if the answer is an error."""
    request = {"model": "tts-1", "voice": "zh-CN", "input": text, "response_format": response_format}
    body = json.dumps(request).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little for it
        head = (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + (f"Authorization: Bearer {api_key}\r\n" if api_key else "")
            + "\r\n"
        ).encode()
        sock.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received:
            piece = sock.recv(1024)
            if not piece:
                raise ConnectionError(f"closed before the headers: {received!r}")
            received += piece
        lines = received.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        status = lines[0].split(" ")[1] if " " in lines[0] else lines[0]
        if status != "200":
            raise SpeechRefused(status)
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        return sock, headers["x-task-id"]
    except BaseException:
        sock.close()
        raise


def wait_ended(url: str, task_ids: list[str], timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as http:
        while time.monotonic() < deadline:
            states = {t: http.get(f"/api/tasks/{t}").json()["state"] for t in task_ids}
            if all(s in ("succeeded", "failed", "cancelled") for s in states.values()):
                return states
            time.sleep(0.5)
    raise TimeoutError(f"tasks still running after {timeout} s: {states}")


def run(
    folder: Path, clients: int, text: str = CHINESE, timeout: float = 900.0, response_format: str = "pcm"
) -> SlowReadersReport:
    """`response_format` other than pcm: the encoder in the way must not run ahead of the reader
    either."""
    cfg = make_config(folder, llm={"enabled": False}, image={"enabled": False})
    srv = Server(folder, cfg).start()
    try:
        assert srv.proc is not None
        pid = srv.proc.pid
        warm = {
            "model": "tts-1",
            "voice": "zh-CN",
            "input": "你好",
            "response_format": response_format,
        }  # the route, the voice and the encoder
        httpx.post(f"{srv.url}/v1/audio/speech", json=warm, timeout=60).raise_for_status()
        start = rss_mib(pid)
        stalled = [stalled_speech(srv.port, text, response_format) for _ in range(clients)]
        states = wait_ended(srv.url, [t for _, t in stalled], timeout)
        time.sleep(1.0)  # the last outputs reach the route
        ended = rss_mib(pid)
        for sock, _ in stalled:
            sock.close()
        time.sleep(3.0)  # the server notices and lets go
        after = rss_mib(pid)
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            result = http.get(f"/api/tasks/{stalled[0][1]}").json()["result"] or {}
        pcm_bytes = 2 * round(result.get("duration_s", 0) * result.get("sample_rate", 0))
        return SlowReadersReport(
            clients=clients,
            text_chars=len(text),
            rss_start_mib=round(start, 1),
            rss_all_ended_mib=round(ended, 1),
            rss_after_mib=round(after, 1),
            audio_bytes_each=pcm_bytes,
            tasks_succeeded=sum(s == "succeeded" for s in states.values()),
            machine=machine(),
            response_format=response_format,
        )
    finally:
        srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--format", default="pcm", help="response_format: pcm, mp3, opus, aac, flac, wav")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(Path(tmp), args.clients, response_format=args.format)
    emit(
        {**asdict(report), "growth_mib": report.growth_mib, "left_after_mib": report.left_after_mib}, args.out
    )


def emit(report: dict[str, Any], out: Path | None) -> None:
    """A measurement's report, printed and (`out`) written as JSON."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
