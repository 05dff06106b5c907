"""How the llama.cpp backend turns a rendered prompt into tokens, on a fake vocab (the real
models' GGUFs are the backend tests'): one BOS, never two, and no crash on a vocab without one."""

from __future__ import annotations

from typing import Any

import pytest

from ris.backends import BackendError
from ris.backends.llm_llama_cpp import LlamaCppLLM
from ris.lanes.llm import LLMRequest

BOS = 1


class Vocab:
    """llama_cpp.Llama's tokenize: the text's bytes as tokens, "<s>" as BOS, and the BOS the
    vocab adds in front when asked (add_bos) and `adds` says so."""

    def __init__(self, bos: int = BOS, adds: bool = True) -> None:
        self.bos, self.adds = bos, adds

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        body: list[int] = []
        rest = text
        while rest:
            if rest.startswith(b"<s>") and special:
                body.append(self.bos)
                rest = rest[3:]
            else:
                body.append(100 + rest[0])
                rest = rest[1:]
        return ([self.bos] if add_bos and self.adds and self.bos >= 0 else []) + body

    def token_bos(self) -> int:
        return self.bos


def backend(vocab: Vocab, rendered: str) -> Any:
    llm: Any = object.__new__(LlamaCppLLM)
    llm._llm = vocab
    llm._prompt = lambda req: (rendered, ())
    return llm


def test_a_template_that_writes_the_bos_itself_gets_one_bos_not_two() -> None:
    tokens, _ = backend(Vocab(), "<s>[INST] hi [/INST]")._tokens(LLMRequest(prompt="hi"))
    assert tokens[:2] == [BOS, 100 + ord("[")]


def test_a_template_without_one_gets_the_vocabs() -> None:
    tokens, _ = backend(Vocab(), "<|im_start|>user")._tokens(LLMRequest(prompt="hi"))
    assert tokens[0] == BOS and tokens.count(BOS) == 1


def test_an_empty_prompt_starts_from_bos_or_is_refused_without_one() -> None:
    assert backend(Vocab(adds=False), "")._tokens(LLMRequest(prompt="x"))[0] == [BOS]
    with pytest.raises(BackendError) as e:
        backend(Vocab(bos=-1), "")._tokens(LLMRequest(prompt="x"))
    assert e.value.code == "invalid_request"
