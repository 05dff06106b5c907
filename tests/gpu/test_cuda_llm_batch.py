"""transformers' continuous batching through RIS's batch on CUDA: the CPU tests of
tests/backends/test_transformers_backend.py on the GPU, and the lane's prefill marks (the image
lane's cue) while a batch of sequences runs. Skipped, with the reason, without a CUDA GPU."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch")
pytest.importorskip("transformers", reason="needs transformers")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
from test_transformers_backend import (  # noqa: E402
    test_a_seed_gives_the_same_text_whoever_else_is_decoding,
    test_cancelling_one_sequence_leaves_the_others_intact,
    test_four_streams_all_start_before_the_first_finishes,
    test_stop_strings_and_max_tokens_hold_per_sequence,
    test_the_board_shows_prefill_until_every_sequence_has_its_first_token,
)

from ris.backends import BackendContext, backend_class  # noqa: E402
from ris.config import ModelSpec  # noqa: E402
from ris.lanes import Lane  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine"),
]

__all__ = [
    "test_a_seed_gives_the_same_text_whoever_else_is_decoding",
    "test_cancelling_one_sequence_leaves_the_others_intact",
    "test_four_streams_all_start_before_the_first_finishes",
    "test_stop_strings_and_max_tokens_hold_per_sequence",
    "test_the_board_shows_prefill_until_every_sequence_has_its_first_token",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    # float32: the tests compare texts across batch sizes, which bf16 rounding can flip.
    spec = ModelSpec(backend="transformers", load_format="dummy", source="tiny", options={"dtype": "float32"})
    ctx = BackendContext(device="cuda:0", threads=2, data_dir=tmp_path_factory.mktemp("tf"), parallel=4)
    llm = backend_class(Lane.LLM, "transformers")(spec, ctx)
    yield llm
    llm.close()
