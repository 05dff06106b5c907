"""/v1's rule for fields it does not implement (openai_strict): declared, ignored, refused when
set, or a 400 naming the unknown field; parts a text model cannot read are named too."""

from __future__ import annotations

from typing import Any

import pytest

from ris.api.errors import APIError
from ris.api.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ImageGenerationRequest,
    SpeechRequest,
)
from ris.api.openai_strict import IMAGES, SPEECH, refuse_unknown
from ris.api.openai_tools import refuse_unsupported


def chat(*messages: dict[str, Any], **extra: Any) -> ChatCompletionRequest:
    turns = list(messages) or [{"role": "user", "content": "x"}]
    return ChatCompletionRequest.model_validate({"model": "m", "messages": turns, **extra})


def refused(body: Any) -> APIError:
    with pytest.raises(APIError) as e:
        refuse_unsupported(body)
    assert e.value.status == 400
    return e.value


def test_bookkeeping_fields_pass_and_a_typo_is_named() -> None:
    refuse_unsupported(chat(user="u", metadata={"k": "v"}, store=False, service_tier="auto"))
    e = refused(chat(max_token=5))
    assert (e.code, e.param) == ("unknown_parameter", "max_token")
    assert "Unrecognized request argument supplied: max_token" in e.message
    e = refused(CompletionRequest.model_validate({"model": "m", "prompt": "x", "tools": []}))
    assert (e.code, e.param) == ("unknown_parameter", "tools")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reasoning_effort", "low"),
        ("verbosity", "high"),
        ("logprobs", True),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("web_search_options", {}),  # {} turns OpenAI's web search on: it passed, unsaid
    ],
)
def test_fields_that_would_change_the_answer_are_refused_when_set(field: str, value: Any) -> None:
    e = refused(chat(**{field: value}))
    assert (e.code, e.param) == ("unsupported_parameter", field)
    refuse_unsupported(chat(**{field: None}))  # neutral: passes
    refuse_unsupported(chat(verbosity="medium", frequency_penalty=0, logit_bias={}))  # OpenAI's defaults


def test_a_refusal_says_which_values_pass() -> None:
    """`quality: "hd"` was refused "(leave it out)" while "standard" and "auto" pass."""
    e = refused(chat(verbosity="high"))
    assert 'verbosity "high" is not supported by this server (leave it out, or send "medium")' in e.message
    e = refused(chat(logprobs=True))
    assert "logprobs true is not supported by this server (leave it out)" in e.message
    e = refused(chat(audio={"voice": "a" * 100}))
    assert len(e.message) < 200 and 'audio {"voice": "' + "a" * 26 + "... is not" in e.message


def test_a_part_the_model_cannot_read_is_named_with_the_model() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    e = refused(chat({"role": "user", "content": [image]}))
    assert (e.code, e.param) == ("unsupported_content", "messages[0].content[0].type")
    assert "'image_url'" in e.message and "model m reads text only" in e.message
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    e = refused(
        chat(
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, audio]},
        )
    )
    assert e.param == "messages[1].content[1].type" and "'input_audio'" in e.message
    refuse_unsupported(chat({"role": "user", "content": [{"type": "text", "text": "a"}]}))


def test_message_fields_as_a_client_sends_an_answer_back() -> None:
    back: dict[str, Any] = {
        "role": "assistant",
        "content": "hi",
        "refusal": None,
        "annotations": [],
        "name": "bot",
    }
    refuse_unsupported(chat({"role": "user", "content": "x"}, back, {"role": "user", "content": "y"}))
    e = refused(chat({"role": "user", "content": "x", "weight": 2}))
    assert (e.code, e.param) == ("unknown_parameter", "messages[0].weight")


def test_nested_objects_refuse_fields_they_do_not_declare() -> None:
    with pytest.raises(ValueError, match="stream_options.include_usge"):
        chat(stream=True, stream_options={"include_usge": True})
    tool = {"type": "function", "function": {"name": "f", "paramters": {}}}
    with pytest.raises(ValueError, match="paramters"):
        chat(tools=[tool])


def test_speech_and_images_have_their_own_lists() -> None:
    speech = SpeechRequest.model_validate(
        {"model": "tts-1", "voice": "alloy", "input": "x", "instructions": "sad"}
    )
    with pytest.raises(APIError) as e:
        refuse_unknown(speech, SPEECH)
    assert (e.value.code, e.value.param) == ("unsupported_parameter", "instructions")
    refuse_unknown(
        SpeechRequest.model_validate(
            {"model": "tts-1", "voice": "a", "input": "x", "stream_format": "audio"}
        ),
        SPEECH,
    )
    image = ImageGenerationRequest.model_validate({"prompt": "x", "user": "u", "quality": "standard"})
    refuse_unknown(image, IMAGES)
    with pytest.raises(APIError) as e:
        refuse_unknown(ImageGenerationRequest.model_validate({"prompt": "x", "style": "vivid"}), IMAGES)
    assert e.value.param == "style"
    with pytest.raises(APIError) as e:
        refuse_unknown(ImageGenerationRequest.model_validate({"prompt": "x", "sizes": "64x64"}), IMAGES)
    assert (e.value.code, e.value.param) == ("unknown_parameter", "sizes")


def test_a_message_the_sdks_parse_and_stream_helpers_return_goes_back_as_it_is() -> None:
    # What `client.chat.completions.parse()` / `.stream()` give back, dumped by the SDK on the
    # next turn: `parsed`, a call's `index`, and its `function.parsed_arguments`.
    back: dict[str, Any] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "parsed": {"city": "Paris"},
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "index": 0,
                "function": {"name": "f", "arguments": '{"x": 1}', "parsed_arguments": {"x": 1}},
            }
        ],
    }
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "2"}
    refuse_unsupported(chat({"role": "user", "content": "x"}, back, tool))


def test_nulls_are_absent_fields_and_openais_ranges_are_taken() -> None:
    body = chat(n=None, stream=None, seed=-1, top_p=0, stream_options={"include_obfuscation": False})
    assert (body.n, body.stream, body.seed, body.top_p) == (1, False, -1, 0)
    assert chat(seed=2**63 - 1).seed == 2**63 - 1
    with pytest.raises(ValueError, match="seed"):
        chat(seed=2**63)
