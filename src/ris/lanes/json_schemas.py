"""What a JSON schema asks of the grammar it becomes, read before a request is queued: the
API refuses a schema no answer can match or one llama.cpp cannot parse, and knows which
keywords the grammar holds (ris.backends._json_grammar) and which it leaves unenforced.

Pure functions of the schema (no llama.cpp here: the API process imports this).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard

# How often a grammar may repeat what a keyword asks, past which llama.cpp cannot parse the
# grammar it becomes (measured with the converter here: maxLength 2,000 parses, maxItems 1,001
# does not, a separator between items), and far past which (20,000) its parser overflowed the
# worker's stack: a SIGSEGV that failed every request of the batch.
REPETITION_BOUNDS = {"minLength": 2000, "maxLength": 2000, "minItems": 2000, "maxItems": 1000}

# The widest integer the grammar writes (llama-cpp-python's converter: 16 digits).
WIDEST_INTEGER = 10**16 - 1
# Keywords whose value maps names to schemas (a property may be named "enum" or "default").
_NAMED_SCHEMAS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Keywords whose value is data, not a schema.
_DATA = ("enum", "const", "default", "examples")
# An integer's bounds, and what else may decide its values first (the converter's order).
_INTEGER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_DECIDED_BEFORE = ("$ref", "anyOf", "oneOf", "allOf", "const", "enum")
_SHAPE_A_STRING = (
    "minLength",
    "maxLength",
    "pattern",
    "properties",
    "additionalProperties",
    "items",
    "prefixItems",
)


def subschemas(schema: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema in `schema`, itself first, with its path ("address.city."), and those its
    local `$ref`s point at, wherever that is: the converter turns a pointer's target into
    grammar even inside data ("#/properties/a/default"), which a walk of schemas alone missed."""
    seen: set[int] = set()

    def walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, list):
            for i, x in enumerate(node):
                yield from walk(x, f"{path}{i}.")
            return
        if not isinstance(node, dict) or id(node) in seen:
            return
        seen.add(id(node))
        yield path, node
        ref = node.get("$ref")
        if isinstance(ref, str):
            yield from walk(_pointed(schema, ref), f"{path}$ref({ref}).")
        for key, value in node.items():
            if key in _NAMED_SCHEMAS and isinstance(value, dict):
                for name, sub in value.items():
                    yield from walk(sub, f"{path}{name}.")
            elif key not in _DATA and not key.startswith("x-"):
                # (A vendor's "x-..." keyword is no schema the converter reads, unless a $ref
                # points into it: followed above.)
                yield from walk(value, f"{path}{key}.")

    yield from walk(schema, "")


def _pointed(root: Any, ref: str) -> Any:
    """What a local `$ref` ("#/$defs/Name") points at in `root`, found as the grammar converter
    finds it: dictionary keys read as written (a JSON pointer's "~0" unescaped here while the
    converter took the key as written let a schema's checks read one target and the converter
    another); None for a remote or broken one (refused elsewhere, llm_request.broken_refs)."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node = root
    for token in ref[2:].split("/"):
        if not isinstance(node, dict):
            return None
        node = node.get(token)
    return node


def _each(schema: Any, check: Callable[[str, dict[str, Any]], list[str]]) -> list[str]:
    return [found for path, sub in subschemas(schema) for found in check(path, sub)]


def long_repetitions(schema: Any) -> list[str]:
    """Where a JSON schema asks for more repetitions than a grammar holds, e.g.
    ["text.maxLength 5000 (at most 2000)"]."""

    def check(path: str, sub: dict[str, Any]) -> list[str]:
        return [
            f"{path}{key} {value} (at most {bound})"
            for key, bound in REPETITION_BOUNDS.items()
            if isinstance(value := sub.get(key), int) and value > bound
        ]

    return _each(schema, check)


# A `pattern`'s counted repetitions, as the converter writes them (x{0,n}: n nested optional
# copies). Measured with llama.cpp's grammar parser here: a{0,1000} parses, a{0,2000} does not,
# and a{0,30000} overflowed the worker's stack (a SIGSEGV that failed every answer of the
# batch, and repeated, held the lane down for minutes).
MAX_PATTERN_REPEAT = 1000
# A counted repetition of something that itself varies ((a?){0,60}, (a{0,50}){0,50}) leaves
# the grammar many ways to have read the same text, all tracked at every token: one check of
# the vocabulary took 0.08 s at (a{0,10}){0,10}, 0.5 s at (a?){0,60}, 5 s at (a{0,50}){0,50}
# (2 cores), one request held the worker for 80 s, and the answer's grammar bound
# (MAX_GRAMMAR_S) is only checked between those steps. So such a repetition may count to
# MAX_VARYING_REPEAT at most, and its count times the ways its body varies to
# MAX_VARYING_WEIGHT. Unbounded ones ((a?)*, (a+)+) are written as recursion and stay cheap.
MAX_VARYING_REPEAT = 20
MAX_VARYING_WEIGHT = 200
# And in all, the parts of a pattern whose length varies: each is one more way to have read the
# same text. "a?" written 40 times took 0.11 s a vocabulary check, 100 times 1.7 s, 5,000 times
# 83 s (one request held every other user's structured answers that long).
MAX_VARYING_PARTS = 40
# Of the parts in a row whose length varies, how far all but the longest may vary together (in
# characters; "a?" 40 times is 39): a{0,50} written 40 times passed the checks above.
MAX_SEQUENCE_SPREAD = 40


def pattern_problems(schema: Any) -> list[str]:
    """Where a JSON schema's `pattern` is one the grammar cannot hold, or holds at a cost no
    answer may take, e.g. ["code.pattern {0,30000} repeats more than 1000 times"]. Only where
    the converter reads it: a string's (an integer's or an enum's pattern is never read)."""

    def check(path: str, sub: dict[str, Any]) -> list[str]:
        pattern = sub.get("pattern")
        if not isinstance(pattern, str) or not _pattern_read(sub):
            return []
        return [f"{path}pattern {problem}" for problem in _pattern_problems(pattern)]

    return _each(schema, check)


