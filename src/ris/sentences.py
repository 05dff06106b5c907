"""Cut streamed text at sentence boundaries (English and Chinese punctuation), as it arrives.

Used by the speaking pipeline: each finished sentence goes to the TTS lane while the LLM keeps
generating, so the first sound comes after the first sentence, not after the whole answer.
"""

from __future__ import annotations

# Ends a sentence at once (full-width punctuation needs no following space; the Devanagari
# danda, and Arabic and Urdu marks, are followed by a space anyway).
_CJK_ENDERS = "。！？；…｡\n।॥؟۔؛"
# A run of enders ends one sentence ("……", "！！！", "。。。"), not one sentence each.
_RUN_ENDERS = "。！？；…｡!?."
# A clause mark at which a long Chinese (or Japanese) sentence is cut as it arrives
# (SentenceSplitter's clause_chars): spoken at about 4 characters a second, 150 of them were
# 37 s of an answer written with commas before its first sound.
_CJK_CLAUSE_MARKS = "，："  # not "、", which joins a list's items
# Ends a sentence only when followed by whitespace: "3.14" and "e.g.x" stay whole.
_LATIN_ENDERS = ".!?;"
# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "no"}
)
# Closing quotes and brackets that belong to the sentence they end.
_CLOSERS = "\"')]}»”’」』）》】"


def _abbreviated(word: str, after: str) -> bool:
    """Whether `word.` is an abbreviation, not a sentence's end; "no." only before a number
    ("No. 5"): "The answer is no. Let me..." ends there."""
    return word in _ABBREVIATIONS and (word != "no" or after.isdigit())


def _cjk(ch: str) -> bool:
    """A character of the CJK scripts (Han, kana, Hangul, their punctuation)."""
    return "\u2e80" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uff00" <= ch <= "\uffef"


class SentenceSplitter:
    def __init__(
        self, min_chars: int = 12, max_chars: int | None = None, clause_chars: int | None = None
    ) -> None:
        # Latin sentences shorter than this are joined to the next ("Mr. Smith", "1. First").
        self.min_chars = min_chars
        # A sentence longer than this is cut at a clause, else a space, as it arrives: a list
        # of 400 characters with no full stop was spoken only after the whole answer.
        self.max_chars = max_chars
        # A CJK sentence this long is cut at its next clause mark (，：) as it arrives.
        self.clause_chars = clause_chars
        self._buf = ""
        # Where the next feed resumes in _buf: everything before it was decided already (a scan
        # from the start each time was quadratic in a long sentence, on the event loop).
        self._scan = 0

    def feed(self, text: str) -> list[str]:
        """Add text; return the sentences it completed, in order."""
        self._buf += text
        out: list[str] = []
        start = 0
        i = self._scan
        redo: int | None = None
        buf = self._buf
        while i < len(buf):
            ch = buf[i]
            end = None
            # Ends a Chinese sentence or clause: kept however short ("好!"), where a short Latin
            # one joins the next ("Hi! How are you?" is one).
            cjk_end = ch in _CJK_ENDERS or _cjk(ch)
            if ch in _CJK_ENDERS:
                j = i + 1
                while j < len(buf) and (buf[j] in _CLOSERS or (ch != "\n" and buf[j] in _RUN_ENDERS)):
                    j += 1
                if j >= len(buf):
                    # Its closing quotes may come in the next piece (“你好。 then ”): decided
                    # with what follows, as a Latin ender is, whatever the pieces' sizes.
                    break
                end = j
            elif ch in "!?" and i > start and _cjk(buf[i - 1]):
                # Half-width "!" or "?" after Chinese needs no space after it ("你好!我是助手").
                j = i + 1
                while j < len(buf) and (buf[j] in _CLOSERS or buf[j] in _RUN_ENDERS):
                    j += 1
                if j >= len(buf):
                    break  # its closers or a run may follow
                end, cjk_end = j, True
            elif (
                ch in _CJK_CLAUSE_MARKS
                and self.clause_chars is not None
                and len(buf[start:i].strip()) >= self.clause_chars
            ):
                end = i + 1
            elif ch in _LATIN_ENDERS:
                j = i + 1
                while j < len(buf) and buf[j] in _CLOSERS:
                    j += 1
                if j >= len(buf):
                    break  # cannot tell yet whether a space follows
                word = buf[start:i].rsplit(None, 1)[-1].lower() if buf[start:i].strip() else ""
                after = buf[j:].lstrip()[:1]
                if ch == "." and word == "no" and not after:
                    break  # "No. 5" or "no. Then": decided with what follows
                if buf[j].isspace() and not (ch == "." and _abbreviated(word, after)):
                    end = j
            if end is not None:
                while end < len(buf) and buf[end] in _CLOSERS:
                    end += 1
                piece = buf[start:end].strip()
                if piece and (len(piece) >= self.min_chars or cjk_end):
                    out.append(piece)
                    start = end
                elif end == len(buf):
                    redo = i  # kept, and closers may still follow it: decided again next time
                i = end
                continue
            i += 1
        resume = i if redo is None else redo
        if self.max_chars is not None:
            # Counted from the sentence's first letter: blank lines before it are no words.
            while len(buf[start:].lstrip()) > self.max_chars:
                heads = _cut(buf[start:], self.max_chars)
                if not heads:  # only whitespace (cannot be: it was longer than max_chars)
                    start = len(buf)
                    break
                out.append(heads[0])
                start = buf.index(heads[0], start) + len(heads[0])
                resume = max(resume, start)
        self._buf = buf[start:]
        # A Latin ender at the end is looked at again, with what follows; so is a kept one
        # whose closing quotes ran to the end.
        self._scan = resume - start
        return out

    def flush(self) -> str | None:
        """The unfinished rest, once the text has ended."""
        rest, self._buf, self._scan = self._buf.strip(), "", 0
        return rest or None


# Where a sentence too long to speak in one go is cut, best first: clause punctuation, then
# any whitespace; past those, a hard cut (CJK text without punctuation, one endless word).
_CLAUSE_ENDERS = ",;:，、；：)"


def speech_chunks(text: str, max_chars: int) -> list[str]:
    """`text` as pieces of at most `max_chars` characters, cut at sentence ends, then clauses,
    then spaces: what a speech engine is given at once, so its memory and the time it spends
    before it next looks at a cancel are bounded whatever the text."""
    splitter = SentenceSplitter(min_chars=1)
    sentences = splitter.feed(text)
    rest = splitter.flush()
    out: list[str] = []
    for sentence in [*sentences, *([rest] if rest else [])]:
        out += _cut(sentence, max_chars)
    return out


def _cut(text: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    while len(text) > max_chars:
        window = text[: max_chars + 1]
        at = max((window.rfind(c, 0, max_chars) for c in _CLAUSE_ENDERS), default=-1) + 1
        if at <= 0:
            at = window.rfind(" ", 0, max_chars + 1)
        if at <= 0:
            at = max_chars
        head, text = text[:at].strip(), text[at:].strip()
        if head:
            pieces.append(head)
    if text.strip():
        pieces.append(text.strip())
    return pieces
