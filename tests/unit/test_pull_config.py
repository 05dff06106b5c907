"""What `ris pull` does to the config file it adds a model to, apart from the download."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ris.pull import _add_to_config

SPEC = {"backend": "llama_cpp", "source": "/models/q.gguf"}


def test_the_rewritten_config_keeps_its_permissions(tmp_path: Path) -> None:
    # A config holding API keys, readable by its owner only, must not become readable by all.
    path = tmp_path / "config.json"
    config = {"server": {"api_keys": ["secret"]}}
    path.write_text(json.dumps(config), encoding="utf-8")
    path.chmod(0o600)
    old_umask = os.umask(0o022)
    try:
        _add_to_config(path, config, "llm", "qwen2.5", SPEC)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text(encoding="utf-8"))["lanes"]["llm"]["models"]["qwen2.5"] == SPEC


def test_a_linked_config_is_rewritten_where_it_lives(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "ris.json"
    target.parent.mkdir()
    target.write_text("{}", encoding="utf-8")
    link = tmp_path / "config.json"
    link.symlink_to(target)
    _add_to_config(link, {}, "llm", "qwen2.5", SPEC)
    assert link.is_symlink()
    assert "qwen2.5" in json.loads(target.read_text(encoding="utf-8"))["lanes"]["llm"]["models"]