def _pattern_read(sub: dict[str, Any]) -> bool:
    """Whether the converter may turn `sub`'s pattern into grammar: not where a $ref, a
    combinator, a const or an enum decides first, nor for a type that is not a string."""
    if any(key in sub for key in ("$ref", "oneOf", "anyOf", "const", "enum")):
        return False
    kind = sub.get("type")
    return kind is None or kind == "string" or (isinstance(kind, list) and "string" in kind)


class _Unreadable(ValueError):
    """A pattern the converter cannot read (it fails with an AssertionError or a ValueError)."""


# Read the way llama-cpp-python's converter reads a pattern (SchemaConverter._visit_pattern),
# not as Python's `re` does: a count is whatever stands between braces, spaces stripped, so
# "{0, 30000}" is a count to the converter and literal text to `re` (which let it past a check
# made with `re`'s parser, and the worker crashed all the same). A count here must be ASCII
# digits (`int` would take "30_000" and full-width digits too).
_COUNT = re.compile(r"[0-9]*")
_CAP = 10**6


def _pattern_problems(pattern: str) -> list[str]:
    if not (pattern.startswith("^") and pattern.endswith("$")) or len(pattern) < 2:
        # The converter holds the whole string to the pattern, and asserts this (its
        # AssertionError's text was the answer).
        return ["must be anchored: start with ^ and end with $ (the whole string is held to it)"]
    found: list[str] = []
    try:
        whole, end = _alternatives(pattern, 1, len(pattern) - 1, found)
        if end != len(pattern) - 1:
            raise _Unreadable(f"an unmatched ')' at {end}")
    except _Unreadable as e:
        return [f"is not a pattern this server reads ({e})"]
    except RecursionError:
        return ["nests its groups too deep for this server to read"]
    if not found and whole[3] > MAX_VARYING_PARTS:
        found.append(
            f"has {whole[3] if whole[3] < _CAP else 'too many'} parts whose length varies (?, *, +, "
            f"{{m,n}}; at most {MAX_VARYING_PARTS}): the grammar tracks every way to have read the "
            "text, at seconds a token"
        )
    return found[:3]


# A parsed part: (shortest width, longest width or None for no bound, ways it may be read,
# parts within it whose length varies).
_Part = tuple[int, int | None, int, int]


def _alternatives(p: str, i: int, stop: int, found: list[str]) -> tuple[_Part, int]:
    """The alternatives from `i` to a ')' at this depth or `stop`: their widths and ways, and
    where they end. Alternatives of one fixed width ("ab|cd") read a text one way; of several
    widths ("a|aa|aaa") in as many ways as there are of them."""
    branches: list[_Part] = []
    while True:
        part, i = _sequence(p, i, stop, found)
        branches.append(part)
        if i < stop and p[i] == "|":
            i += 1
            continue
        break
    lows = [b[0] for b in branches]
    highs = [b[1] for b in branches]
    high = None if None in highs else max(h for h in highs if h is not None)
    one_width = len(set(lows)) == 1 and len(set(highs)) == 1 and lows[0] == highs[0]
    ways = max(b[2] for b in branches) if one_width else min(_CAP, sum(b[2] for b in branches))
    varying = max(b[3] for b in branches) + (1 if len(branches) > 1 and not one_width else 0)
    return (min(lows), high, ways, varying), i


