"""The script a text is written in, the language that script most likely stands for, and a
note for a model that does not write it.

A script names a language outright (Hangul: Korean; Greek; Georgian) or a few (Cyrillic:
Russian, Ukrainian, Bulgarian, ...; Arabic: Arabic, Persian, Urdu, ...). Where a few share
it, letters only one of them uses pick it ("ї": Ukrainian, "ے": Urdu), else the script's most
written language stands for the text: a speech model reading Ukrainian with a Russian voice
says far more of it than an English voice spelling "Cyrillic letter" for each letter. A note
about a model that writes none of the script's languages is sure; one about which language
of a shared script the text is in would be a guess, and is not made. Latin text is never
read: it could be any of a hundred languages.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Script:
    name: str
    ranges: tuple[tuple[int, int], ...]  # (first, last) code points
    # The languages commonly written in it, the most written first (the guess when no
    # letter of `markers` says otherwise).
    languages: tuple[str, ...]
    # Letters only some of its languages use, checked in order: the first language with one
    # in the text is the text's.
    markers: tuple[tuple[str, str], ...] = ()
    # The share of a text's letters in it that make the text its: a character of Han or Hangul
    # is a word or a syllable, a letter of an alphabet a sound ("Hello world, Привет" is not
    # Russian; "Translate 你好 into English, please" is not Chinese either).
    share: float = 0.5

    @property
    def shared(self) -> bool:
        return len(self.languages) > 1


SCRIPTS = (
    Script("Han", ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF)), ("zh",), share=0.3),
    Script("kana", ((0x3040, 0x309F), (0x30A0, 0x30FF)), ("ja",), share=0.3),
    Script("Hangul", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F)), ("ko",), share=0.3),
    # Thai writes no space between words: a third of its letters is a sentence of it.
    Script("Thai", ((0x0E00, 0x0E7F),), ("th",), share=0.3),
    Script(
        "Cyrillic",
        ((0x0400, 0x052F),),
        ("ru", "uk", "bg", "sr", "be", "kk", "ky", "mk", "tg", "mn"),
        # Tajik before Kazakh: both write "ғ қ"; Kazakh and Belarusian before Ukrainian: all
        # three write "і"; Macedonian before Serbian: both write "љ њ џ ј".
        (("tg", "ҳҷӣӯ"), ("kk", "әғқұһ"), ("ky", "ң"), ("be", "ў"), ("uk", "іїєґ"), ("mk", "ѓќѕ"))
        + (("sr", "ђћџљњј"),),
    ),
    Script(
        "Arabic",
        # To U+FEFC: U+FEFF, the end of that block, is the byte-order mark.
        ((0x0600, 0x06FF), (0x0750, 0x077F), (0x08A0, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFC)),
        # Sorani Kurdish as "ckb": "ku" is Kurmanji, which is written in Latin letters.
        ("ar", "fa", "ur", "ps", "ug", "sd", "ckb"),
        # Pashto before Uyghur (both write "ې"); Urdu and Kurdish (Sorani) before Persian: they
        # write Persian's "پ چ ژ گ" too, and "ک ی" as Persian does.
        (("ps", "ښږټډړګڼ"), ("ug", "ېۈ"), ("ckb", "ڵڕێ"), ("ur", "ٹڈڑںے"), ("fa", "پچژگکی")),
    ),
    Script("Greek", ((0x0370, 0x03FF), (0x1F00, 0x1FFF)), ("el",)),
    Script("Hebrew", ((0x0590, 0x05FF),), ("he", "yi"), (("yi", "װױײ"),)),
    Script("Armenian", ((0x0530, 0x058F),), ("hy",)),
    Script("Georgian", ((0x10A0, 0x10FF),), ("ka",)),
    # Marathi writes "ळ" in everyday words; Hindi only in Sanskrit borrowings.
    Script("Devanagari", ((0x0900, 0x097F),), ("hi", "mr", "ne", "sa"), (("mr", "ळ"),)),
    Script("Bengali", ((0x0980, 0x09FF),), ("bn", "as"), (("as", "ৰৱ"),)),
    Script("Gurmukhi", ((0x0A00, 0x0A7F),), ("pa",)),
    Script("Gujarati", ((0x0A80, 0x0AFF),), ("gu",)),
    Script("Oriya", ((0x0B00, 0x0B7F),), ("or",)),
    Script("Tamil", ((0x0B80, 0x0BFF),), ("ta",)),
    Script("Telugu", ((0x0C00, 0x0C7F),), ("te",)),
    Script("Kannada", ((0x0C80, 0x0CFF),), ("kn",)),
    Script("Malayalam", ((0x0D00, 0x0D7F),), ("ml",)),
    Script("Sinhala", ((0x0D80, 0x0DFF),), ("si",)),
    Script("Lao", ((0x0E80, 0x0EFF),), ("lo",)),
    Script("Tibetan", ((0x0F00, 0x0FFF),), ("bo",)),
    Script("Myanmar", ((0x1000, 0x109F),), ("my",)),
    Script("Ethiopic", ((0x1200, 0x137F),), ("am", "ti")),
    Script("Khmer", ((0x1780, 0x17FF),), ("km",)),
    Script("Thaana", ((0x0780, 0x07BF),), ("dv",)),
)

# What notes call the languages above.
LANGUAGE_NAMES = {
    "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "th": "Thai", "ru": "Russian",
    "uk": "Ukrainian", "bg": "Bulgarian", "sr": "Serbian", "be": "Belarusian", "kk": "Kazakh",
    "ky": "Kyrgyz", "mk": "Macedonian", "tg": "Tajik", "mn": "Mongolian", "ar": "Arabic",
    "fa": "Persian", "ur": "Urdu", "ps": "Pashto", "ug": "Uyghur", "sd": "Sindhi", "ckb": "Sorani Kurdish",
    "el": "Greek", "he": "Hebrew", "yi": "Yiddish", "hy": "Armenian", "ka": "Georgian",
    "hi": "Hindi", "mr": "Marathi", "ne": "Nepali", "sa": "Sanskrit", "bn": "Bengali",
    "as": "Assamese", "pa": "Punjabi", "gu": "Gujarati", "or": "Odia", "ta": "Tamil",
    "te": "Telugu", "kn": "Kannada", "ml": "Malayalam", "si": "Sinhala", "lo": "Lao",
    "bo": "Tibetan", "my": "Burmese", "am": "Amharic", "ti": "Tigrinya", "km": "Khmer",
    "dv": "Dhivehi",
}  # fmt: skip

# Of a longer text, SAMPLES stretches of SAMPLE_CHARS spread evenly over it are read: they say
# what it is written in as well as the whole, and a 100,000-character Russian prompt took 17 ms
# on the event loop.
SAMPLES, SAMPLE_CHARS = 16, 1_000
_KANA_SHARE_OF_JAPANESE = 20  # at least 1 in 20 of its kana and Han characters

_BY_NAME = {s.name: s for s in SCRIPTS}
# Every character of every script above, in one class. The regex engine picks them out of a
# prompt (up to max_prompt_chars, on the event loop): a Python loop over the characters took
# 40 ms a script. Latin text finds none and is done.
_ANY = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for s in SCRIPTS for a, b in s.ranges) + "]+")


def _script_of(char: str) -> str:
    code = ord(char)
    return next(s.name for s in SCRIPTS if any(a <= code <= b for a, b in s.ranges))


@dataclass(frozen=True)
class TextScript:
    """The script a text is mostly written in, and the language it most likely is."""

    script: Script
    language: str

    @property
    def candidates(self) -> tuple[str, ...]:
        """Its likeliest language, then the script's others (a voice of one of them reads it
        better than a voice of another script)."""
        return (self.language, *(t for t in self.script.languages if t != self.language))

    @property
    def language_name(self) -> str:
        return LANGUAGE_NAMES.get(self.language, self.language)

    def describe(self) -> str:
        """ "Chinese"; "in Cyrillic script (Russian, it seems)" where the script is shared."""
        if not self.script.shared:
            return self.language_name
        return f"in {self.script.name} script ({self.language_name}, it seems)"


def text_script(text: str) -> TextScript | None:
    """The script most of a text's letters are in, and the language it most likely is; None
    for text mostly in Latin letters (or none)."""
    if len(text) > SAMPLES * SAMPLE_CHARS:
        step = (len(text) - SAMPLE_CHARS) // (SAMPLES - 1)
        text = "".join(text[i * step : i * step + SAMPLE_CHARS] for i in range(SAMPLES))
    letters = sum(map(str.isalpha, text))
    if letters == 0:
        return None
    chars = Counter("".join(_ANY.findall(text)))  # a few hundred distinct characters at most
    if not chars:
        return None
    per_script: Counter[str] = Counter()
    for char, n in chars.items():
        if char.isalpha():  # letters, as `letters` counts them: not digits ("١٢٣"), not marks
            per_script[_script_of(char)] += n
    if not per_script:
        return None
    kana, han = per_script["kana"], per_script["Han"]
    # Japanese writes its particles and endings in kana: a twentieth of a Han-heavy headline
    # ("東京都知事選挙の結果"), far more in prose. One stray "の" in Chinese is not Japanese.
    if kana and kana * _KANA_SHARE_OF_JAPANESE >= kana + han:
        per_script["kana"], per_script["Han"] = kana + han, 0
    name, n = max(per_script.items(), key=lambda item: item[1])
    script = _BY_NAME[name]
    if n < script.share * letters:
        return None
    # Where letters of two of its languages both appear, the marker listed first wins.
    found = next((lang for lang, marks in script.markers if any(c in chars for c in marks)), None)
    return TextScript(script, found or script.languages[0])


def script_language(text: str) -> str | None:
    """The language a text most likely is, from its script ('zh', 'ru', 'ar', ...); None for
    text mostly in Latin letters."""
    found = text_script(text)
    return None if found is None else found.language


def writes(languages: Sequence[str], language: str) -> bool:
    """Whether a model's languages ('zh', 'zh-CN', 'en') include `language` (primary tag)."""
    return any(tag.lower().split("-")[0] == language for tag in languages)


def language_warning(
    model: str, languages: Sequence[str] | None, text: str, suggestion: str | None
) -> str | None:
    """A note for the response when `text` is in a script none of the model's languages is
    written in; None when one is, or when either is unknown."""
    if not languages:
        return None
    found = text_script(text)
    if found is None or any(writes(languages, lang) for lang in found.script.languages):
        return None
    note = (
        f"the prompt is {found.describe()} ({found.language!r}) but model {model!r} writes "
        f"{', '.join(languages)} only; its answer may not be in that language or make sense"
    )
    if suggestion:
        note += f"; for {found.language!r} get a model that writes it: ris pull {suggestion}"
    return note


__all__ = [
    "LANGUAGE_NAMES",
    "SCRIPTS",
    "TextScript",
    "language_warning",
    "script_language",
    "text_script",
    "writes",
]
