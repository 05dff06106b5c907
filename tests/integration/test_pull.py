"""`ris pull` against a local hub (tests/integration/hub.py) with the real huggingface_hub
client: a fresh pull through the command line, a dropped connection that resumes, a corrupt
file refused, a folder pulled in its fp16 variant only, an unknown name refused, and a pulled
model answering after a restart."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ris.backends import resolve_source
from ris.config.load import load_config
from ris.lanes.llm import SMOLLM2_SOURCE
from ris.pull import PullError, pull

from .hub import Hub
from .server import Server, make_config

pytestmark = pytest.mark.slow

QWEN_REPO = "Qwen/Qwen2.5-1.5B-Instruct-GGUF"
QWEN_FILE = "qwen2.5-1.5b-instruct-q4_k_m.gguf"
PIPER_REPO = "rhasspy/piper-voices"
HUAYAN = "zh/zh_CN/huayan/medium/zh_CN-huayan-medium"
# Over two of huggingface_hub's 10 MiB read chunks: a cut half way leaves a whole chunk on
# disk, from which the download resumes.
BIG = 24 * 1024 * 1024


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull is the one online step. The backends set HF_HUB_OFFLINE for their own process, and
    backend tests that ran earlier in this one leave it set: clear it, and huggingface_hub's copy
    read at import."""
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture()
def hub() -> Iterator[Hub]:
    h = Hub().start()
    yield h
    h.stop()


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    """The repository's config.json, its data folder in tmp."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(make_config(tmp_path), indent=2) + "\n")
    return path


def ris(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ris", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def voice_repo(onnx: bytes) -> dict[str, bytes]:
    return {
        f"{HUAYAN}.onnx": onnx,
        f"{HUAYAN}.onnx.json": b'{"audio": {"sample_rate": 22050}}',
        "README.md": b"hi",
    }


def test_fresh_pull_from_the_command_line_then_the_model_answers(
    hub: Hub, config: Path, tmp_path: Path
) -> None:
    # The hub's Qwen repository, holding SmolLM2's GGUF under Qwen's file name (no Qwen
    # weights here): what is tested is the fetching, checking and configuring.
    gguf = resolve_source(SMOLLM2_SOURCE).read_bytes()
    hub.repos[QWEN_REPO] = {QWEN_FILE: gguf, "qwen2.5-1.5b-instruct-q8_0.gguf": b"other quant" * 200}
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_local_test", "HF_HOME": str(tmp_path / "hf-home")}
    done = ris("pull", "qwen2.5", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert "restart the server" in done.stdout

    entry = json.loads(config.read_text())["lanes"]["llm"]["models"]["qwen2.5"]
    path = Path(entry["source"])
    assert path.name == QWEN_FILE and path.is_relative_to(tmp_path / "data" / "models")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(gguf).hexdigest()
    assert entry["backend"] == "llama_cpp" and "zh" in entry["languages"]
    assert not hub.gets("qwen2.5-1.5b-instruct-q8_0.gguf")  # only the catalogue's file
    # HF_TOKEN on every request for the model (huggingface_hub also asks its endpoint for a
    # registry of AI agents, without a token: not ours)
    model_requests = [s for s in hub.seen if QWEN_REPO in s.path]
    assert model_requests and {s.authorization for s in model_requests} == {"Bearer hf_local_test"}
    load_config(config)  # still a valid config, other models kept
    assert "smollm2" in json.loads(config.read_text())["lanes"]["llm"]["models"]

    # A second pull finds the file there and checked: nothing is fetched again.
    before = len(hub.gets(QWEN_FILE))
    assert ris("pull", "qwen2.5", "--config", str(config), env=env).returncode == 0
    assert len(hub.gets(QWEN_FILE)) == before

    cfg = json.loads(config.read_text())
    cfg["lanes"]["image"]["enabled"] = False
    srv = Server(tmp_path / "srv", cfg).start()
    try:
        body = {"prompt": "你好，请介绍一下自己", "model": "qwen2.5", "temperature": 0.7, "max_tokens": 8}
        r = httpx.post(f"{srv.url}/api/llm/generate", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "qwen2.5" and r.json()["usage"]["completion_tokens"] > 0
        assert r.json()["warnings"] == []  # the catalogue says Qwen2.5 writes Chinese
    finally:
        srv.stop()


def test_a_dropped_connection_resumes_where_it_stopped(hub: Hub, config: Path) -> None:
    onnx = os.urandom(BIG)
    hub.repos[PIPER_REPO] = voice_repo(onnx)
    hub.cut_once.add((PIPER_REPO, f"{HUAYAN}.onnx"))
    pulled = pull("piper:zh_CN-huayan-medium", config, endpoint=hub.url, log=lambda _: None)
    first, again = hub.gets(f"{HUAYAN}.onnx")
    assert first.range is None and first.bytes_sent == BIG // 2
    assert again.range is not None and int(again.range.split("=")[1].rstrip("-")) > 0
    assert first.bytes_sent + again.bytes_sent < BIG * 1.5  # resumed, not fetched again whole
    assert (pulled.folder / f"{HUAYAN}.onnx").read_bytes() == onnx
    tts = json.loads(config.read_text())["lanes"]["tts"]["models"]["piper:zh_CN-huayan-medium"]
    assert tts["backend"] == "piper" and tts["languages"] == ["zh-CN"]


def test_a_corrupt_file_is_refused_and_deleted(hub: Hub, config: Path) -> None:
    onnx = os.urandom(2_000_000)
    hub.repos[PIPER_REPO] = voice_repo(onnx)
    hub.corrupt[(PIPER_REPO, f"{HUAYAN}.onnx")] = onnx[:-1] + bytes([onnx[-1] ^ 1])  # same size
    before = config.read_text()
    with pytest.raises(PullError) as e:
        pull("piper:zh_CN-huayan-medium", config, endpoint=hub.url, log=lambda _: None)
    assert e.value.code == "checksum_mismatch"
    assert hashlib.sha256(onnx).hexdigest() in e.value.message
    folder = load_config(config).data_dir / "models" / "piper-zh_CN-huayan-medium"
    assert not (folder / f"{HUAYAN}.onnx").exists()
    assert config.read_text() == before
    # The hub serves the right bytes again: the same command now succeeds.
    del hub.corrupt[(PIPER_REPO, f"{HUAYAN}.onnx")]
    pulled = pull("piper:zh_CN-huayan-medium", config, endpoint=hub.url, log=lambda _: None)
    assert (pulled.folder / f"{HUAYAN}.onnx").read_bytes() == onnx


def safetensors(n: int) -> bytes:
    """A well-formed safetensors file of one tensor of `n` random bytes (`ris pull` adds a
    model only where the config still loads with it, which reads the files' headers)."""
    header = json.dumps({"w": {"dtype": "F16", "shape": [n // 2], "data_offsets": [0, n]}}).encode()
    return len(header).to_bytes(8, "little") + header + os.urandom(n)


def test_a_diffusers_folder_in_its_fp16_variant_only(hub: Hub, config: Path) -> None:
    repo = {
        "model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
        "unet/config.json": b'{"sample_size": 64}',
        "unet/diffusion_pytorch_model.fp16.safetensors": safetensors(4096),
        "unet/diffusion_pytorch_model.safetensors": os.urandom(8192),  # fp32: not wanted
        "text_encoder/model.fp16.safetensors": safetensors(2048),
        "tokenizer/merges.txt": b"#version: 0.2\n",
        "tokenizer/vocab.json": b"{}",
        "sd_turbo.safetensors": os.urandom(4096),  # the single-file checkpoint: not wanted
    }
    hub.repos["stabilityai/sd-turbo"] = repo
    pulled = pull("sd-turbo", config, endpoint=hub.url, log=lambda _: None)
    fetched = {p for p in repo if (pulled.folder / p).exists()}
    assert fetched == set(repo) - {"unet/diffusion_pytorch_model.safetensors", "sd_turbo.safetensors"}
    entry = json.loads(config.read_text())["lanes"]["image"]["models"]["sd-turbo"]
    assert entry["source"] == str(pulled.folder)
    assert entry["options"] == {"turbo": True, "variant": "fp16"}


def test_unknown_names_are_refused_with_the_catalogue(config: Path) -> None:
    done = ris("pull", "gpt-9", "--config", str(config), env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert done.returncode == 1
    for name in ("qwen2.5", "qwen2.5:7b", "llama3.2", "sd-turbo", "sdxl-turbo", "piper:zh_CN-huayan-medium"):
        assert name in done.stderr
    done = ris("pull", "mobilediffusion", "--config", str(config), env={})
    assert done.returncode == 1 and "no public weights" in done.stderr


def test_no_network_is_one_line_not_a_traceback(config: Path) -> None:
    """Nothing listens at the endpoint: huggingface_hub's transport error (not an OSError)."""
    done = ris("pull", "qwen2.5", "--config", str(config), env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert done.returncode == 1
    assert "cannot reach the hub" in done.stderr and "Traceback" not in done.stderr


def test_a_repository_missing_from_the_hub_is_named(hub: Hub, config: Path) -> None:
    with pytest.raises(PullError) as e:
        pull("llama3.2", config, endpoint=hub.url, log=lambda _: None)
    assert e.value.code == "not_found" and "bartowski/Llama-3.2-3B-Instruct-GGUF" in e.value.message


def test_a_page_that_is_not_the_hubs_api_is_one_line_not_a_traceback(config: Path) -> None:
    """A captive portal or a wrong mirror answers 200 with HTML: said, not a JSONDecodeError."""

    class Portal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Sign in to the hotel Wi-Fi</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    portal = ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=portal.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{portal.server_address[1]}"
        done = ris("pull", "qwen2.5", "--config", str(config), "--endpoint", url, env={})
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "not the Hugging Face hub's API" in done.stderr, done.stderr
    finally:
        portal.shutdown()
        portal.server_close()
