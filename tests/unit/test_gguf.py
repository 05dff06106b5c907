"""A GGUF file's header read without loading the model (ris.gguf)."""

from __future__ import annotations

import struct
from pathlib import Path

from ris.gguf import GgufFacts, gguf_facts


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def gguf(tensors: list[tuple[str, tuple[int, ...]]], pairs: bytes, n_pairs: int, version: int = 3) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), n_pairs) + pairs
    for name, dims in tensors:
        out += _string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, 0)
    return out


def test_architecture_and_parameter_count_come_from_the_header(tmp_path: Path) -> None:
    pairs = (
        _string("general.name") + struct.pack("<I", 8) + _string("tiny")
        # an array of strings and one of floats (a vocabulary and its scores), skipped over
        + _string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _string("a") + _string("b")
        + _string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 2) + struct.pack("<ff", 0.5, 1.5)
        + _string("general.architecture") + struct.pack("<I", 8) + _string("qwen2")
        + _string("qwen2.context_length") + struct.pack("<II", 4, 32768)
        + _string("general.file_type") + struct.pack("<II", 4, 15)
    )  # fmt: skip
    path = tmp_path / "m.gguf"  # a name that says nothing of the quantization: the header does
    path.write_bytes(gguf([("a", (1000, 1500)), ("b", (1000,))], pairs, 6))
    facts = gguf_facts(path, 1, 1.0)
    assert facts == GgufFacts("qwen2", 1_501_000, "Q4_K_M") and facts.parameter_size() == "1.50M"
    assert GgufFacts("llama", 1_543_714_304).parameter_size() == "1.5B"


def test_a_file_that_is_not_gguf_or_is_cut_short_reads_as_none(tmp_path: Path) -> None:
    other = tmp_path / "x.gguf"
    other.write_bytes(b"PK\x03\x04" + bytes(40))
    assert gguf_facts(other, 2, 0.0) is None
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(gguf([("a", (10,))], _string("general.architecture"), 1)[:-20])
    assert gguf_facts(cut, 3, 0.0) is None
    huge = tmp_path / "huge.gguf"  # a count no real file has: refused, not looped over
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 0))
    assert gguf_facts(huge, 4, 0.0) is None


def test_a_hostile_header_is_none_not_an_error_of_every_listing(tmp_path: Path) -> None:
    """Arrays of arrays without end raised RecursionError, which /api/tags and /api/show
    answered with a 500 for every model; counts past the file's end are damage too."""
    nested = _string("x") + struct.pack("<I", 9)
    for _ in range(5000):
        nested += struct.pack("<IQ", 9, 1)  # an array of one array of one array...
    deep = tmp_path / "deep.gguf"
    deep.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + nested)
    assert gguf_facts(deep, 5, 0.0) is None
    past = tmp_path / "past.gguf"  # an array of 9 million floats in a file of a few bytes
    past.write_bytes(
        b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("s") + struct.pack("<IIQ", 9, 6, 9_000_000)
    )
    assert gguf_facts(past, 6, 0.0) is None
