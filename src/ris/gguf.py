"""What a GGUF file says of its model, read from its header without loading it.

Ollama's /api/tags and /api/show give each model's family ("llama", "qwen2") and parameter
size ("134.52M", "1.5B"), which UIs show as its label; the server reads them here, in a thread,
from the file's key-value header and tensor table (GGUF v2 and v3: llama.cpp's
gguf-py/gguf/constants.py names the value types), through a memory map: nothing of the weights
is read.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# GGUF value types -> struct format of a scalar; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Past these, a header is not one this reader trusts (a damaged or hostile file).
_MAX_ITEMS = 10_000_000
_MAX_DIMS = 8
_MAX_NESTING = 4


# general.file_type (llama.cpp's llama_ftype, llama.h) -> the name Ollama shows as a model's
# quantization_level.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip


@dataclass(frozen=True)
class GgufFacts:
    architecture: str | None  # general.architecture: "llama", "qwen2", ...
    parameters: int | None  # the tensors' elements, summed
    quantization: str | None = None  # general.file_type's name: "Q4_K_M", "F16", ...

    def parameter_size(self) -> str:
        """As Ollama writes it: "134.52M", "1.5B" ("" when unknown)."""
        if not self.parameters:
            return ""
        if self.parameters >= 1_000_000_000:
            return f"{self.parameters / 1e9:.1f}B"
        return f"{self.parameters / 1e6:.2f}M"


class _Reader:
    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.data, self.at)[0]
        self.at += struct.calcsize(fmt)
        return value

    def count(self) -> int:
        n = int(self.take("Q"))
        if n > _MAX_ITEMS:
            raise ValueError(f"a count of {n}")
        return n

    def skip(self, n: int) -> None:
        """Past `n` bytes, which must be in the file (a count that runs past its end is damage)."""
        if self.at + n > len(self.data):
            raise ValueError("the header runs past the end of the file")
        self.at += n

    def string(self) -> str:
        n = self.count()
        start = self.at
        self.skip(n)
        return bytes(self.data[start : self.at]).decode("utf-8", "replace")

    def value(self, kind: int, depth: int = 0) -> object:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            if depth >= _MAX_NESTING:  # real files nest none; a hostile one, without end
                raise ValueError("arrays nested too deep")
            item, n = int(self.take("I")), self.count()
            if item in _SCALARS:  # skipped whole: a vocabulary's scores are 100k floats
                self.skip(n * struct.calcsize(_SCALARS[item]))
                return None
            for _ in range(n):
                self.value(item, depth + 1)
            return None
        if kind not in _SCALARS:
            raise ValueError(f"value type {kind}")
        return self.take(_SCALARS[kind])


@functools.lru_cache(maxsize=64)
def gguf_facts(path: Path, size: int, mtime: float) -> GgufFacts | None:
    """The facts of the GGUF file at `path` (`size` and `mtime` key the cache: a file replaced
    in place is read again); None for a file that is not GGUF or does not read as one."""
    del size, mtime
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _read(data)
    except (OSError, ValueError, struct.error, OverflowError, MemoryError):
        return None


def _read(data: mmap.mmap) -> GgufFacts | None:
    r = _Reader(data)
    if bytes(data[:4]) != b"GGUF" or len(data) < 24:
        return None
    r.at = 4
    if r.take("I") not in (2, 3):
        return None
    tensors, pairs = r.count(), r.count()
    architecture: str | None = None
    quantization: str | None = None
    for _ in range(pairs):
        key = r.string()
        value = r.value(int(r.take("I")))
        if key == "general.architecture" and isinstance(value, str):
            architecture = value
        elif key == "general.file_type" and isinstance(value, int):
            quantization = FILE_TYPES.get(value)
    parameters = 0
    for _ in range(tensors):
        r.string()
        dims = int(r.take("I"))
        if dims > _MAX_DIMS:
            raise ValueError(f"{dims} dimensions")
        elements = 1
        for _ in range(dims):
            elements *= int(r.take("Q"))
        r.take("I")  # the tensor's type
        r.take("Q")  # its offset in the data
        parameters += elements
    return GgufFacts(architecture, parameters or None, quantization)
