"""Sentence cutting for the speaking pipeline, fed in arbitrary pieces."""

from __future__ import annotations

import pytest

from ris.sentences import SentenceSplitter, speech_chunks


def split(text: str, step: int, **options: int) -> list[str]:
    s = SentenceSplitter(**options)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += s.feed(text[i : i + step])
    rest = s.flush()
    return out + ([rest] if rest else [])


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_english_and_chinese(step: int) -> None:
    text = "Hello there, my friend! Pi is 3.14 and Mr. Smith agrees. 你好。这是测试！Is it really done? Yes"
    assert split(text, step) == [
        "Hello there, my friend!",
        "Pi is 3.14 and Mr. Smith agrees.",
        "你好。",
        "这是测试！",
        "Is it really done?",
        "Yes",
    ]


def test_a_sentence_is_released_as_soon_as_it_ends() -> None:
    s = SentenceSplitter()
    assert s.feed("The first sentence is here.") == []  # a decimal point might follow
    assert s.feed(" The") == ["The first sentence is here."]
    # A CJK ender's closing quotes may come in the next piece: decided with it, as a Latin
    # ender is (one token later), the same whatever the pieces' sizes.
    assert s.feed("第二句。") == []
    assert s.feed("第") == ["The第二句。"]


def test_short_fragments_join_the_next_sentence() -> None:
    assert split("1. First item is long enough. Ok. Fine then, done.", 5) == [
        "1. First item is long enough.",
        "Ok. Fine then, done.",
    ]


def test_closing_quotes_stay_with_their_sentence() -> None:
    assert split('He said "stop right there." Then he left quietly.', 4) == [
        'He said "stop right there."',
        "Then he left quietly.",
    ]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_cjk_closing_quotes_stay_with_their_sentence_however_the_text_comes(step: int) -> None:
    text = "他说：“你好。”然后走了。「こんにちは。」それから。"
    s = SentenceSplitter()
    out = [x for i in range(0, len(text), step) for x in s.feed(text[i : i + step])]
    rest = s.flush()
    assert [*out, *([rest] if rest else [])] == [
        "他说：“你好。”",
        "然后走了。",
        "「こんにちは。」",
        "それから。",
    ]


def test_newline_ends_a_sentence() -> None:
    assert split("A line without a stop\nAnother line", 3) == ["A line without a stop", "Another line"]


@pytest.mark.parametrize(
    "text",
    [
        "word " * 1000,  # no punctuation at all
        "x" * 4998,  # one endless word
        "这是一个没有标点的很长的中文句子" * 300,  # CJK without punctuation
        "short, clauses; of: various sizes, " * 200,
        "A sentence. " * 300,
    ],
)
def test_speech_chunks_are_bounded_and_lose_no_words(text: str) -> None:
    chunks = speech_chunks(text, 200)
    assert chunks and all(0 < len(c) <= 200 for c in chunks)
    assert "".join(chunks).replace(" ", "") == text.replace(" ", "")


def test_speech_chunks_keep_sentences_and_prefer_clauses() -> None:
    assert speech_chunks("Hi. How are you? Fine", 200) == ["Hi.", "How are you?", "Fine"]
    long = "alpha beta gamma, " * 20
    assert all(c.endswith(",") for c in speech_chunks(long, 60)[:-1])


class Rescanning(SentenceSplitter):
    """The splitter as it was: every feed scans its whole buffer from the start again."""

    def feed(self, text: str) -> list[str]:
        self._scan = 0
        return super().feed(text)


