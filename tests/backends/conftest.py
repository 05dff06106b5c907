"""The model the batching tests share: the embedded SmolLM2 on llama.cpp, on one CPU thread,
with three sequence slots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ris.backends import BackendContext
from ris.lanes.llm import LANE

if TYPE_CHECKING:
    from ris.backends.llm_llama_cpp import LlamaCppLLM


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> LlamaCppLLM:
    # Imported when asked for: llama.cpp is an optional extra the folder's other tests do not need.
    from ris.backends.llm_llama_cpp import LlamaCppLLM

    spec = LANE.embedded_models["smollm2"]
    ctx = BackendContext(device="cpu", threads=1, data_dir=Path(tmp_path_factory.mktemp("llm")), parallel=3)
    return LlamaCppLLM(spec, ctx)
