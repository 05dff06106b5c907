"""api/streams.to_json, what every JSON body and server-sent event of the hot paths is written
with: compact UTF-8 (orjson), and JSON that orjson refuses still written (the standard library's
encoder), so that an answer that was generated is never lost to its encoding."""

from __future__ import annotations

import json
import math

from ris.api.streams import json_response, sse_data, sse_event, to_json


def test_compact_utf8_as_the_standard_library_writes_it() -> None:
    body = {"text": "héllo 你好", "n": [1, 2.5, None, True], "nested": {"k": ()}}
    assert to_json(body) == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def test_what_orjson_refuses_is_written_all_the_same() -> None:
    # A model's tool arguments, parsed as JSON, may hold an integer past 64 bits or deep nesting.
    big = {"arguments": {"id": 2**70, "neg": -(2**64)}}
    assert json.loads(to_json(big)) == big
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    assert json.loads(to_json({"a": deep})) == {"a": deep}


def test_a_nan_is_null_which_any_json_parser_takes() -> None:
    assert json.loads(to_json({"x": math.nan, "y": math.inf})) == {"x": None, "y": None}


def test_bodies_and_events_carry_it() -> None:
    assert json_response({"a": 1}).body == b'{"a":1}'
    assert sse_event("token", {"text": "é"}) == 'event: token\ndata: {"text":"é"}\n\n'.encode()
    assert sse_data({"id": 2**65}) == f'data: {{"id":{2**65}}}\n\n'.encode()
