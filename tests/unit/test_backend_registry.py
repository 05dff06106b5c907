"""A lane's backends are registered with what they can do, and the server learns those abilities
from the registration alone: the backend's module is never imported in the server."""

from __future__ import annotations

import sys

import pytest

from ris.lanes.base import BackendEntry, BackendError
from ris.lanes.llm import LLMLane


def test_abilities_are_what_the_registration_declares() -> None:
    lane = LLMLane()  # a fresh registry: the global one stays as it was
    lane.register_backend("plain", "nowhere.plain:Plain")
    lane.register_backend("grammar", "nowhere.grammar:Grammar", batches=True, constrains=True, penalizes=True)
    assert lane.backend("plain") == BackendEntry("nowhere.plain:Plain")
    grammar = BackendEntry("nowhere.grammar:Grammar", batches=True, constrains=True, penalizes=True)
    assert lane.backend("grammar") == grammar
    unloaded = {"kv_cache_bytes": None}  # known once the model is loaded
    assert lane.model_features("plain", None) == {
        "structured_output": False,
        "tools": "unsupported",
        "repetition_penalties": False,
        **unloaded,
    }
    assert lane.model_features("grammar", None) == {
        "structured_output": True,
        "tools": None,
        "repetition_penalties": True,
        **unloaded,
    }
    assert "nowhere.grammar" not in sys.modules


def test_the_builtin_llm_backends_declare_theirs() -> None:
    lane = LLMLane()
    assert lane.backend("llama_cpp").batches and lane.backend("llama_cpp").constrains
    transformers = lane.backend("transformers")
    assert transformers.batches and not transformers.constrains  # its engine batches; no grammar
    assert lane.backend("llama_cpp").penalizes and not transformers.penalizes
    assert transformers.target == lane.backend_target("transformers")


def test_an_unknown_backend_is_refused_with_the_known_ones() -> None:
    with pytest.raises(BackendError) as refused:
        LLMLane().backend("vllm")
    assert refused.value.code == "unknown_backend" and "llama_cpp" in refused.value.message
