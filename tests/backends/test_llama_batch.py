"""Continuous batching on the real model (SmolLM2 on llama.cpp): several sequences in one
context, each with its own sampling, stops, limits and cancellation; a slot's cached prompt
reused; a seed's text the same alone or among others."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ris.backends import BackendError
from ris.backends.llm_llama_cpp import LlamaCppLLM
from ris.lanes.llm import LLMRequest, TextCollector

from .batching import run_batch


def story(n: int, **kw: Any) -> LLMRequest:
    return LLMRequest(
        **{"prompt": f"Story {n}: Once upon a time", "max_tokens": 24, "ignore_eos": True, **kw}
    )


def test_each_sequence_keeps_its_own_limits_and_stops(llm: LlamaCppLLM) -> None:
    got = run_batch(
        llm,
        {
            "short": story(1, max_tokens=5),
            "long": story(2, max_tokens=30),
            "stopped": LLMRequest(prompt="Count: 1, 2, 3,", max_tokens=40, temperature=0, stop=(" 6",)),
        },
    )
    assert got["short"][0].completion_tokens == 5 and got["short"][0].finish_reason == "length"
    assert got["long"][0].completion_tokens == 30
    outcome, text = got["stopped"]
    assert outcome.finish_reason == "stop" and "6" not in text and "5" in text


def test_a_seed_gives_the_same_text_alone_and_among_others(llm: LlamaCppLLM) -> None:
    seeded = story(7, temperature=0.9, seed=99)
    alone = run_batch(llm, {"s": seeded})["s"][1]
    among = run_batch(llm, {"x": story(8, temperature=1.0), "s": seeded, "y": story(9, seed=3)})["s"][1]
    assert alone == among and len(alone) > 20


def test_a_cancelled_sequence_leaves_and_the_others_finish(llm: LlamaCppLLM) -> None:
    got = run_batch(llm, {"a": story(1), "gone": story(2), "b": story(3)}, cancel_after={"gone": 3})
    assert got["gone"][0].finish_reason == "cancelled" and got["gone"][0].completion_tokens <= 4
    assert got["a"][0].completion_tokens == got["b"][0].completion_tokens == 24


def test_a_repeated_prompt_reuses_its_slots_cache(llm: LlamaCppLLM) -> None:
    req = LLMRequest(messages=(("system", "You are terse. " * 30), ("user", "Hi")), max_tokens=4)
    run_batch(llm, {"first": req})
    batch = llm.batch()
    batch.add("again", req, TextCollector())
    assert batch.last_reused > 100  # only the last prompt token is decoded again
    while batch.active:
        batch.step()


def test_a_prompt_longer_than_a_slots_context_is_refused(llm: LlamaCppLLM) -> None:
    with pytest.raises(BackendError) as exc:
        llm.batch().add("long", LLMRequest(prompt="word " * 3000, max_tokens=4), TextCollector())
    assert exc.value.code == "context_length_exceeded" and "2048" in exc.value.message


def test_interleaved_conversations_each_keep_their_cache(llm: LlamaCppLLM) -> None:
    """Conversations share the chat template's first tokens; a new one must not take the slot
    of another for those few tokens and throw that conversation's cache away."""
    chats = {
        name: [("system", f"You are {name}, who answers briefly. " * 12), ("user", "Hello?")]
        for name in ("Ada", "Bo", "Cy")
    }
    reused: dict[str, list[int]] = {name: [] for name in chats}
    for _turn in range(2):
        for name, chat in chats.items():
            batch, out = llm.batch(), TextCollector()
            batch.add(name, LLMRequest(messages=tuple(chat), max_tokens=4, temperature=0), out)
            reused[name].append(batch.last_reused)
            while batch.active:
                batch.step()
            chat += [("assistant", out.text), ("user", "And then?")]
    assert all(later > 100 for _, later in reused.values()), reused


def test_a_new_request_borrows_a_shared_prefix_from_a_busy_slot(llm: LlamaCppLLM) -> None:
    system = ("system", "You are a careful assistant for a lighthouse museum. " * 12)
    first = LLMRequest(messages=(system, ("user", "When was it built?")), max_tokens=8, temperature=0)
    second = LLMRequest(
        messages=(system, ("user", "Who lived there?")), max_tokens=8, temperature=0.7, seed=4
    )
    batch = llm.batch()
    batch.abort()  # no cache from earlier tests
    batch.add("first", first, TextCollector())
    batch.step()  # the first is busy with its prompt
    borrowed = TextCollector()
    batch.add("second", second, borrowed)
    assert batch.last_reused > 100  # the system prompt's KV copied from the busy slot
    while batch.active:
        batch.step()
    batch.abort()
    fresh = TextCollector()
    batch.add("again", second, fresh)
    assert batch.last_reused == 0
    while batch.active:
        batch.step()
    assert borrowed.text == fresh.text and borrowed.text


