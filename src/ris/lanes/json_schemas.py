"""What a JSON schema asks of the grammar it becomes, read before a request is queued: the
API refuses a schema no answer can match or one llama.cpp cannot parse, and knows which
keywords the grammar holds (ris.backends._json_grammar) and which it leaves unenforced.

Pure functions of the schema (no llama.cpp here: the API process imports this).
"""

from __future__ import annotations

import math
import re
import re._constants as re_constants
import re._parser as re_parser
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
    """What a local `$ref` ("#/$defs/Name", JSON pointer escapes) points at in `root`; None
    for a remote or broken one (refused elsewhere, llm_request.broken_refs)."""
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node = root
    for token in ref[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(token)
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
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


def pattern_problems(schema: Any) -> list[str]:
    """Where a JSON schema's `pattern` is one the grammar cannot hold, or holds at a cost no
    answer may take, e.g. ["code.pattern: a{0,30000} repeats more than 1000 times"]."""

    def check(path: str, sub: dict[str, Any]) -> list[str]:
        pattern = sub.get("pattern")
        if not isinstance(pattern, str):
            return []
        return [f"{path}pattern {problem}" for problem in _pattern_problems(pattern)]

    return _each(schema, check)


def _pattern_problems(pattern: str) -> list[str]:
    if not (pattern.startswith("^") and pattern.endswith("$")):
        # The converter holds the whole string to the pattern, and asserts this (its
        # AssertionError's text was the answer).
        return ["must be anchored: start with ^ and end with $ (the whole string is held to it)"]
    try:
        tree = re_parser.parse(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        return [f"is not a regular expression this server reads ({e})"]
    found: list[str] = []
    _weight(tree, found)
    return found[:3]


def _weight(items: Any, found: list[str]) -> int:
    """How many ways `items` (a parsed regular expression) may vary in what it reads, capped;
    each repetition past the bounds above noted in `found`."""
    total = 1
    for op, av in items:
        if op in (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT, re_constants.POSSESSIVE_REPEAT):
            low, high, body = av
            bounded = high != re_constants.MAXREPEAT
            inner = _weight(body, found)
            written = f"{{{low},{high if bounded else ''}}}"
            if max(low, high if bounded else 0) > MAX_PATTERN_REPEAT:
                found.append(f"{written} repeats more than {MAX_PATTERN_REPEAT} times (a grammar's bound)")
                return _CAP
            count = high if bounded else max(low, 1)
            if inner > 1 and (count > MAX_VARYING_REPEAT or count * inner > MAX_VARYING_WEIGHT):
                found.append(
                    f"{written} repeats a part that itself varies ({inner} ways): over "
                    f"{MAX_VARYING_REPEAT} repetitions, or {MAX_VARYING_WEIGHT} ways in all, cost the "
                    "grammar seconds a token"
                )
                return _CAP
            item = ((high - low + 1) if bounded else 2) * inner
        elif op is re_constants.SUBPATTERN:
            item = _weight(av[-1], found)
        elif op is re_constants.BRANCH:
            weights = [_weight(branch, found) for branch in av[1]]
            widths = {branch.getwidth() for branch in av[1]}
            # Alternatives of one fixed width ("ab|cd") read a text one way; of several widths
            # ("a|aa|aaa") in as many ways as there are of them.
            one_way = len(widths) == 1 and len({w for pair in widths for w in pair}) == 1
            item = max(weights, default=1) if one_way else sum(weights)
        elif op in (re_constants.ATOMIC_GROUP,):
            item = _weight(av, found)
        elif op in (re_constants.ASSERT, re_constants.ASSERT_NOT):
            item = _weight(av[1], found)
        else:  # one character, a class, an anchor: read one way
            item = 1
        total = min(_CAP, total * item)
    return total


_CAP = 10**6


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
