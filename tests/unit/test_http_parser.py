"""server.http_parser: which HTTP/1.1 parser uvicorn is given, and a clear refusal when the
one asked for is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import ValidationError

from ris.api.app import http_parser
from ris.config import Config

from .fakes import config


def with_parser(tmp: Path, parser: str) -> Config:
    cfg = config(tmp)
    return cfg.model_copy(update={"server": cfg.server.model_copy(update={"http_parser": parser})})


def hide_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "httptools" else real(name, *a)
    )


def test_auto_takes_httptools_where_installed_and_h11_where_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = importlib.util.find_spec("httptools") is not None
    assert http_parser(with_parser(tmp_path, "auto")) == ("httptools" if installed else "h11")
    hide_httptools(monkeypatch)
    assert http_parser(with_parser(tmp_path, "auto")) == "h11"


def test_h11_is_kept_when_asked_for(tmp_path: Path) -> None:
    assert http_parser(with_parser(tmp_path, "h11")) == "h11"


def test_httptools_asked_for_but_missing_is_refused_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hide_httptools(monkeypatch)
    with pytest.raises(RuntimeError, match="pip install httptools"):
        http_parser(with_parser(tmp_path, "httptools"))


def test_an_unknown_parser_is_a_config_error_listing_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="'auto', 'httptools' or 'h11'"):
        Config.model_validate({**config(tmp_path).model_dump(), "server": {"http_parser": "llhttp"}})
