"""How the transformers backend frames a prompt, on a stand-in tokenizer: a raw completion gets
the tokenizer's BOS, a chat on a model without a template is written as turns with a stop at the
next user turn (as the llama.cpp lane does), and an answer ends on any of the model's end ids."""

from __future__ import annotations

from typing import Any

from ris.backends.llm_transformers import TransformersLLM, end_ids
from ris.lanes.llm import LLMRequest

BOS = 1


class Tokenizer:
    """Characters as tokens; `special` puts the BOS in front, as add_special_tokens does."""

    eos_token_id = 2

    def __init__(self, template: bool) -> None:
        self.has_template = template

    def encode(self, text: str, special: bool = False) -> list[int]:
        return ([BOS] if special else []) + [ord(c) for c in text]

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def backend(template: bool) -> Any:
    llm: Any = object.__new__(TransformersLLM)
    llm._tok = Tokenizer(template)
    return llm


def text(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids if i != BOS)


def test_a_raw_completion_gets_the_tokenizers_bos_a_templated_chat_does_not() -> None:
    ids, stops = backend(template=True)._tokens(LLMRequest(prompt="The sky"))
    assert ids[0] == BOS and text(ids) == "The sky" and stops == ()
    ids, stops = backend(template=True)._tokens(LLMRequest(messages=(("user", "hi"),)))
    assert BOS not in ids and text(ids) == "<user>hi<assistant>" and stops == ()


def test_a_chat_on_a_model_without_a_template_is_written_as_turns() -> None:
    ids, stops = backend(template=False)._tokens(
        LLMRequest(messages=(("system", "Be brief."), ("user", "hi")))
    )
    assert text(ids) == "system: Be brief.\nuser: hi\nassistant:" and stops == ("\nuser:",)


def test_every_end_id_of_the_model_and_its_tokenizer_ends_an_answer() -> None:
    assert end_ids([151645, 151643], 151643) == (151643, 151645)  # Qwen2.5-Instruct
    assert end_ids(128009, 128001) == (128001, 128009)
    assert end_ids(None, None) == () and end_ids(-1, 5) == (5,)