def test_one_owners_prompt_state_never_serves_anothers(llm: LlamaCppLLM) -> None:
    """A prompt found in the cache answers sooner: one user guessing what another sent timed
    the guesses (a right one 90 ms, wrong ones 760-4,300 ms). Neither a slot's own cache nor a
    prefix borrowed from a busy slot crosses owners; the same owner's still serves."""
    secret = ("system", "Patient John Carter, diagnosis: hepatitis C. " * 10)
    alice = LLMRequest(messages=(secret, ("user", "Summarise.")), max_tokens=8, cache_scope="alice")
    bob = LLMRequest(messages=(secret, ("user", "Summarise.")), max_tokens=2, cache_scope="bob")
    batch = llm.batch()
    batch.abort()
    batch.add("alice", alice, TextCollector())
    batch.step()  # alice's prompt is in a busy slot
    batch.add("bob-while-busy", bob, TextCollector())
    assert batch.last_reused == 0  # not borrowed from alice's busy slot
    while batch.active:
        batch.step()
    batch.add("bob-again", bob, TextCollector())  # bob's own, from the slot he just used
    assert batch.last_reused > 100
    while batch.active:
        batch.step()
    for other in ("c1", "c2", "c3"):  # each slot in turn (least recently used) used by another
        batch.add(other, replace(bob, cache_scope=other), TextCollector())
        assert batch.last_reused == 0
        while batch.active:
            batch.step()
    batch.add("alice-again", alice, TextCollector())
    assert batch.last_reused == 0  # her slot went to another, who reused none of it
    while batch.active:
        batch.step()
    anyone = replace(alice, cache_scope=None)  # no keys: one owner, all shared as before
    batch.add("anon", anyone, TextCollector())
    while batch.active:
        batch.step()
    batch.add("anon-again", anyone, TextCollector())
    assert batch.last_reused > 100
    while batch.active:
        batch.step()


def test_new_prompts_share_one_chunk_per_step_while_a_stream_decodes(llm: LlamaCppLLM) -> None:
    batch = llm.batch()
    batch.abort()
    batch.add("stream", story(1, max_tokens=40), TextCollector())
    while batch.prefilling:
        batch.step()
    for i in range(2):  # two new prompts of ~60 tokens arrive while it decodes
        batch.add(
            f"new{i}",
            LLMRequest(prompt=f"{i} " + "tell me more about it " * 12, max_tokens=2),
            TextCollector(),
        )
    steps: list[int] = []
    while batch.prefilling:
        batch.step()
        steps.append(batch.last_step_tokens)
    assert max(steps) <= 1 + batch.prefill_chunk, steps  # the stream's token + one shared chunk
    while batch.active:
        batch.step()


def test_the_largest_seed_is_a_seed_not_a_request_for_randomness(llm: LlamaCppLLM) -> None:
    top = story(5, temperature=1.0, seed=2**32 - 1)
    assert run_batch(llm, {"a": top})["a"][1] == run_batch(llm, {"b": top})["b"][1]


def test_a_failed_decode_reports_the_sequences_that_ended_before_it(
    llm: LlamaCppLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sequence cancelled in the step whose decode then fails has already left its slot:
    abort() no longer knows it, so the step's failure carries it (its task must still end)."""
    import llama_cpp

    from ris.lanes.llm import StepFailed

    batch = llm.batch()
    batch.add("gone", story(1), TextCollector(cancel_after=0))  # cancelled at the next step
    batch.add("stays", story(2), TextCollector())
    monkeypatch.setattr(llama_cpp, "llama_decode", lambda ctx, b: 1)
    with pytest.raises(StepFailed) as failed:
        batch.step()
    assert [key for key, _ in failed.value.ended] == ["gone"]
    assert "llama_decode failed" in str(failed.value.cause)
    assert batch.abort() == ["stays"]


def test_an_option_llama_cpp_does_not_have_fails_the_load_naming_it(tmp_path: Path) -> None:
    """Llama() takes **kwargs and ignores what it does not know: "n_ctxx" started silently."""
    from ris.backends import BackendContext
    from ris.lanes.llm import LANE

    spec = LANE.embedded_models["smollm2"]
    typo = spec.model_copy(update={"options": {"n_ctxx": 4096}})
    with pytest.raises(BackendError) as e:
        LlamaCppLLM(typo, BackendContext(device="cpu", threads=1, data_dir=tmp_path))
    assert e.value.code == "bad_model" and "options n_ctxx: not options of llama.cpp" in e.value.message
    assert "n_ctx," in e.value.message  # the ones it takes are listed


def test_the_batch_counts_what_it_computed_reused_and_holds(llm: LlamaCppLLM) -> None:
    """The engine figures /metrics exports (ris_llm_engine_*): each prompt token is computed or
    found in a slot's cache; each sampled token counts, and all but a sequence's last go
    through one more decode; what the slots keep stays in their cache after the sequences end."""
    batch = llm.batch()
    before = batch.figures()
    req = LLMRequest(
        messages=(("system", "You count sheep. " * 20), ("user", "Go")), max_tokens=6, ignore_eos=True
    )
    got = run_batch(llm, {"a": req, "b": story(4, max_tokens=5)})
    mid = batch.figures()
    prompts = sum(outcome.prompt_tokens for outcome, _ in got.values())
    computed = mid.prompt_tokens - before.prompt_tokens
    assert computed + mid.reused_prompt_tokens - before.reused_prompt_tokens == prompts
    assert mid.generated_tokens - before.generated_tokens == 11
    assert mid.batched_tokens - before.batched_tokens == computed + 11 - 2
    assert mid.decode_steps - before.decode_steps >= 6
    assert mid.sequences == 0 and prompts <= mid.kv_cache_tokens <= mid.kv_cache_capacity_tokens
    assert mid.kv_cache_capacity_tokens == batch.n_ctx * (batch.free())
    run_batch(llm, {"again": req})  # the same prompt: found in the cache but its last token
    after = batch.figures()
    assert after.reused_prompt_tokens - mid.reused_prompt_tokens == got["a"][0].prompt_tokens - 1 > 50
    assert after.prompt_tokens - mid.prompt_tokens == 1