def _sequence(p: str, i: int, stop: int, found: list[str]) -> tuple[_Part, int]:
    low, ways, varying = 0, 1, 0
    high: int | None = 0
    last: _Part | None = None
    spreads: list[int] = []  # how far each part's length varies (no bound: 1, as recursion)

    def close(part: _Part | None) -> None:
        nonlocal low, high, ways, varying
        if part is not None:
            low += part[0]
            high = None if high is None or part[1] is None else high + part[1]
            ways = min(_CAP, ways * part[2])
            varying = min(_CAP, varying + part[3])
            spread = 1 if part[1] is None else min(_CAP, part[1] - part[0])
            if spread:
                spreads.append(spread)

    while i < stop and p[i] not in "|)":
        c = p[i]
        if c in "*+?{":
            if last is None:
                raise _Unreadable(f"{c!r} at {i} repeats nothing")
            if c == "{":
                shut = p.find("}", i)
                if shut < 0 or shut >= stop:
                    raise _Unreadable(f"an unclosed '{{' at {i}")
                lo, hi = _counts(p[i + 1 : shut])
                written, i = p[i : shut + 1], shut + 1
            else:
                lo, hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
                written, i = c, i + 1
            last = _repeated(last, lo, hi, written, found)
            continue
        close(last)
        if c == "(":
            if p[i + 1 : i + 2] == "?":
                raise _Unreadable(f"'(?' at {i}: lookarounds and non-capturing groups are not supported")
            group, i = _alternatives(p, i + 1, stop, found)
            if i >= stop or p[i] != ")":
                raise _Unreadable("an unclosed '('")
            last, i = group, i + 1
        elif c == "[":
            i += 1
            while i < stop and p[i] != "]":
                i += 2 if p[i] == "\\" else 1
            if i >= stop:
                raise _Unreadable("an unclosed '['")
            last, i = (1, 1, 1, 0), i + 1
        elif c in "]}":
            # The converter's literal loop stands still on these (a worker spun on "^]$" until
            # the 300 s progress bound replaced it): written escaped, they are read.
            raise _Unreadable(f"a {c!r} at {i} outside a class: write it escaped, as \\{c}")
        else:  # a character, an escape, '.': one character read one way
            last, i = (1, 1, 1, 0), i + (2 if c == "\\" and i + 1 < stop else 1)
    close(last)
    # Parts of varying length in a row: after some text, each may be where the reading stands
    # (a{0,1000}a{0,1000}: a thousand places, as many stacks checked at every token). The
    # longest alone is read one way (a{0,1000}: one place); the others count.
    others = sum(spreads) - max(spreads, default=0)
    if others > MAX_SEQUENCE_SPREAD and not any("in a row" in f for f in found):
        found.append(
            f"has parts of varying length in a row that vary by {min(others, _CAP)} characters "
            f"besides the longest (at most {MAX_SEQUENCE_SPREAD}): the grammar tracks every place "
            "the reading may stand, at seconds a token"
        )
    return (low, high, ways, varying), i


def _counts(text: str) -> tuple[int, int | None]:
    """A brace's counts as the converter takes them: "n", "n,", ",m" or "n,m", spaces aside."""
    nums = [n.strip() for n in text.split(",")]
    if len(nums) > 2 or not all(_COUNT.fullmatch(n) for n in nums) or not nums[0] and len(nums) == 1:
        raise _Unreadable(f"{{{text}}}: a count is written in digits, as {{3}}, {{1,5}} or {{2,}}")
    low = int(nums[0]) if nums[0] else 0
    if len(nums) == 1:
        return low, low
    return low, int(nums[1]) if nums[1] else None


def _repeated(part: _Part, lo: int, hi: int | None, written: str, found: list[str]) -> _Part:
    """`part` repeated lo to hi times (None: no bound), the bounds above checked. As the
    converter writes them: {5,3} is {5} (no optional copies), {0} nothing at all."""
    if hi is not None and hi < lo:
        hi = lo
    if hi == 0:
        return (0, 0, 1, 0)
    p_low, p_high, inner, p_varying = part
    if max(lo, hi or 0) > MAX_PATTERN_REPEAT:
        found.append(f"{written} repeats more than {MAX_PATTERN_REPEAT} times (a grammar's bound)")
        return (lo * p_low, None, _CAP, _CAP)
    count = hi if hi is not None else max(lo, 1)
    if inner > 1 and (count > MAX_VARYING_REPEAT or count * inner > MAX_VARYING_WEIGHT):
        found.append(
            f"{written} repeats a part that itself varies ({inner} ways): over {MAX_VARYING_REPEAT} "
            f"repetitions, or {MAX_VARYING_WEIGHT} ways in all, cost the grammar seconds a token"
        )
        return (lo * p_low, None, _CAP, _CAP)
    varying = min(_CAP, count * p_varying + (0 if hi == lo else 1))
    if inner == 1:  # a fixed part: its count alone varies
        ways = (hi - lo + 1) if hi is not None else 2
    else:  # each repetition may read its part another way
        ways = min(_CAP, count * inner)
    ways = max(1, ways)
    high = None if hi is None or p_high is None else hi * p_high
    return (lo * p_low, high, ways, varying)


