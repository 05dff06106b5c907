"""Every script in examples/ run as a user runs it: a subprocess against one live server with the
repository's default config, behind an API key that the scripts read from RIS_API_KEY."""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import ROOT, Server, make_config

pytestmark = pytest.mark.slow

EXAMPLES = ROOT / "examples"
KEY = "example-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("examples")
    cfg = make_config(tmp)
    cfg["server"] = {"api_keys": [KEY]}
    srv = Server(tmp, cfg, api_key=KEY).start()
    yield srv
    srv.stop()


def run(
    server: Server, script: str, *args: str, cwd: Path, key: str | None = KEY
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RIS_API_KEY"}
    if key is not None:
        env["RIS_API_KEY"] = key
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--url", server.url, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data), "rb") as wf:
        assert wf.getnchannels() == 1 and wf.getsampwidth() == 2
        frames = wf.readframes(wf.getnframes())
        assert frames.count(0) < len(frames)  # not silence
        return wf.getnframes() / wf.getframerate()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_spec_llm_verbatim_names_the_pull_command(server: Server, tmp_path: Path) -> None:
    # Qwen2.5 is not in the default config: 404 unknown_model naming `ris pull qwen2.5`, printed
    # with a hint, and a non-zero exit; never a silent answer from another model.
    proc = run(server, "spec_llm.py", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error, _, hint = proc.stderr.partition("\nhint: ")
    # The server's own message names the command (the script's hint repeats it, so look apart).
    assert error.startswith("error: HTTP 404 unknown_model:") and "ris pull qwen2.5" in error
    assert "--model" in hint


def test_spec_llm_on_an_installed_model(server: Server, tmp_path: Path) -> None:
    out = ok(run(server, "spec_llm.py", "--model", "smollm2", "--max-tokens", "24", cwd=tmp_path))
    # Warnings (an English-only model asked in Chinese) may come first, one line each.
    header = next(line for line in out.splitlines() if line.startswith("[smollm2, "))
    assert int(header.split()[1]) > 0  # "[smollm2, N tokens, stop]"


def test_spec_tts_verbatim_saves_chinese_speech(server: Server, tmp_path: Path) -> None:
    out = ok(run(server, "spec_tts.py", "--out", "speech.wav", cwd=tmp_path))
    assert "model espeak, voice cmn" in out
    assert 1.0 < wav_seconds((tmp_path / "speech.wav").read_bytes()) < 4.0  # eight syllables


def test_spec_image_verbatim_runs_with_a_turbo_warning(server: Server, tmp_path: Path) -> None:
    # 512x512, use_turbo, 4 steps, exactly as the description sends it: the default model runs
    # it with turbo settings and says in `warnings` that no turbo model is installed.
    out = ok(run(server, "spec_image.py", "--out", "image.png", cwd=tmp_path))
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings and "turbo" in warnings[0].lower(), out
    assert re.search(r"^queued \S+: 一只可爱的小猫$", out, re.MULTILINE), out  # the description's prompt
    assert "succeeded: step 4/4 (100%)" in out
    assert png_size((tmp_path / "image.png").read_bytes()) == (512, 512)


def test_chat_stream_prints_tokens_as_they_come(server: Server, tmp_path: Path) -> None:
    out = ok(run(server, "chat_stream.py", "--max-tokens", "24", cwd=tmp_path))
    text, _, summary = out.rpartition("\n[")
    assert text.strip() and summary.startswith(tuple("123456789")) and '"finish_reason"' in summary


def test_speak_saves_a_playable_wav(server: Server, tmp_path: Path) -> None:
    out = ok(run(server, "speak.py", "--max-tokens", "32", "--out", "answer.wav", cwd=tmp_path))
    # The header's sizes were fixed after the stream, so `wave` reads exactly the audio there is.
    seconds = wav_seconds((tmp_path / "answer.wav").read_bytes())
    assert seconds > 0.3 and f"{seconds:.2f} s of speech" in out


def test_image_with_a_progress_bar(server: Server, tmp_path: Path) -> None:
    out = ok(
        run(server, "image_progress.py", "--width", "128", "--height", "96", "--steps", "3", cwd=tmp_path)
    )
    assert "[" + "#" * 30 + "] 100% step 3/3" in out
    assert png_size((tmp_path / "image.png").read_bytes()) == (128, 96)


def test_openai_client_chat_speech_and_image(server: Server, tmp_path: Path) -> None:
    out = ok(run(server, "openai_client.py", "--size", "128x128", cwd=tmp_path))
    models, _, rest = out.partition("\n")
    chat, _, _ = rest.partition("openai_speech.wav:")
    assert models.startswith("models:") and "smollm2" in models
    assert chat.strip()  # the streamed sentence, between the model list and the speech file
    assert wav_seconds((tmp_path / "openai_speech.wav").read_bytes()) > 0.5
    assert png_size((tmp_path / "openai_image.png").read_bytes()) == (128, 128)


def test_async_sdk_runs_three_lanes_at_once(server: Server, tmp_path: Path) -> None:
    out = ok(run(server, "async_sdk.py", cwd=tmp_path))
    lines = out.splitlines()
    assert len(lines) == 3 and {line.split()[2] for line in lines} == {"LLM:", "TTS:", "image:"}
    assert wav_seconds((tmp_path / "async_speech.wav").read_bytes()) > 0.5
    assert png_size((tmp_path / "async_image.png").read_bytes()) == (128, 128)


def test_without_the_key_a_script_says_401_and_fails(server: Server, tmp_path: Path) -> None:
    proc = run(server, "spec_tts.py", cwd=tmp_path, key=None)
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr
    assert not (tmp_path / "spec_tts.wav").exists()


@pytest.mark.parametrize(
    "script", sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
)
def test_a_server_that_does_not_answer_is_one_line_not_a_traceback(script: str, tmp_path: Path) -> None:
    """examples/README.md: each prints the error and exits non-zero; with no server there, all
    but one printed httpx's traceback."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--url", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "error" in done.stderr.lower(), done.stderr
