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
    from ris.lanes import kinds

    text = render()
    models = {e.options for k in kinds().values() for e in k.backends.values() if e.options is not None}
    assert {LlamaCppOptions, TransformersOptions, DiffusersOptions, Pyttsx3Options} <= models
    for model in models:  # every backend's, a new one's too
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` |" in text, name
    assert "| `type_k` | one of 0, 1, 2, 3, 6, 7, 8, 30 |" in text  # read and checked, and in no doc before
