"""JSON Schema -> GBNF: llama-cpp-python's converter, taught two things real schemas use.

Pydantic writes `Field(ge=0, le=120)` on an int as `minimum`/`maximum`, and `EmailStr` as
`format: email`; OpenAI's strict mode enforces both, the OpenAI SDK's `parse()` and LangChain's
`with_structured_output` send every schema strict, and llama-cpp-python's converter (0.3.x)
ignores both. So integers are held to their bounds here (a range written as digit-by-digit
alternatives, as one writes a range as a regular expression), and an email is held to
`local@domain.tld`. Other bounds (on `number`: a decimal range has no finite digit form worth
its grammar) stay unenforced, and strict schemas that use them are refused at the API.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

from ris.lanes.json_schemas import WIDEST_INTEGER, email_held, integer_bounds, integer_bounds_held

# A pragmatic address (RFC 5321's in full is not what a model should write): a local part of
# the usual characters, then labels, then a top-level name of letters.
_EMAIL = (
    r'"\"" [A-Za-z0-9._%+-]{1,64} "@" ([A-Za-z0-9] [A-Za-z0-9-]{0,62} "."){1,8} [A-Za-z]{2,24} "\"" space'
)


def integer_range(low: int | None, high: int | None) -> str:
    """GBNF alternatives for the integers from `low` to `high` in JSON's form (no leading zero,
    no "-0"); an open end is the widest integer the converter writes (16 digits)."""
    low = -WIDEST_INTEGER if low is None else max(low, -WIDEST_INTEGER)
    high = WIDEST_INTEGER if high is None else min(high, WIDEST_INTEGER)
    if low > high:
        raise ValueError(f"no integer lies between minimum {low} and maximum {high}")
    alternatives = []
    if low < 0:
        negative = _non_negative(max(1, -min(high, -1)), -low)
        alternatives.append(f'"-" ({" | ".join(negative)})')
    if high >= 0:
        alternatives += _non_negative(max(low, 0), high)
    return " | ".join(alternatives)


def _non_negative(low: int, high: int) -> list[str]:
    """Alternatives for low..high (0 <= low <= high), one band of digit counts at a time."""
    out = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        last = min(high, 10**digits - 1)
        if first <= last:
            out += _same_length(str(first), str(last))
    return out


def _same_length(low: str, high: str) -> list[str]:
    """Alternatives for the digit strings from `low` to `high`, both of one length."""
    if low == high:
        return [f'"{low}"']
    if len(low) == 1:
        return [f"[{low}-{high}]"]
    shared = 0
    while low[shared] == high[shared]:
        shared += 1
    if shared:
        return [f'"{low[:shared]}" ({" | ".join(_same_length(low[shared:], high[shared:]))})']
    rest = len(low) - 1
    zeros, nines = "0" * rest, "9" * rest
    out = []
    first, last = low[0], high[0]
    if low[1:] != zeros:  # the first digit's partial band from below
        out.append(f'"{low[0]}" ({" | ".join(_same_length(low[1:], nines))})')
        first = chr(ord(first) + 1)
    top = None
    if high[1:] != nines:  # and from above
        top = f'"{high[0]}" ({" | ".join(_same_length(zeros, high[1:]))})'
        last = chr(ord(last) - 1)
    if first <= last:  # whole bands between: any digits after
        out.append(f"[{first}-{last}] [0-9]{{{rest}}}")
    if top is not None:
        out.append(top)
    return out


# llama-cpp-python's converter is untyped: its methods are reached as Any.
_UntypedConverter: Any = SchemaConverter


class _Converter(_UntypedConverter):  # type: ignore[misc]
    def visit(self, schema: Any, name: str) -> str:
        if isinstance(schema, dict):
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"  # as the converter's
            # Only where nothing else shapes the value: the converter's own order decides an
            # enum, a const or a combinator first, and a length or pattern of an email.
            if integer_bounds_held(schema):
                return str(self._add_rule(rule_name, f"({integer_range(*integer_bounds(schema))}) space"))
            if email_held(schema):
                return str(self._add_rule(rule_name, _EMAIL))
        return str(super().visit(schema, name))


def json_schema_to_gbnf(schema: str) -> str:
    """llama-cpp-python's json_schema_to_gbnf, with integer bounds and emails enforced, on the
    schema as it reads it (`readable`), and characters past U+FFFF written as GBNF reads them."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(readable(json.loads(schema)), "stdin")
    converter.visit(resolved, "")
    return _SURROGATES.sub(_one_code_point, str(converter.format_grammar()))


