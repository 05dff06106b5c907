from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ris import Client

from .server import Server, make_config


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real service with the embedded default models (LLM queue kept small for 429 tests)."""
    tmp = tmp_path_factory.mktemp("ris")
    cfg = make_config(tmp, llm={"max_queue": 3})
    # A second, lazily loaded LLM: the transformers backend with random weights.
    cfg["lanes"]["llm"]["models"]["tiny-dummy"] = {
        "backend": "transformers",
        "load_format": "dummy",
        "source": "tiny",
        "description": "random weights, for tests",
    }
    srv = Server(tmp, cfg).start()
    yield srv
    srv.stop()


@pytest.fixture()
def client(server: Server) -> Iterator[Client]:
    with Client(server.url, timeout=120, max_retries=0) as c:
        yield c


@pytest.fixture()
def tmp(tmp_path: Path) -> Path:
    return tmp_path
