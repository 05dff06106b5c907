"""What a JSON schema asks of the grammar it becomes, read before a request is queued: the
API refuses a schema no answer can match or one llama.cpp cannot parse, and knows which
keywords the grammar holds (ris.backends._json_grammar) and which it leaves unenforced.

Pure functions of the schema (no llama.cpp here: the API process imports this).
"""

from __future__ import annotations

import math
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