def impossible_bounds(schema: Any) -> list[str]:
    """Where a JSON schema's lower bound exceeds its upper one, e.g. ["name: minLength 3 >
    maxLength 2"]: no answer matches, and the grammar wrote one that does not."""

    def check(path: str, sub: dict[str, Any]) -> list[str]:
        where = path.rstrip(".") or "the schema"
        found = []
        for low, high in (("minLength", "maxLength"), ("minItems", "maxItems"), ("minimum", "maximum")):
            a, b = sub.get(low), sub.get(high)
            if _number(a) and _number(b) and a > b:
                found.append(f"{where}: {low} {a} > {high} {b}")
        if sub.get("type") == "integer" and not found:
            lowest, highest = integer_bounds(sub)
            if lowest is not None and highest is not None and lowest > highest:
                found.append(f"{where}: no integer lies between its bounds ({lowest} to {highest})")
            elif (lowest is not None and lowest > WIDEST_INTEGER) or (
                highest is not None and highest < -WIDEST_INTEGER
            ):
                found.append(f"{where}: its bounds lie beyond the 16 digits an integer is written in")
        return found

    return _each(schema, check)


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer_bounds(schema: dict[str, Any]) -> tuple[int | None, int | None]:
    """The smallest and largest integer a schema's bounds allow (None: that end is open).
    `exclusiveMinimum`/`exclusiveMaximum` as numbers (JSON Schema 2020-12, Pydantic's gt/lt)."""
    lows, highs = [], []
    if _number(low := schema.get("minimum")):
        lows.append(math.ceil(low))
    if _number(low := schema.get("exclusiveMinimum")):
        lows.append(math.floor(low) + 1)
    if _number(high := schema.get("maximum")):
        highs.append(math.floor(high))
    if _number(high := schema.get("exclusiveMaximum")):
        highs.append(math.ceil(high) - 1)
    return (max(lows) if lows else None), (min(highs) if highs else None)


def integer_bounds_held(schema: dict[str, Any]) -> bool:
    """Whether the grammar writes only the integers in a schema's bounds: an integer schema
    with a bound, all of them numbers (draft 4's boolean exclusiveMinimum is not held), that
    nothing else decides first (an enum, a const, a combinator, a $ref)."""
    bounds = [schema[k] for k in _INTEGER_BOUNDS if k in schema]
    return (
        schema.get("type") == "integer"
        and bool(bounds)
        and all(_number(b) for b in bounds)
        and not any(k in schema for k in _DECIDED_BEFORE)
    )


def email_held(schema: dict[str, Any]) -> bool:
    """Whether the grammar holds a string to `format: email`: where nothing else shapes it (a
    length, a pattern, an enum, a const, a combinator, a $ref; without a type, properties or
    items, which the converter reads as an object or an array first)."""
    return (
        schema.get("type") in (None, "string")
        and schema.get("format") == "email"
        and not any(k in schema for k in (*_SHAPE_A_STRING, *_DECIDED_BEFORE))
    )


# JSON Schema keywords the grammar does not enforce (llama-cpp-python's converter skips them):
# a strict schema that uses one is refused, as OpenAI's strict mode refuses what it cannot
# guarantee; a non-strict one is served with them unenforced (docs/OPENAI_COMPATIBILITY.md).
# The bounds of an integer and an email are enforced where nothing else shapes the value
# (integer_bounds_held, email_held); a number's bounds are not.
UNENFORCED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "uniqueItems",
        "not",
        "if",
        "then",
        "else",
        "patternProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "dependentRequired",
        "dependentSchemas",
        "contains",
        "unevaluatedProperties",
        "unevaluatedItems",
    }
)
ENFORCED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)


def unenforced(schema: Any) -> list[str]:
    """Where a schema uses what the grammar cannot hold the answer to, e.g. ["age.minimum"];
    through local `$ref`s too, wherever they point (the same walk as the other checks)."""

    def check(path: str, sub: dict[str, Any]) -> list[str]:
        held = integer_bounds_held(sub)
        found = [f"{path}{k}" for k in sub if k in UNENFORCED and not (held and k in _INTEGER_BOUNDS)]
        if "format" in sub and sub["format"] not in ENFORCED_FORMATS and not email_held(sub):
            found.append(f"{path}format")
        return found

    return _each(schema, check)
