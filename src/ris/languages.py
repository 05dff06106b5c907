"""The language a text is written in, as far as its script tells, and a note for a model
that does not write it.

Only scripts that name one language are read (Han without kana: Chinese; kana: Japanese;
Hangul: Korean; Thai): a Latin or Cyrillic text could be many languages, and is never flagged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# (first, last) code points of each script, and the language it names.
_HAN = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF))
_KANA = ((0x3040, 0x309F), (0x30A0, 0x30FF))
_HANGUL = ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F))
_THAI = ((0x0E00, 0x0E7F),)
# A text counts as written in a script when this share of its letters are in it: a Chinese
# word in an English sentence does not make the sentence Chinese.
_SHARE = 0.3


def _class(ranges: tuple[tuple[int, int], ...]) -> re.Pattern[str]:
    return re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in ranges) + "]")


# Counted by the regex engine: this runs on the event loop for every prompt (up to
# max_prompt_chars), where a Python loop over the characters took 40 ms per script.
_SCRIPTS = {
    name: _class(ranges)
    for name, ranges in (("han", _HAN), ("kana", _KANA), ("hangul", _HANGUL), ("thai", _THAI))
}


def _count(text: str, script: str) -> int:
    return len(_SCRIPTS[script].findall(text))


_KANA_SHARE_OF_JAPANESE = 20  # at least 1 in 20 of its kana and Han characters


def script_language(text: str) -> str | None:
    """'zh', 'ja', 'ko' or 'th' for a text mostly in that language's script; else None."""
    letters = sum(map(str.isalpha, text))
    if letters == 0:
        return None
    kana, han = _count(text, "kana"), _count(text, "han")
    # Japanese writes its particles and endings in kana: a twentieth of a Han-heavy headline
    # ("東京都知事選挙の結果"), far more in prose. One stray "の" in Chinese is not Japanese.
    japanese = kana + han if kana * _KANA_SHARE_OF_JAPANESE >= kana + han else 0
    for language, n in (("ja", japanese), ("zh", han), ("ko", _count(text, "hangul"))):
        if n and n >= _SHARE * letters:
            return language
    if _count(text, "thai") >= _SHARE * letters:
        return "th"
    return None


def writes(languages: Sequence[str], language: str) -> bool:
    """Whether a model's languages ('zh', 'zh-CN', 'en') include `language` (primary tag)."""
    return any(tag.lower().split("-")[0] == language for tag in languages)


def language_warning(
    model: str, languages: Sequence[str] | None, text: str, suggestion: str | None
) -> str | None:
    """A note for the response when `text` is in a language the model does not write; None
    when it does, or when either is unknown."""
    if not languages:
        return None
    language = script_language(text)
    if language is None or writes(languages, language):
        return None
    note = (
        f"the prompt looks like {language!r} but model {model!r} writes {', '.join(languages)} only; "
        "its answer may not be in that language or make sense"
    )
    if suggestion:
        note += f"; for {language!r} get a model that writes it: ris pull {suggestion}"
    return note


__all__ = ["language_warning", "script_language", "writes"]
