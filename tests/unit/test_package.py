"""The public surface, lazy backends, binding and the SSE parser."""

from __future__ import annotations

import subprocess
import sys

import pytest

import ris
from ris.backends import BackendError, backend_class, resolve_source
from ris.backends._textgen import StopScanner
from ris.lanes import Lane
from ris.runtime.binding import THREAD_ENV_VARS, Binding


def test_public_names() -> None:
    names = [
        "AsyncClient",
        "Client",
        "Generation",
        "RISError",
        "RISWarning",
        "Speech",
        "TaskTimeout",
        "__version__",
    ]
    assert ris.__all__ == names


def test_package_imports_without_heavy_libraries() -> None:
    code = (
        "import sys, ris, ris.api.app, ris.api.reference, ris.cli, ris.runtime.engine\n"
        "import ris.runtime.workers, ris.runtime.workers.ray_placement\n"
        "heavy = {'torch', 'llama_cpp', 'onnxruntime', 'piper', 'diffusers', 'transformers',\n"
        "         'ray', 'pyttsx3'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(BackendError, match="available: espeak, piper"):
        backend_class(Lane.TTS, "coqui")


def test_package_source_resolves_without_importing() -> None:
    with pytest.raises(BackendError, match="is not installed"):
        resolve_source("package:no_such_pkg_xyz/model.gguf")
    with pytest.raises(BackendError, match="does not exist"):
        resolve_source("/nonexistent/model.gguf")


def test_binding_environment() -> None:
    env = Binding(cores=(1,), threads=1, nice=0, gpu=None).environment()
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    assert all(env[v] == "1" for v in THREAD_ENV_VARS)
    gpu = Binding(cores=None, threads=4, nice=0, gpu=2).environment()
    # NVML's index (the one the budget was sized by), in NVML's order
    assert (gpu["CUDA_VISIBLE_DEVICES"], gpu["CUDA_DEVICE_ORDER"]) == ("2", "PCI_BUS_ID")


def test_stop_scanner_holds_back_partial_stop_strings() -> None:
    out: list[str] = []
    s = StopScanner(("</s>",), out.append)
    for piece in ("Hello", " wor", "ld<", "/", "s> tail"):
        s.feed(piece)
    s.flush()
    assert "".join(out) == "Hello world" and s.stopped


def test_stop_scanner_stops_at_the_earliest_stop_whichever_is_listed_first() -> None:
    for stops, pieces, answer in [
        (("END", "\n"), ["a\nbEND"], "a"),
        (("\n", "."), ["Done", ".\n more"], "Done"),
        (("bc", "abcd"), ["xab", "cd"], "x"),  # "abcd" begins first, across pieces
    ]:
        out: list[str] = []
        s = StopScanner(stops, out.append)
        for piece in pieces:
            s.feed(piece)
        s.flush()
        assert "".join(out) == answer and s.stopped, (stops, out)


def test_stop_scanner_decodes_split_utf8() -> None:
    out: list[str] = []
    s = StopScanner((), out.append)
    data = "你好".encode()
    for i in range(len(data)):
        s.feed_bytes(data[i : i + 1])
    s.flush()
    assert "".join(out) == "你好"


def test_an_answer_cut_inside_a_character_ends_before_it_not_with_a_replacement() -> None:
    out: list[str] = []
    s = StopScanner((), out.append)
    s.feed_bytes("家庭".encode() + "🙂".encode()[:2])  # a token limit stopped in the emoji
    s.flush()
    assert "".join(out) == "家庭"
    # Invalid bytes inside the answer are still shown as what they are.
    out.clear()
    s = StopScanner((), out.append)
    s.feed_bytes(b"a\xffb")
    s.flush()
    assert "".join(out) == "a\ufffdb"
