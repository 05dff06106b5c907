"""Grammars for constrained decoding on llama.cpp: a Constraint (a JSON Schema, maybe in the
tool-call form) -> GBNF -> a grammar sampler, and the check-then-resample way of using it.

llama.cpp's grammar sampler sets the logit of every token the grammar forbids to -inf. Run on
the whole vocabulary (49k tokens for SmolLM2) at every step it costs a quarter of a small
model's decode time; so, as llama.cpp's own `common_sampler_sample` does, the token is first
sampled without the grammar and only checked against it (one candidate), and only a token
the grammar refuses makes the grammar filter the whole vocabulary before sampling again.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import time
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from ris.backends import BackendError
from ris.backends._json_grammar import json_schema_to_gbnf
from ris.lanes.json_schemas import long_repetitions, pattern_problems
from ris.lanes.llm import Constraint
from ris.lanes.llm_tools import CALL_CLOSE, CALL_OPEN, MAX_PARALLEL_CALLS

# The start rule of a tool-call grammar; the schema's own rules keep their names (its start
# rule is "root", one call).
_CALLS_ROOT = "tool-calls"
# A character inside a JSON string. llama-cpp-python's converter (0.3.x) allows any character
# but `"` and `\`, control characters included, so a raw newline inside a string made JSON that
# no parser accepts (found by the 10-prompt test); this is upstream llama.cpp's rule.
_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_CHAR_LINE = re.compile(r"^char ::= .*$", re.MULTILINE)
_OPEN = CALL_OPEN.encode()


# Grammar work one answer may cost, in seconds of the worker's time, before it fails with
# schema_too_costly. Its cost grows with the alternatives the grammar holds open: a 2,000-value
# enum took 60 ms a token and a second per resample (here, 2 cores), 8.8 s of one request's
# answer during which every other sequence of the batch waited. Typical schemas spend
# milliseconds.
MAX_GRAMMAR_S = 2.0


def _why(e: Exception) -> str:
    """The converter's failure in the schema's words, not Python's (a KeyError named a $ref
    that exists, because it referred to itself; an AttributeError said `'int' object has no
    attribute 'items'` for `"properties": 5`)."""
    text = str(e.args[0]) if e.args else ""
    if isinstance(e, KeyError) and text.startswith("#"):
        return f"its $ref {text!r} leads nowhere or back to itself (a grammar needs one that ends)"
    if isinstance(e, RecursionError):
        return "its $refs lead back to themselves without end"
    if text.startswith("Unrecognized schema: "):
        return f"this part is not a JSON Schema: {text.removeprefix('Unrecognized schema: ')[:200]}"
    if isinstance(e, (AttributeError, TypeError)):
        return f"a keyword holds a value JSON Schema does not allow there ({text[:200]})"
    return f"the converter cannot express it ({text[:200] or type(e).__name__})"


@functools.lru_cache(maxsize=64)
def gbnf(constraint: Constraint) -> tuple[str, str]:
    """The grammar's text and its start rule; BackendError for a schema it cannot express.
    Cached by constraint: the same schema (a client's tools, every turn) is converted once."""
    # Checked by the API before queueing; again here, where a repetition past llama.cpp's parser
    # would crash the worker and every answer of its batch, whatever way the schema came in.
    schema = json.loads(constraint.schema)
    long = long_repetitions(schema)
    if long:
        raise BackendError("invalid_request", f"the JSON schema asks for {', '.join(long[:3])}")
    costly = pattern_problems(schema)
    if costly:
        raise BackendError("invalid_request", f"the JSON schema's {'; '.join(costly)}")
    try:
        rules = json_schema_to_gbnf(constraint.schema)
    except Exception as e:  # noqa: BLE001 - the converter fails on odd schemas with any exception
        raise BackendError(
            "invalid_request", f"the JSON schema cannot be turned into a grammar: {_why(e)}"
        ) from e
    rules = _CHAR_LINE.sub(lambda _: _CHAR_RULE, rules)
    depth = _nesting(rules)
    if depth > MAX_GRAMMAR_NESTING:
        # Whatever let it through the schema's checks: llama.cpp's parser recurses once per
        # level, and 30,000 levels overflowed the worker's stack.
        raise BackendError(
            "invalid_request",
            f"the JSON schema's grammar nests {depth} levels deep (at most {MAX_GRAMMAR_NESTING}): "
            "ask for fewer repetitions",
        )
    if constraint.form == "json":
        return rules, "root"
    block = f'"{_escape(CALL_OPEN)}\\n" root "\\n{_escape(CALL_CLOSE)}"'
    more = f'("\\n" {block}){{0,{MAX_PARALLEL_CALLS - 1}}}' if constraint.parallel else ""
    if constraint.lazy:
        # Starts right after the first opening tag, which the model wrote freely (the token that
        # ended it may have brought a little whitespace with it).
        first = f'[ \\n]{{0,2}} root [ \\n]{{0,2}} "{_escape(CALL_CLOSE)}"'
        return f"{rules}\n{_CALLS_ROOT} ::= {first} {more}\n", _CALLS_ROOT
    return f"{rules}\n{_CALLS_ROOT} ::= {block} {more}\n", _CALLS_ROOT


# The deepest grammar the schema checks let through (maxLength 2,000: 2,000 nested optional
# groups, which llama.cpp parses); a backstop for any way past them.
MAX_GRAMMAR_NESTING = 2000


def _nesting(rules: str) -> int:
    """How deep a GBNF text's parentheses nest (outside its string literals and classes)."""
    depth = deepest = 0
    i, n = 0, len(rules)
    quoted = in_class = False
    while i < n:
        c = rules[i]
        if quoted or in_class:
            if c == "\\":
                i += 1
            elif (quoted and c == '"') or (in_class and c == "]"):
                quoted = in_class = False
        elif c == '"':
            quoted = True
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth -= 1
        i += 1
    return deepest


def _escape(literal: str) -> str:
    return json.dumps(literal)[1:-1]


class Grammar:
    """One sequence's grammar: checks a sampled token, resamples when it is refused, and
    advances on every token the sequence keeps.

    A lazy grammar (tool_choice auto) is idle until the answer writes the opening tag of a
    call; from there on it holds the calls to their form. The tag is looked for here, in a few
    bytes of tail, rather than by llama.cpp's lazy sampler, which matches a regular expression
    against the whole answer at every token: 15x slower on a 1,900-token answer (measured).
    """

    def __init__(self, vocab: Any, n_vocab: int, constraint: Constraint) -> None:
        text, root = gbnf(constraint)
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode(), root.encode())
        if not sampler:
            raise BackendError("invalid_request", "llama.cpp could not parse the grammar of the JSON schema")
        self._sampler = sampler
        self._vocab = vocab
        self.spent_s = 0.0  # grammar work so far (sample), bounded by MAX_GRAMMAR_S
        self.waiting = constraint.lazy  # a lazy grammar not yet triggered
        self._tail = b""  # the last bytes of the answer, while waiting
        self._given_up = False
        self._n_vocab = n_vocab
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._one, llama_cpp.llama_token_data_p), size=1, selected=-1, sorted=False
        )
        # Every candidate, for a resample (allocated once per sequence, not per token).
        self._all = np.zeros(
            n_vocab, dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        )
        self._all["id"] = np.arange(n_vocab, dtype=np.intc)
        self._all_array = llama_cpp.llama_token_data_array(
            data=self._all.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )

    def check(self, token: int) -> bool:
        """Whether the grammar allows `token` (sampled without it): one candidate, cheap."""
        started = time.perf_counter()
        try:
            return self.allows(token)
        finally:
            self.spent_s += time.perf_counter() - started

    def keep(self, token: int, piece: Callable[[int], bytes]) -> None:
        """The sequence keeps `token`: the grammar advances. Fails the sequence with
        schema_too_costly once its grammar work passes MAX_GRAMMAR_S."""
        started = time.perf_counter()
        self.accept(token, piece(token) if self.waiting else b"")
        self.spent_s += time.perf_counter() - started
        self._check_cost()

    def _check_cost(self) -> None:
        if self.spent_s > MAX_GRAMMAR_S:
            raise BackendError(
                "schema_too_costly",
                f"the JSON schema's grammar took over {MAX_GRAMMAR_S:g} s of work for one answer, the "
                "limit; one with fewer alternatives (enum values, anyOf branches) costs less",
            )

    def allows(self, token: int) -> bool:
        if self.waiting:
            return True
        self._one[0] = llama_cpp.llama_token_data(token, 1.0, 0.0)
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._one_array))
        return bool(np.isfinite(self._one[0].logit))

    def resample(self, chain: Any, logits: np.ndarray) -> int:
        """Sample again from `logits` (a copy of the step's row: this may run on another thread
        while the next step decodes) with every refused token masked first, then the sequence's
        own chain (its temperature, top-p, seed). The costly part of a grammar: it filters the
        whole vocabulary. Counted in this thread's CPU time: waiting for a core the decode
        holds is not the grammar's cost."""
        started = time.thread_time()
        try:
            self._all["logit"] = logits
            self._all["p"] = 0.0
            self._all["id"] = np.arange(self._n_vocab, dtype=np.intc)
            self._all_array.size, self._all_array.selected, self._all_array.sorted = self._n_vocab, -1, False
            llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._all_array))
            if not np.isfinite(self._all["logit"][: self._all_array.size]).any():
                # Accepting a token the grammar refuses aborts the process inside llama.cpp; fail
                # the sequence instead (the others decode on).
                raise BackendError(
                    "backend_error", "the grammar allows no token of this model's vocabulary here"
                )
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(self._all_array))
            selected = self._all_array.selected
            if selected < 0:  # a greedy or dist sampler always selects; guard anyway
                selected = int(np.argmax(self._all["logit"][: self._all_array.size]))
            return int(self._all["id"][selected])
        finally:
            self.spent_s += time.thread_time() - started
            self._check_cost()

    def accept(self, token: int, piece: bytes) -> None:
        """The sequence keeps `token` (its text `piece`, read only while the grammar waits)."""
        if not self.waiting:
            llama_cpp.llama_sampler_accept(self._sampler, token)
            return
        if self._given_up:
            return
        self._tail += piece
        at = self._tail.find(_OPEN)
        if at < 0:
            self._tail = self._tail[-len(_OPEN) :]
            return
        self.waiting = False
        rest = self._tail[at + len(_OPEN) :]
        self._tail = b""
        for t in self._tokens(rest):
            if not self.allows(t):
                # Text the grammar cannot continue: this answer stays free to the end (and its
                # call, if any, is judged by the parser).
                self.waiting, self._given_up = True, True
                return
            llama_cpp.llama_sampler_accept(self._sampler, t)

    def _tokens(self, text: bytes) -> list[int]:
        if not text:
            return []
        buf = (llama_cpp.llama_token * (len(text) + 1))()
        n = llama_cpp.llama_tokenize(self._vocab, text, len(text), buf, len(buf), False, False)
        return list(buf[: max(n, 0)])

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self._sampler)
