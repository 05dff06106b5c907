"""docs/CLI.md is generated from the `ris` parser and must match it."""

from __future__ import annotations

from ris.cli_reference import REGENERATE, TARGET, render


def test_committed_cli_reference_is_current() -> None:
    committed = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
    assert committed == render(), f"docs/CLI.md is stale; regenerate it with: PYTHONPATH=src {REGENERATE}"


def test_every_command_and_the_flags_no_doc_had_are_there() -> None:
    text = render()
    for command in ("serve", "config", "status", "pull", "test", "bench"):
        assert f"## `ris {command}`" in text
    for flag in ("--api-key", "--tts-model", "--repetitions", "--check", "--gpu-profile", "--version"):
        assert flag in text, flag
