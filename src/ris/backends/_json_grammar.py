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
    """llama-cpp-python's json_schema_to_gbnf, with integer bounds and emails enforced."""
    converter = _Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    resolved = converter.resolve_refs(json.loads(schema), "stdin")
    converter.visit(resolved, "")
    return str(converter.format_grammar())