def test_resuming_where_it_stopped_cuts_as_a_scan_from_the_start_does() -> None:
    """A rescan from the start on every token was quadratic in a long sentence (16,200
    characters fed 4 at a time: 3.9 s of the event loop's CPU); resuming must change no cut."""
    import random

    rng = random.Random(7)
    alphabet = ["a", "b", " ", ".", "!", "?", ";", "\n", "。", "”", ")", "Mr", "e.g", "3.14", "你"]
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        got, want = SentenceSplitter(min_chars=4), Rescanning(min_chars=4)
        for piece in pieces:
            assert got.feed(piece) == want.feed(piece), (text, pieces)
        assert got.flush() == want.flush(), (text, pieces)


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_hindi_arabic_and_urdu_sentence_marks_end_sentences(step: int) -> None:
    """A Hindi answer was cut only at newlines (its danda was not a sentence end), an Arabic one
    not at its question mark: spoken only once the whole answer was written."""
    text = "नमस्ते, आप कैसे हैं। यह एक परीक्षण है। مرحبا بالعالم؟ هذا اختبار۔ "
    assert split(text, step) == ["नमस्ते, आप कैसे हैं।", "यह एक परीक्षण है।", "مرحبا بالعالم؟", "هذا اختبار۔"]


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_no_with_a_period_ends_a_sentence_unless_a_number_follows(step: int) -> None:
    # A character at a time, "No. " ended a sentence before the "5" came.
    text = "The answer is no. Let me explain why. See No. 5 for the rest. "
    assert split(text, step) == ["The answer is no.", "Let me explain why.", "See No. 5 for the rest."]


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_a_sentence_too_long_is_cut_at_a_clause_as_it_arrives(step: int) -> None:
    """A 400-character list with no full stop was one sentence: its first sound came after
    the whole answer. Cut at a clause (else a space) once longer than max_chars; no word lost."""
    text = "apple, banana, cherry, date, elderberry, fig, grape, honeydew, kiwi, lemon, mango, " * 3
    splitter = SentenceSplitter(max_chars=60)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += splitter.feed(text[i : i + step])
        if i < 70:
            assert not out or len(out[0]) <= 60
    assert out and all(len(p) <= 60 for p in out) and out[0].endswith(",")
    rest = splitter.flush()
    assert " ".join([*out, *([rest] if rest else [])]).split() == text.split()


@pytest.mark.parametrize("blank", ["\n" * 200, " " * 200, "\n \n" * 70])
def test_a_run_of_blank_text_longer_than_max_chars_is_no_sentence(blank: str) -> None:
    """A model stuck printing newlines: the cut raised IndexError, and the spoken answer ended
    with speaking_failed. Blank text before a sentence does not count toward its length."""
    splitter = SentenceSplitter(max_chars=150)
    assert splitter.feed(blank) == []
    assert splitter.feed("Hello world, this is fine. ") == ["Hello world, this is fine."]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_chinese_punctuation_as_chinese_writers_use_it(step: int) -> None:
    """Runs of marks were sentences of their own ("…", "！"); "!" and "?" after Chinese ended
    nothing without a space; 》 left its sentence."""
    assert split("我想想……好吧。嗯。。。好的！！！", step) == ["我想想……", "好吧。", "嗯。。。", "好的！！！"]
    assert split("你好!我是助手。你呢?我很好。", step) == ["你好!", "我是助手。", "你呢?", "我很好。"]
    assert split("他读《三体》。第一｡第二", step) == ["他读《三体》。", "第一｡", "第二"]
    assert split("Wait... really?! Yes.", step) == ["Wait... really?!", "Yes."]
    assert split("Hi! How are you? Fine.", step) == ["Hi! How are you?", "Fine."]  # short Latin: joined


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_a_long_chinese_sentence_goes_at_its_comma(step: int) -> None:
    """An answer written with commas and no full stop was spoken only after 150 characters
    (37 s of speech); English commas are not cut."""
    text = "长城是中国古代的军事防御工程，是一道高大、坚固而且连绵不断的长垣，用以限隔敌骑的行动。"
    assert split(text, step, clause_chars=20) == [  # the first comma comes at 14: too soon
        "长城是中国古代的军事防御工程，是一道高大、坚固而且连绵不断的长垣，",
        "用以限隔敌骑的行动。",
    ]
    english = "Hello there, my friend, this is a long English sentence, with commas, and more words."
    assert split(english, step, clause_chars=20) == [english]