# The converter writes literals with json.dumps, which escapes "👍" as a UTF-16 pair: GBNF reads
# "\ud83d\ude4d" as two code points, neither a character, and the answer came out as six
# U+FFFD. One \U escape each.
_SURROGATES = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


def _one_code_point(m: re.Match[str]) -> str:
    high, low = int(m.group(1), 16), int(m.group(2), 16)
    return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08X}"


# A value of any JSON type, for `items: {}` (the converter reads an empty schema as none given,
# and failed: KeyError 'prefixItems').
ANY_VALUE: dict[str, Any] = {
    "anyOf": [{"type": t} for t in ("string", "number", "boolean", "null", "object", "array")]
}
# Regular-expression escapes GBNF has no word for, as character classes it reads.
_CLASSES = {"d": "0-9", "w": "A-Za-z0-9_", "s": " \\t\\n\\r"}


def readable(schema: Any, top: bool = True) -> Any:
    """`schema` as llama-cpp-python's converter reads it, meaning the same:
    - `items: {}` or `true` (any value), and an array with counts but no items: items of any
      value (the converter failed, or dropped maxItems);
    - `"type": ["string", "null"]` beside its keywords: each type alone with them (the
      converter kept the types and dropped maxLength);
    - `not` left out (served unenforced, as the docs say; it failed with an AssertionError);
    - a root that is a `$ref` into its `$defs`: that definition (a recursive Pydantic model's
      schema; the converter failed: KeyError);
    - patterns with `\\d`, `\\w`, `\\s` and escaped punctuation as classes GBNF reads (`\\d`
      was "unknown escape" in llama.cpp's grammar parser)."""
    if isinstance(schema, list):
        return [readable(item, False) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "not":
            continue
        if key in _SCHEMA_MAPS and isinstance(value, dict):  # names to schemas: names are no keywords
            out[key] = {name: readable(v, False) for name, v in value.items()}
        elif key in _VALUES:  # JSON values, not schemas
            out[key] = value
        else:
            out[key] = readable(value, False)
    ref = out.get("$ref")
    if top and isinstance(ref, str) and ref.startswith("#/$defs/") and isinstance(out.get("$defs"), dict):
        target = out["$defs"].get(ref.removeprefix("#/$defs/"))
        if isinstance(target, dict):
            out = {**{k: v for k, v in out.items() if k != "$ref"}, **target}
    if "items" in out and out["items"] in ({}, True):
        out["items"] = ANY_VALUE
    elif _is(out, "array") and "items" not in out and "prefixItems" not in out:
        if "minItems" in out or "maxItems" in out:
            out["items"] = ANY_VALUE
    if isinstance(out.get("pattern"), str):
        out["pattern"] = gbnf_pattern(out["pattern"])
    types = out.get("type")
    if isinstance(types, list) and types:
        rest = {k: v for k, v in out.items() if k != "type"}
        one = len(types) == 1
        out = {**rest, "type": types[0]} if one else {"anyOf": [{**rest, "type": t} for t in types]}
    return out


# Keywords whose value maps names to schemas, and those whose value is JSON data.
_SCHEMA_MAPS = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})
_VALUES = frozenset({"enum", "const", "default", "examples", "required"})


def _is(schema: dict[str, Any], kind: str) -> bool:
    types = schema.get("type")
    return types == kind or (isinstance(types, list) and kind in types)


def gbnf_pattern(pattern: str) -> str:
    """A regular expression's escapes as the converter and GBNF read them: `\\d` as `[0-9]`
    (in a class, `0-9`), `\\w` and `\\s` likewise, an escaped punctuation mark as its code
    (`\\.` as `[\\x2E]`). Others (`\\t`, `\\n`, `\\uXXXX`, `\\\\`) as they are."""
    out, in_class, i = [], False, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            e = pattern[i + 1]
            i += 2
            if e.lower() in _CLASSES and (e.islower() or not in_class):
                body = _CLASSES[e.lower()]
                out.append(body if in_class else f"[{'' if e.islower() else '^'}{body}]")
            elif not e.isalnum() and e not in '\\"[]':
                code = f"\\x{ord(e):02X}"
                out.append(code if in_class else f"[{code}]")
            else:
                out.append(c + e)
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "".join(out)
