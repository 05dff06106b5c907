"""Integer ranges in GBNF (backends/_json_grammar.py), checked exactly: the grammar read as a
regular expression against every integer near each bound and a spread of others."""

from __future__ import annotations

import json
import random
import re

import pytest

from ris.backends._json_grammar import integer_range
from ris.lanes.json_schemas import integer_bounds


def as_regex(grammar: str) -> re.Pattern[str]:
    """The alternatives' GBNF (quoted literals, [a-b] classes, {n}, groups) as a regex."""
    text = re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), grammar).replace(" ", "")
    return re.compile(f"(?:{text})")


CASES = [
    (0, 0), (0, 9), (1, 9), (0, 120), (18, 65), (-5, 5), (-120, -3), (None, 0), (0, None), (1, None),
    (None, -1), (7, 7), (100, 999), (101, 998), (99, 1001), (-1000, None), (None, None), (12345, 67890),
]  # fmt: skip


def test_an_integer_range_matches_exactly_the_integers_in_it() -> None:
    rng = random.Random(1)
    cases = list(CASES)
    for _ in range(200):
        a = rng.randint(-(10**6), 10**6)
        cases.append((a, a + rng.choice([1, 10, 1000, 10**6])))
    for low, high in cases:
        rx = as_regex(integer_range(low, high))
        lo, hi = -(10**7) if low is None else low, 10**7 if high is None else high
        probes = {*range(lo - 30, lo + 30), *range(hi - 30, hi + 30), 0, -1, 1, 10**16 - 1, 10**16}
        probes |= {rng.randint(-(10**7), 10**7) for _ in range(200)}
        for v in probes:
            inside = (low is None or v >= low) and (high is None or v <= high) and abs(v) < 10**16
            assert bool(rx.fullmatch(str(v))) == inside, (low, high, v)
        for never in ("-0", "01", "00", "+1", ""):  # not JSON's form of an integer
            assert not rx.fullmatch(never), (low, high, never)


def test_bounds_as_json_schema_and_pydantic_write_them() -> None:
    assert integer_bounds({"minimum": 0, "maximum": 120}) == (0, 120)
    assert integer_bounds({"exclusiveMinimum": -3, "exclusiveMaximum": 3}) == (-2, 2)  # gt, lt
    assert integer_bounds({"minimum": 0.5, "maximum": 9.5}) == (1, 9)
    assert integer_bounds({"minimum": 2, "exclusiveMinimum": 5}) == (6, None)  # the tighter
    assert integer_bounds({"minimum": True, "maximum": "9"}) == (None, None)  # not numbers
    with pytest.raises(ValueError, match="no integer lies between"):
        integer_range(5, 4)


def test_what_decides_a_value_first_keeps_deciding_it() -> None:
    """The override ran before the converter's own order: an integer enum with bounds became
    any integer in the bounds, a const any integer at all, an email with a maxLength one of
    600 characters. Where something else shapes the value, the grammar is the converter's."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf as converters

    from ris.backends._json_grammar import json_schema_to_gbnf as ours

    for schema in (
        {"type": "integer", "enum": [2, 4], "minimum": 1, "maximum": 5},
        {"type": "integer", "const": 3, "minimum": 0},
        {"type": "string", "format": "email", "maxLength": 20},
        {"type": "integer", "minimum": 5, "exclusiveMinimum": True},
    ):
        assert ours(json.dumps(schema)) == converters(json.dumps(schema)), schema
    assert ours('{"type": "integer", "minimum": 1, "maximum": 3}') != converters(
        '{"type": "integer", "minimum": 1, "maximum": 3}'
    )
    assert '"@"' in ours('{"type": "string", "format": "email"}')


def test_what_the_converter_misread_is_written_as_it_reads_it() -> None:
    """An agent developer's schemas: each failed or was not enforced (emoji enums came out as
    six U+FFFD; `\\d` was "unknown escape"; `items: {}` a KeyError; a type list dropped its
    maxLength; `not` an AssertionError; a root $ref a KeyError)."""
    from ris.backends._json_grammar import gbnf_pattern, json_schema_to_gbnf, readable

    def parses(schema: dict[str, object]) -> str:
        """Converted without an error (llama.cpp's parser, which needs a model's vocabulary,
        takes them in tests/integration/test_structured_output.py)."""
        grammar = json_schema_to_gbnf(json.dumps(schema))
        assert "\\d" not in grammar and "\\." not in grammar, grammar
        return grammar

    emoji = parses({"type": "object", "properties": {"e": {"enum": ["👍", "🔥"]}, "🎉": {"const": "😀"}}})
    assert "\\U0001F44D" in emoji and "\\U0001F600" in emoji and "\\ud83d" not in emoji.lower()
    assert gbnf_pattern(r"^\d{3}-\w\.[\d.]\s$") == r"^[0-9]{3}-[A-Za-z0-9_][\x2E][0-9.][ \t\n\r]$"
    for pattern in (r"^\d{3}-\d{2}$", r"^[\d]{3}$", r"^[a-z]{2}\.[a-z]{2}$", r"^\w+@\w+\.com$"):
        parses({"type": "object", "properties": {"p": {"type": "string", "pattern": pattern}}})
    anything = {"x": {"type": "array", "items": {}}, "y": {"type": "array", "items": True}}
    parses({"type": "object", "properties": anything})
    counted = readable({"type": "array", "maxItems": 2})
    assert counted["items"]["anyOf"] and counted["maxItems"] == 2
    typed = readable({"type": ["string", "null"], "maxLength": 3})
    assert typed == {"anyOf": [{"type": "string", "maxLength": 3}, {"type": "null", "maxLength": 3}]}
    assert readable({"type": "string", "not": {"type": "string"}}) == {"type": "string"}
    # Names under properties are names, and enum values data: neither read as keywords.
    kept = readable({"properties": {"not": {"type": "string"}}, "enum": [{"type": ["a", "b"]}]})
    assert kept == {"properties": {"not": {"type": "string"}}, "enum": [{"type": ["a", "b"]}]}
    node = {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/N"}}}}
    parses({"$defs": {"N": node}, "$ref": "#/$defs/N"})


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "leads nowhere or back to itself"),
        ({"properties": 5}, "a keyword holds a value JSON Schema does not allow there"),
        ({"type": 5}, "this part is not a JSON Schema: {'type': 5}"),
    ],
)
def test_a_schema_the_converter_cannot_read_is_refused_in_its_words(schema: object, said: str) -> None:
    """Python's words, as an outside test found them: `KeyError: '#/$defs/a'` for a $ref that
    exists (it refers to itself), `AttributeError: 'int' object has no attribute 'items'`."""
    from ris.backends import BackendError
    from ris.backends._grammar import gbnf
    from ris.lanes.llm import Constraint

    with pytest.raises(BackendError) as exc:
        gbnf(Constraint(json.dumps(schema)))
    assert exc.value.code == "invalid_request" and said in exc.value.message
    assert "Error" not in exc.value.message
