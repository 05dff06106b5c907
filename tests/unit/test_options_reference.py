"""docs/MODEL_OPTIONS.md is generated from the backends' option models and must match them."""

from __future__ import annotations

from ris.config.backend_options import DiffusersOptions, LlamaCppOptions, Pyttsx3Options, TransformersOptions
from ris.config.options_reference import REGENERATE, TARGET, render


def test_committed_model_options_are_current() -> None:
    committed = TARGET.read_text(encoding="utf-8") if TARGET.is_file() else ""
    assert committed == render(), (
        f"docs/MODEL_OPTIONS.md is stale; regenerate it with: PYTHONPATH=src {REGENERATE}"
    )


def test_every_option_says_what_it_does() -> None:
    text = render()
    for model in (LlamaCppOptions, TransformersOptions, DiffusersOptions, Pyttsx3Options):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` |" in text, name
    assert "| `type_k` | int | >= 0 |" in text  # read and checked, and in no doc before
