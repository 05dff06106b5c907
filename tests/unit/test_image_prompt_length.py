"""A prompt longer than CLIP's 77 tokens is cut by diffusers with a line in the worker's log;
the seed API's answer says so where the count is certain."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ris.api.app import create_app
from ris.lanes import Lane
from ris.lanes.image import CLIP_CONTENT_TOKENS, clip_tokens_at_least

from .fakes import IMAGE_ON, run, started_engine

SAMPLES = (
    "a lighthouse at dawn",
    "It's a cat's toy, isn't it?!",
    "4k, ultra-detailed__photo; 1920x1080 — «vue» naïve café",
    "你好世界，一只猫",
    "IT'S  Ünïcödé\tTABS\n'LL 'd",
    "e\u0301 combining",  # NFC makes one letter of the two code points
)


def test_the_count_is_never_above_clips_own_pieces_nor_its_tokens(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import CLIPTokenizer

    from ris.backends.sd_arch import write_byte_level_clip_tokenizer

    write_byte_level_clip_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path), model_max_length=77)
    backend = tok.backend_tokenizer
    for text in (*SAMPLES, "x² ½ snake_case...!!"):
        pieces = len(backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
        tokens = len(tok(text, truncation=False).input_ids) - 2  # its start and end marks
        assert clip_tokens_at_least(text) <= pieces <= tokens, text
    for text in SAMPLES:  # the same pieces CLIP's own pre-tokenizer makes
        pieces = len(backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
        assert clip_tokens_at_least(text) == pieces, text


@run
async def test_a_prompt_cut_by_the_text_encoder_is_served_with_a_warning(tmp_path: Path) -> None:
    long = " ".join(["a lighthouse on a cliff"] * 16)  # 80 words
    assert clip_tokens_at_least(long) > CLIP_CONTENT_TOKENS
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        transport = httpx.ASGITransport(app=create_app(eng.config, eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            body = {"prompt": long, "negative_prompt": "blurry", "width": 64, "height": 64, "steps": 2}
            r = await client.post("/api/image/generate", json=body)
            assert r.status_code == 202, r.text
            (warning,) = r.json()["warnings"]
            assert warning.startswith("prompt: 80 words and marks at least") and "first 75 tokens" in warning
            r = await client.post("/api/image/generate", json={**body, "prompt": "a lighthouse"})
            assert r.json()["warnings"] == []
            # A model of another lane (the LLM's "m") is named as such, not "unknown" (404).
            r = await client.post("/api/image/generate", json={**body, "model": "m"})
            assert r.status_code == 422 and r.json()["error"]["code"] == "model_wrong_lane", r.text
            assert r.json()["error"]["message"].startswith("m is an llm model; the image lane's models: ")


@run
async def test_seed_api_values_of_the_wrong_json_type_are_refused_as_such(tmp_path: Path) -> None:
    """`"width": "512"` was taken as 512, `"width": true` refused as "a multiple of 8", and
    `"stream": "false"` read as false: JSON's own types are required, as on /v1."""
    async with started_engine(tmp_path, image=IMAGE_ON) as (eng, workers, _):
        workers[Lane.IMAGE].ready()
        transport = httpx.ASGITransport(app=create_app(eng.config, eng))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for path, field, value, kind in (
                ("/api/image/generate", "width", "512", "integer"),
                ("/api/image/generate", "width", True, "integer"),
                ("/api/image/generate", "use_turbo", "yes", "boolean"),
                ("/api/llm/generate", "stream", "false", "boolean"),
                ("/api/tts/synthesize", "speed", "1.5", "number"),
            ):
                body = {"text": "a"} if path == "/api/tts/synthesize" else {"prompt": "a"}
                r = await client.post(path, json={**body, field: value})
                assert r.status_code == 422, (path, field, r.text)
                message = r.json()["error"]["message"]
                assert field in message and f"valid {kind}" in message, message
            r = await client.post(
                "/api/image/generate", json={"prompt": "a", "width": 64, "height": 64, "guidance": 2}
            )
            assert r.status_code == 202, r.text  # an integer where a number is asked is a number


def test_what_clips_python_tokenizer_cleans_away_is_not_counted() -> None:
    """transformers 4's CLIP tokenizer drops control and format characters (and with ftfy
    mends curly apostrophes and HTML entities) before it splits: counted, a soft hyphen made
    "foo\\u00adbar" three pieces where it is one."""
    cleaned = {"foo\u00adbar": 1, "it\u2019s": 2, "&amp;": 1, "a\u200bb": 1, "tab\there": 2}
    for text, pieces in cleaned.items():
        assert clip_tokens_at_least(text) == pieces, text
