"""The transformers backend with the dummy load format (random weights), on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the transformers backend needs torch (make test installs it)")
pytest.importorskip("transformers", reason="the transformers backend needs transformers")

from ris.backends import BackendContext, BackendError, backend_class  # noqa: E402
from ris.config import ModelSpec  # noqa: E402
from ris.lanes import Lane  # noqa: E402
from ris.lanes.llm import LLMRequest, TextCollector  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> object:
    spec = ModelSpec(backend="transformers", load_format="dummy", source="tiny")
    ctx = BackendContext(device="cpu", threads=1, data_dir=tmp_path_factory.mktemp("tf"))
    return backend_class(Lane.LLM, "transformers")(spec, ctx)


def test_dummy_model_streams_exactly_max_tokens(tiny: object) -> None:
    out = TextCollector()
    req = LLMRequest(messages=(("user", "hi"),), max_tokens=12, ignore_eos=True, seed=1)
    outcome = tiny.generate(req, out)  # type: ignore[attr-defined]
    assert outcome.completion_tokens == 12 and outcome.finish_reason == "length"
    assert len(out.text) == 12 and outcome.prompt_tokens > 2


def test_seed_makes_sampling_repeatable(tiny: object) -> None:
    def run() -> str:
        out = TextCollector()
        req = LLMRequest(prompt="abc", max_tokens=8, ignore_eos=True, temperature=1.0, seed=5)
        tiny.generate(req, out)  # type: ignore[attr-defined]
        return out.text

    assert run() == run()


def test_cancel_stops_generation(tiny: object) -> None:
    out = TextCollector(cancel_after=3)
    req = LLMRequest(prompt="abc", max_tokens=500, ignore_eos=True)
    outcome = tiny.generate(req, out)  # type: ignore[attr-defined]
    assert outcome.finish_reason == "cancelled" and outcome.completion_tokens == 3


def test_unknown_dummy_shape(tmp_path: Path) -> None:
    spec = ModelSpec(backend="transformers", load_format="dummy", source="gpt-9")
    with pytest.raises(BackendError, match="known: qwen2.5-7b"):
        backend_class(Lane.LLM, "transformers")(spec, BackendContext("cpu", 1, tmp_path))


def test_without_a_grammar_it_refuses_structured_output_rather_than_ignore_it(tiny: object) -> None:
    from ris.lanes.llm import Constraint, Message, Tool, ToolCall

    for req in (
        LLMRequest(prompt="abc", max_tokens=4, constraint=Constraint('{"type": "object"}')),
        LLMRequest(messages=(("user", "hi"),), max_tokens=4, tools=(Tool("f"),)),
    ):
        with pytest.raises(BackendError) as e:
            tiny.generate(req, TextCollector())  # type: ignore[attr-defined]
        assert e.value.code == "unsupported_for_model"
    # Past calls and tool answers in the history are plain turns to it.
    history = (
        ("user", "weather?"),
        Message("assistant", "", (ToolCall("c1", "f", "{}"),)),
        Message("tool", "sunny", tool_call_id="c1"),
    )
    outcome = tiny.generate(LLMRequest(messages=history, max_tokens=3, ignore_eos=True), TextCollector())  # type: ignore[attr-defined]
    assert outcome.completion_tokens == 3
