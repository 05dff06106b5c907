"""The model catalogue, the language of a prompt, and the checksums `ris pull` compares."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from ris import catalogue
from ris.languages import language_warning, script_language
from ris.pull import file_sha256, git_blob_id


@pytest.mark.parametrize(
    ("name", "canonical", "repo", "source"),
    [
        ("qwen2.5", "qwen2.5:1.5b", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf"),
        (
            "Qwen2.5:0.5B",
            "qwen2.5:0.5b",
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
            "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        ),
        (
            "qwen2.5:7b",
            "qwen2.5:7b",
            "Qwen/Qwen2.5-7B-Instruct-GGUF",
            "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
        ),
        (
            "llama3.2",
            "llama3.2:3b",
            "bartowski/Llama-3.2-3B-Instruct-GGUF",
            "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
        ),
        (
            "llama3.2:1b",
            "llama3.2:1b",
            "bartowski/Llama-3.2-1B-Instruct-GGUF",
            "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        ),
        ("sd-turbo", "sd-turbo", "stabilityai/sd-turbo", ""),
        ("sdxl-turbo", "sdxl-turbo", "stabilityai/sdxl-turbo", ""),
        (
            "piper:zh_CN-huayan-medium",
            "piper:zh_CN-huayan-medium",
            "rhasspy/piper-voices",
            "zh/zh_CN/huayan/medium/zh_CN-huayan-medium.onnx",
        ),
    ],
)
def test_short_names(name: str, canonical: str, repo: str, source: str) -> None:
    entry = catalogue.lookup(name)
    assert entry is not None
    assert (entry.name, entry.repo, entry.source) == (canonical, repo, source)
    assert entry.source in entry.files or entry.source == ""
    assert ":" not in entry.folder and "/" not in entry.folder


def test_the_7b_gguf_comes_in_two_parts() -> None:
    entry = catalogue.lookup("qwen2.5:7b")
    assert entry is not None and len(entry.files) == 2


def test_unknown_and_unavailable_names() -> None:
    assert catalogue.lookup("gpt-9") is None
    assert catalogue.lookup("piper:not a voice") is None
    assert catalogue.lookup("mobilediffusion") is None
    assert "no public weights" in (catalogue.pull_hint("mobilediffusion", "image") or "")


def test_pull_hint_only_for_the_lane_that_runs_it() -> None:
    assert "`ris pull qwen2.5`" in (catalogue.pull_hint("qwen2.5", "llm") or "")
    assert catalogue.pull_hint("qwen2.5", "image") is None
    assert catalogue.pull_hint("gpt-9", "llm") is None


def test_a_model_pulled_since_the_start_is_told_to_wait_for_a_restart(monkeypatch: Any) -> None:
    """After POST /api/pull wrote it into config.json, a request for it was told to pull it
    again (an outside models user)."""
    entry = catalogue.lookup("qwen2.5:0.5b")
    assert entry is not None
    monkeypatch.setattr(catalogue, "PULLED", {entry.name})
    hint = catalogue.pull_hint("qwen2.5:0.5b", "llm") or ""
    assert "pulled into config.json after this server started: restart the server" in hint
    assert "ris pull" not in hint


def test_what_to_pull_for_a_language() -> None:
    assert catalogue.writer_of("zh", "llm") == "qwen2.5"
    assert catalogue.writer_of("hi", "llm") == "llama3.2"
    assert catalogue.writer_of("zh", "tts") == "piper:zh_CN-huayan-medium"
    assert catalogue.writer_of("xx", "llm") is None


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("你好，请介绍一下自己", "zh"),
        ("こんにちは、自己紹介してください", "ja"),
        ("東京都知事選挙の結果", "ja"),  # a headline: mostly Han, its particle in kana
        ("这是我们公司今年最重要的产品发布会，大家都来参加了の", "zh"),  # one stray kana in Chinese
        ("안녕하세요", "ko"),
        ("สวัสดีครับ", "th"),
        ("What colour is the sky?", None),
        ("Translate 你好 into English, please, and explain it", None),  # one word is not the text
        # Scripts several languages share: the most written, unless a letter only one of them
        # uses says which (Ukrainian "ї", Kazakh "қ" though Kazakh writes "і" too; Urdu "ے"
        # though it writes Persian's "پ").
        ("Привет, как дела?", "ru"),
        ("Привіт, як справи? Її звати Олена", "uk"),
        ("Сәлеметсіз бе, қалайсыз? Бүгін", "kk"),
        ("Беларусь — краіна ў Усходняй Еўропе", "be"),  # "і" as Ukrainian, and "ў"
        ("Здраво, како си? Ђорђе", "sr"),
        ("Здраво, како си? Ѓорѓи", "mk"),
        ("مرحبا بالعالم", "ar"),
        ("سلام، حال شما چطور است؟", "fa"),
        ("آپ کیسے ہیں؟ میں ٹھیک ہوں", "ur"),
        ("नमस्ते, आप कैसे हैं?", "hi"),
        ("मी ठीक आहे, वेळ नाही", "mr"),
        ("Γειά σου κόσμε", "el"),
        ("שלום עולם", "he"),
        ("გამარჯობა", "ka"),
        ("வணக்கம்", "ta"),
        ("ሰላም", "am"),
        # An alphabet's letters are sounds: a third of them is a word in a Latin sentence.
        ("Hello world, Привет", None),
        ("Привет мир, hello", "ru"),
        ("1234 !?", None),
        ("\ufeffOK", None),  # a byte-order mark is no Arabic letter
        ("١٢٣ OK", None),  # nor are Arabic-Indic digits
        ("สวัสดีครับ hello there", "th"),  # Thai writes no spaces: a third of the letters
        # The ends of each range (the counting is done by character classes built from them).
        ("\u4e00\u9fff\u3400\u4dbf\uf900\ufaff", "zh"),
        ("\u3041\u30ff", "ja"),
        ("\u1100\u11ff\u3131\uac00\ud7a3", "ko"),
        ("\u0e01\u0e2e", "th"),
        ("\u4dc0\u4dff abcdefgh", None),  # Yijing symbols, between two Han ranges
    ],
)
def test_script_language(text: str, language: str | None) -> None:
    assert script_language(text) == language


def test_script_language_reads_a_sample_of_a_long_text() -> None:
    """Stretches spread over it: a 100,000-character prompt is read on the event loop."""
    assert script_language("Это русский текст. " * 6000) == "ru"
    assert script_language("English words here. " * 500 + "Это русский текст. " * 5000) == "ru"
    assert script_language("Это русский текст. " * 2000 + "English words here. " * 5000) is None


def test_language_warning() -> None:
    note = language_warning("smollm2", ("en",), "你好", "qwen2.5")
    assert note is not None and "'zh'" in note and "ris pull qwen2.5" in note
    # A shared script: flagged when the model writes none of its languages, never for which.
    note = language_warning("smollm2", ("en",), "Привіт, як справи? Її звати Олена", None)
    assert note is not None and "Cyrillic script (Ukrainian, it seems)" in note, note
    assert language_warning("qwen2.5", ("en", "ru"), "Привіт, як справи? Її звати Олена", None) is None
    assert language_warning("qwen2.5", ("zh", "en"), "你好", None) is None
    assert language_warning("piper", ("zh-CN",), "你好", None) is None
    assert language_warning("custom", None, "你好", "qwen2.5") is None  # languages unknown


def test_checksums_match_git_and_sha256sum(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    f.write_bytes(b'{"a": 1}\n' * 1000)
    git = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True)
    assert git_blob_id(f) == git.stdout.strip()
    sha = subprocess.run(["sha256sum", str(f)], capture_output=True, text=True, check=True)
    assert file_sha256(f) == sha.stdout.split()[0]
