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


@dataclass(frozen=True)
class GgufFacts:
    architecture: str | None  # general.architecture: "llama", "qwen2", ...
    parameters: int | None  # the tensors' elements, summed

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
    for _ in range(pairs):
        key = r.string()
        value = r.value(int(r.take("I")))
        if key == "general.architecture" and isinstance(value, str):
            architecture = value
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
    return GgufFacts(architecture, parameters or None)
