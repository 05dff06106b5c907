"""The names of the built-in lane kinds, for code that picks one of them by name.

Stdlib only, so anything may import it without pulling in the lane kinds themselves.
"""

from __future__ import annotations

import enum


class Lane(enum.StrEnum):
    """The names of the built-in lane kinds (ris/lanes/llm.py, tts.py, image.py).

    Everywhere else a lane is named by a plain string, so a lane kind registered later (one
    module and one registration, see docs/DEVELOPER_GUIDE.md) is a lane like these. Members are
    strings: `Lane.LLM == "llm"`, and either works as a key.
    """

    LLM = "llm"
    TTS = "tts"
    IMAGE = "image"


def a_lane(name: str) -> str:
    """The lane's name with its article as read aloud: "an image", "a tts", "an llm" (read by
    its letters: "a llm model" was in an error message)."""
    return f"{'an' if name[:1] in 'aeiou' or name == Lane.LLM else 'a'} {name}"
