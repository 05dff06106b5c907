"""A speech request that names no voice: text in a script that names its language is read by a
voice of that language where one is loaded (the default English voice read "这是一段测试文本"
as "Chinese letter" eight times, answered 200 with no word of it)."""

from __future__ import annotations

from pathlib import Path

from ris import messages as m
from ris.api.tts_support import voice_for_text
from ris.lanes import Lane
from ris.lanes.tts import speed_note

from .fakes import run, settle, started_engine

TWO_VOICES = {
    "default_model": "p",
    "models": {"p": {"backend": "espeak"}, "e": {"backend": "espeak"}},
}
PIPER = m.ModelInfo("p", "piper", m.ModelDetails(("en_US-joe-medium", "en", "en-US", "joe"), 22050))
ESPEAK = m.ModelInfo("e", "espeak", m.ModelDetails(("en-US", "zh-CN", "cmn", "ja", "zh"), 22050))


@run
async def test_chinese_text_without_a_voice_goes_to_a_voice_that_reads_chinese(tmp_path: Path) -> None:
    async with started_engine(tmp_path, tts=TWO_VOICES) as (eng, workers, _):
        workers[Lane.TTS].ready(models=(PIPER, ESPEAK))
        await settle()
        model, voice, warnings = voice_for_text(eng, None, "这是一段测试文本")
        assert (model, voice) == ("e", "zh")
        assert warnings and "the text is Chinese" in warnings[0] and "'en_US-joe-medium'" in warnings[0]
        assert "with its Chinese voice" in warnings[0]  # not "'zh'", which the answer names "cmn"
        # English, or text no script names: the default as before, nothing said.
        assert voice_for_text(eng, None, "This is a test.") == ("p", None, [])
        assert voice_for_text(eng, None, "Hello 世界") == ("p", None, [])  # mostly English
        # A script no loaded voice reads: the default reads it, and the answer says so.
        model, voice, warnings = voice_for_text(eng, None, "Привет мир")
        assert (model, voice) == ("p", None) and "no loaded voice reads it" in warnings[0], warnings
        # A model named and not speaking it: kept, and the answer says what happened.
        model, voice, warnings = voice_for_text(eng, "p", "这是一段测试文本")
        assert (model, voice) == ("p", None)
        assert warnings and "'p' has no voice for it ('e' has)" in warnings[0]
        # The named model speaks it: its voice of that language.
        assert voice_for_text(eng, "e", "これは日本語の文です")[:2] == ("e", "ja")


@run
async def test_text_in_another_script_goes_to_a_voice_of_its_language_or_script(tmp_path: Path) -> None:
    """Russian, Arabic, Hindi, Greek went to the default English voice, which read them letter by
    letter with no word said. A voice of the text's likeliest language reads it; where none is
    loaded, one of another language of its script (Ukrainian by a Russian voice)."""
    espeak = m.ModelInfo("e", "espeak", m.ModelDetails(("en-US", "zh-CN", "ru", "ar", "hi", "el"), 22050))
    async with started_engine(tmp_path, tts=TWO_VOICES) as (eng, workers, _):
        workers[Lane.TTS].ready(models=(PIPER, espeak))
        await settle()
        texts = {"Привет, как дела?": "ru", "مرحبا بالعالم": "ar", "नमस्ते": "hi", "Γειά σου": "el"}
        for text, tag in texts.items():
            assert voice_for_text(eng, None, text)[:2] == ("e", tag), text
        model, voice, warnings = voice_for_text(eng, None, "Привіт, як справи? Її звати Олена")
        assert (model, voice) == ("e", "ru")
        assert "is in Cyrillic script (Ukrainian, it seems)" in warnings[0], warnings
        assert "its Russian voice" in warnings[0], warnings
        # Persian, which no voice speaks here: read by the Arabic voice, not the English one.
        assert voice_for_text(eng, None, "سلام، حال شما چطور است؟")[:2] == ("e", "ar")


def test_a_speed_espeak_cannot_honour_is_said() -> None:
    """espeak-ng speaks 80 to 450 words a minute: speed 0.3 was spoken at 0.46, with a 200."""
    assert (
        speed_note("espeak", 0.3) == "speed: espeak-ng speaks at 0.46 to 2.57 times its pace; 0.3 became 0.46"
    )
    assert speed_note("espeak", 3.0) is not None and speed_note("pyttsx3", 3.0) is not None
    assert speed_note("espeak", 1.5) is None and speed_note("piper", 0.3) is None


@run
async def test_a_default_voice_of_the_texts_language_keeps_it(tmp_path: Path) -> None:
    """A default model whose voice is Chinese, listed without the bare tag "zh": Chinese text
    went to espeak (or, without it, was said to have no voice that reads it)."""
    huayan = m.ModelInfo("p", "piper", m.ModelDetails(("zh_CN-huayan-medium", "zh-CN", "zh_CN"), 22050))
    async with started_engine(tmp_path, tts=TWO_VOICES) as (eng, workers, _):
        workers[Lane.TTS].ready(models=(huayan, ESPEAK))
        await settle()
        assert voice_for_text(eng, None, "这是一段测试文本") == ("p", None, [])
