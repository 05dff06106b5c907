"""The transformers backend with the dummy load format (random weights), on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the transformers backend needs torch (make test installs it)")
pytest.importorskip("transformers", reason="the transformers backend needs transformers")

from ris.backends import BackendContext, BackendError, backend_class  # noqa: E402
from ris.config import ModelSpec  # noqa: E402
from ris.lanes import Lane  # noqa: E402
from ris.lanes.base import WorkerEnv  # noqa: E402
from ris.lanes.llm import LLMOutcome, LLMRequest, LLMRunner, TextCollector  # noqa: E402
from ris.preemption.policy import Activity  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    spec = ModelSpec(backend="transformers", load_format="dummy", source="tiny")
    ctx = BackendContext(device="cpu", threads=1, data_dir=tmp_path_factory.mktemp("tf"), parallel=4)
    llm = backend_class(Lane.LLM, "transformers")(spec, ctx)
    yield llm
    llm.close()  # stops the engine's thread


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
    # Stopped at the engine's next step: its async engine may have streamed a token or two more
    # by then (CI once counted 4), never the 500 asked.
    assert outcome.finish_reason == "cancelled" and 3 <= outcome.completion_tokens <= 8


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


# ----- continuous batching on transformers' engine ------------------------------------------


def _run(
    llm: object, reqs: dict[str, LLMRequest], cancel_after: dict[str, int] | None = None
) -> dict[str, tuple[LLMOutcome, str]]:
    """Each request added to the model's batch, stepped until all ended; records the order in
    which sequences produced their first text and ended."""
    batch = llm.batch()  # type: ignore[attr-defined]
    outs = {k: TextCollector(cancel_after=(cancel_after or {}).get(k)) for k in reqs}
    for key, req in reqs.items():
        batch.add(key, req, outs[key])
    ended: dict[str, LLMOutcome] = {}
    first_text_before_first_end: set[str] = set()
    while len(ended) < len(reqs):
        for key, end in batch.step():
            assert not isinstance(end, BackendError), end
            if not ended:
                first_text_before_first_end = {k for k, o in outs.items() if o.pieces}
            ended[key] = end
    _run.started_before_first_end = first_text_before_first_end  # type: ignore[attr-defined]
    return {k: (ended[k], outs[k].text) for k in reqs}


def test_four_streams_all_start_before_the_first_finishes(tiny: object) -> None:
    reqs = {
        f"s{i}": LLMRequest(
            prompt=f"story {i}", max_tokens=24 + 8 * i, ignore_eos=True, temperature=0.8, seed=i
        )
        for i in range(4)
    }
    got = _run(tiny, reqs)
    assert _run.started_before_first_end == set(reqs)  # type: ignore[attr-defined]
    for i in range(4):
        outcome, text = got[f"s{i}"]
        assert outcome.finish_reason == "length" and outcome.completion_tokens == 24 + 8 * i
        assert len(text) == 24 + 8 * i


def test_a_seed_gives_the_same_text_whoever_else_is_decoding(tiny: object) -> None:
    req = LLMRequest(prompt="the same request", max_tokens=32, ignore_eos=True, temperature=0.9, seed=42)
    alone = _run(tiny, {"a": req})["a"][1]
    others = {
        f"o{i}": LLMRequest(
            prompt=f"noise {i} " * (i + 1), max_tokens=40, ignore_eos=True, temperature=1.0, seed=100 + i
        )
        for i in range(3)
    }
    crowded = _run(tiny, {**others, "a": req})["a"][1]
    assert crowded == alone
    other_seed = _run(
        tiny,
        {
            "a": LLMRequest(
                prompt="the same request", max_tokens=32, ignore_eos=True, temperature=0.9, seed=43
            )
        },
    )["a"][1]
    assert other_seed != alone  # the seed decides the draws (32 draws alike by chance: ~never)


def test_cancelling_one_sequence_leaves_the_others_intact(tiny: object) -> None:
    reqs = {
        k: LLMRequest(prompt=f"p{k}", max_tokens=30, ignore_eos=True, temperature=0.7, seed=7) for k in "abc"
    }
    alone = {k: _run(tiny, {k: r})[k][1] for k, r in reqs.items()}
    got = _run(tiny, reqs, cancel_after={"b": 3})
    assert got["b"][0].finish_reason == "cancelled" and got["b"][0].completion_tokens < 30
    for k in "ac":
        assert got[k][0].finish_reason == "length" and got[k][1] == alone[k]


def test_stop_strings_and_max_tokens_hold_per_sequence(tiny: object) -> None:
    greedy = LLMRequest(prompt="xyz", max_tokens=20, ignore_eos=True, temperature=0)
    text = _run(tiny, {"g": greedy})["g"][1]
    stop = text[5:7]  # a stop string the greedy answer is known to reach
    cut = text[: text.index(stop)]
    got = _run(
        tiny,
        {
            "stopped": LLMRequest(prompt="xyz", max_tokens=20, ignore_eos=True, temperature=0, stop=(stop,)),
            "short": LLMRequest(prompt="xyz", max_tokens=3, ignore_eos=True, temperature=0),
            "long": greedy,
        },
    )
    assert got["stopped"] == (
        LLMOutcome("stop", got["stopped"][0].prompt_tokens, got["stopped"][0].completion_tokens),
        cut,
    )
    assert got["short"][0].completion_tokens == 3 and got["short"][1] == text[:3]
    assert got["long"][1] == text


def test_the_batch_reports_its_size_and_memory(tiny: object) -> None:
    batch = tiny.batch()  # type: ignore[attr-defined]
    assert batch.free() == 4 and batch.active == 0
    details = tiny.describe()  # type: ignore[attr-defined]
    # tiny: 2 layers x 2 KV heads x 16 dims x (K and V) x 4 bytes = 512 B a token, 4 x 4096 tokens
    assert details.kv_cache_bytes == 4 * 4096 * 512


def test_the_board_shows_prefill_until_every_sequence_has_its_first_token(tiny: object) -> None:
    """The lane's runner over this batch: PREFILL (images sharing the GPU pause) while a
    sequence waits for its first token, DECODE once all stream, IDLE at the end."""
    board: list[Activity] = []
    runner = LLMRunner(WorkerEnv("llm", lambda _m: None, board.append, lambda: None, parallel=4))
    for i in range(4):
        req = LLMRequest(prompt="a long prompt " * (40 * (i + 1)), max_tokens=16, ignore_eos=True)
        runner.admit(tiny, f"t{i}", req, lambda: False)  # type: ignore[arg-type]
    done: set[str] = set()
    while len(done) < 4:
        done.update(key for key, _ in runner.step())
    assert board[0] is Activity.PREFILL and board[-1] is Activity.IDLE
    assert Activity.DECODE in board


def test_a_stopped_engine_fails_its_sequences_and_a_new_one_serves_the_next(tiny: object) -> None:
    batch = tiny.batch()  # type: ignore[attr-defined]
    batch.add("held", LLMRequest(prompt="abc", max_tokens=400, ignore_eos=True), TextCollector())
    batch._engine.stop(block=True, hard_stop=True)  # as if its thread had died
    ended: dict[str, object] = {}
    while "held" not in ended:
        ended.update(batch.step())
    assert isinstance(ended["held"], BackendError) and "transformers engine stopped" in ended["held"].message
    assert batch.active == 0
    outcome = tiny.generate(LLMRequest(prompt="abc", max_tokens=5, ignore_eos=True), TextCollector())  # type: ignore[attr-defined]
    assert outcome.completion_tokens == 5


def test_a_seed_holds_when_a_long_prompt_joins_mid_answer(tiny: object) -> None:
    """A co-runner whose prompt is prefilled in chunks over several steps joins while the
    seeded sequence decodes: its draws stay its own."""
    req = LLMRequest(prompt="steady", max_tokens=40, ignore_eos=True, temperature=0.9, seed=11)
    alone = _run(tiny, {"a": req})["a"][1]
    batch = tiny.batch()  # type: ignore[attr-defined]
    out = TextCollector()
    batch.add("a", req, out)
    ended: dict[str, object] = {}
    while len(out.text) < 5:
        ended.update(batch.step())
    long = LLMRequest(prompt="a long prompt " * 60, max_tokens=10, ignore_eos=True, temperature=1.0, seed=3)
    batch.add("long", long, TextCollector())
    while len(ended) < 2:
        ended.update(batch.step())
    assert out.text == alone


def test_an_already_cancelled_request_never_reaches_the_engine(tiny: object) -> None:
    batch = tiny.batch()  # type: ignore[attr-defined]
    batch.add("gone", LLMRequest(prompt="abc", max_tokens=50), TextCollector(cancel_after=0))
    assert batch.active == 1
    assert batch.step() == [("gone", LLMOutcome("cancelled", 0, 0))]
    assert batch.active == 0


def test_each_sequence_context_is_its_share_of_the_cache(tiny: object) -> None:
    batch = tiny.batch()  # type: ignore[attr-defined]
    assert batch.n_ctx == 4096 == tiny.context_tokens  # type: ignore[attr-defined]
    assert batch._engine.batch_processor.cache.num_blocks * 256 == batch.kv_cache_tokens == 4 * 4096


def test_the_footprint_counts_what_a_cpu_load_of_a_bf16_checkpoint_takes(tmp_path: Path) -> None:
    """A checkpoint saved in bf16 loads as float32 on a CPU lane (the backend's default): the
    footprint the lane's budget plans with counts the loaded weights, not the files' bytes."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from ris.backends.llm_transformers import _dtype
    from ris.memory.footprint import hf_kv_bytes_per_token, model_footprint

    cfg = Qwen2Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)  # type: ignore[arg-type]
    files = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=_dtype(None, "cpu"), local_files_only=True)
    loaded = sum(p.numel() * p.element_size() for p in model.parameters())
    spec = ModelSpec(backend="transformers", source=str(tmp_path), options={"kv_cache_tokens": 256})
    fp = model_footprint(spec, parallel=1, device="cpu")
    assert model.dtype == torch.float32 and fp is not None
    assert fp.weights == loaded and loaded > 1.9 * files  # the files hold half of it
    assert fp.kv == 256 * hf_kv_bytes_per_token(model.config.to_dict(), "float32")  # type: ignore[operator]
