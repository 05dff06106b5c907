"""What `ris pull` does to the config file it adds a model to, apart from the download."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from ris import pull as pull_module
from ris.pull import PullError, RemoteFile, _add_to_config, pull

SPEC = {"backend": "llama_cpp", "source": "/models/q.gguf"}


def test_the_rewritten_config_keeps_its_permissions(tmp_path: Path) -> None:
    # A config holding API keys, readable by its owner only, must not become readable by all.
    path = tmp_path / "config.json"
    config = {"server": {"api_keys": ["secret"]}}
    path.write_text(json.dumps(config), encoding="utf-8")
    path.chmod(0o600)
    old_umask = os.umask(0o022)
    try:
        _add_to_config(path, "llm", "qwen2.5", SPEC)
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
    _add_to_config(link, "llm", "qwen2.5", SPEC)
    assert link.is_symlink()
    assert "qwen2.5" in json.loads(target.read_text(encoding="utf-8"))["lanes"]["llm"]["models"]


def _download_meanwhile(monkeypatch: pytest.MonkeyPatch, meanwhile: object) -> None:
    """pull() without a hub: one file, whose download runs `meanwhile` (what happens to the
    config while a pull of several GB goes on)."""
    remote = [RemoteFile("model.gguf", 4, None, None)]
    monkeypatch.setattr(pull_module, "_remote_files", lambda entry, endpoint, token: ("c" * 40, remote))

    def download(entry: object, f: RemoteFile, commit: str, folder: Path, *args: object) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f.path).write_bytes(b"GGUF")
        meanwhile()  # type: ignore[operator]

    monkeypatch.setattr(pull_module, "_download", download)
    monkeypatch.setattr(pull_module, "_verify", lambda path, f: True)


def test_what_changed_in_the_config_during_the_download_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pulls at once, or an edit made while one downloads: the entry is added to the file
    as it is at the end, not written over it from what was read at the start."""
    path = tmp_path / "config.json"
    shipped = json.loads(Path("config.json").read_text(encoding="utf-8"))
    path.write_text(json.dumps({**shipped, "data_dir": str(tmp_path / "data")}), encoding="utf-8")

    def edit() -> None:
        config = json.loads(path.read_text(encoding="utf-8"))
        config["server"] = {"api_keys": ["added-meanwhile"]}
        config["lanes"]["tts"]["models"]["other"] = {"backend": "espeak"}
        path.write_text(json.dumps(config), encoding="utf-8")

    _download_meanwhile(monkeypatch, edit)
    pull("qwen2.5", path, log=lambda line: None)
    config = json.loads(path.read_text(encoding="utf-8"))
    assert config["server"]["api_keys"] == ["added-meanwhile"]
    assert "other" in config["lanes"]["tts"]["models"] and "qwen2.5" in config["lanes"]["llm"]["models"]


def test_a_config_that_cannot_be_written_says_where_the_download_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"data_dir": str(tmp_path / "data")}), encoding="utf-8")

    def refuse(*args: object) -> None:
        raise PermissionError(13, "Permission denied")

    _download_meanwhile(monkeypatch, lambda: None)
    monkeypatch.setattr(pull_module, "_write_whole", refuse)
    with pytest.raises(PullError) as e:
        pull("qwen2.5", path, log=lambda line: None)
    assert e.value.code == "config_not_written"
    assert str(tmp_path / "data" / "models") in e.value.message and '"qwen2.5"' in e.value.message


def test_a_model_that_would_stop_the_config_loading_is_not_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A voice pulled into a config without a tts lane added the lane with its model alone;
    `ris serve` then refused the file (its default cores clashed with the LLM's). The config
    that loads stays as it was, and the message says where the download is."""
    path = tmp_path / "config.json"
    config = json.loads(Path("config.json").read_text(encoding="utf-8"))
    del config["lanes"]["tts"]
    config["data_dir"] = str(tmp_path / "data")
    path.write_text(json.dumps(config), encoding="utf-8")
    before = path.read_text(encoding="utf-8")
    _download_meanwhile(monkeypatch, lambda: None)
    with pytest.raises(PullError) as e:
        pull("piper:en_US-lessac-medium", path, log=lambda line: None)
    assert e.value.code == "config_not_written" and "would not load" in e.value.message, e.value.message
    assert path.read_text(encoding="utf-8") == before
    assert not list(tmp_path.glob(".config.json.*.json"))  # the trial copy is gone
