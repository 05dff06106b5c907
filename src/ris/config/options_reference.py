"""docs/MODEL_OPTIONS.md, generated from the backends' registered option models (each field's
type, range and description in ris.config.backend_options), so every option a backend reads is
documented where its check is: `type_k`, `cuda_graphs` and `compile_level` were read and
checked, and in no doc. tests/unit/test_options_reference.py fails when the file is stale.

    PYTHONPATH=src python -m ris.config.options_reference [--check]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from ris.generated_doc import write_or_check

REGENERATE = "python -m ris.config.options_reference"
TARGET = Path(__file__).resolve().parents[3] / "docs" / "MODEL_OPTIONS.md"

INTRO = f"""\
# Model options

Generated from the backends' own option checks by `{REGENERATE}` (do not edit by hand).

A model's `options` in config.json are its backend's: `"options": {{"n_ctx": 4096}}`. They are
checked when the config loads, every problem named by its path
(`lanes.llm.models.m.options.n_ctx: Input should be greater than or equal to 64 (got -5)`);
values keep JSON's types (`"n_ctx": "4096"` is refused, not converted). Where a backend hands
other keys to its library, the table says so; a backend that reads none refuses any key.
How much memory a model's options cost (the KV cache of `n_ctx` x the lane's `parallel`) is in
`GET /api/models` (`footprint`) and docs/DEPLOYMENT_GUIDE.md.
"""

# Where the keys a backend does not read itself go (BackendEntry.options allows extras).
LIBRARIES = {
    "llama_cpp": "llama-cpp-python's `Llama` (checked against its parameters when the config loads "
    "and at load: a name it does not take is refused, with the closest ones)",
    "transformers": "`from_pretrained` (transformers)",
    "diffusers": "`from_pretrained` or `from_single_file` (diffusers): `variant`, `use_safetensors` "
    "and the like",
}


def _type(info: Any) -> str:
    names = []
    for a in getattr(info.annotation, "__args__", (info.annotation,)):
        if get_origin(a) is Literal:  # the values allowed, as JSON writes them
            names.append("one of " + ", ".join(json.dumps(v) for v in get_args(a)))
        elif a is not type(None):
            names.append(getattr(a, "__name__", str(a)))
    return " or ".join(names)


def _range(info: Any) -> str:
    bounds = []
    for m in info.metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                bounds.append(f"{word} {value}")
    return ", ".join(bounds) or "-"


def _table(model: type[BaseModel]) -> list[str]:
    rows = ["| option | type | range | what it does |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        rows.append(f"| `{name}` | {_type(info)} | {_range(info)} | {info.description} |")
    return rows


def render() -> str:
    from ris.lanes import kinds

    parts = [INTRO]
    for lane, kind in kinds().items():
        parts.append(f"## The {lane} lane\n")
        for backend, entry in kind.backends.items():
            parts.append(f"### `{backend}`\n")
            model = entry.options
            if model is None:
                parts.append("Its options are not checked when the config loads.\n")
                continue
            if model.model_fields:
                parts.append("\n".join(_table(model)) + "\n")
            if model.model_config.get("extra") == "allow":
                parts.append(f"Other keys go to {LIBRARIES.get(backend, 'its library')}.\n")
            elif not model.model_fields:
                parts.append("Takes no options: any key is refused.\n")
            else:
                parts.append("Other keys are refused.\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    return write_or_check(TARGET, render(), REGENERATE, argv)


if __name__ == "__main__":
    sys.exit(main())
