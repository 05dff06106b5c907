"""`ris pull NAME`: fetch a catalogued model from the Hugging Face hub and configure it.

The files go to `<data_dir>/models/<name>/` (the data folder of the config file), fetched by
huggingface_hub: its progress bars, HF_ENDPOINT (a mirror) and HF_TOKEN (gated or private
repositories) apply, and a connection dropped mid-file resumes where it stopped (an HTTP
Range request). What huggingface_hub does not do is check the bytes against the hub's
record: it checks the size only. So every file is checked here once it is on disk, against
the repository's metadata at the pulled commit: the sha256 of an LFS file (weights) or the
git blob id of a small one (configs); a file that does not match is deleted and the pull
fails. A file already present and matching is not fetched again, so a pull of a folder that
was stopped resumes at the file it stopped in.

Then the model's entry is added to config.json under its lane (the file is rewritten as
indented JSON, its other content unchanged). A running server reads config.json at start:
restart it to serve the new model.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib
import inspect
import json
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ris import catalogue
from ris.catalogue import CatalogueEntry

# Read in pieces: weights are gigabytes.
_CHUNK = 1 << 20


class PullError(Exception):
    """A pull that cannot be done; `code` is machine-readable, the message says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Pulled:
    name: str  # the config entry's name: the name as pulled
    lane: str
    folder: Path  # where its files are
    files: tuple[str, ...]  # their paths in the repository (and under `folder`)
    commit: str  # the repository commit they came from
    config_entry: dict[str, Any]  # what was written to config.json


@dataclass(frozen=True)
class RemoteFile:
    """A file of the repository the entry wants, with the checksums the hub records."""

    path: str
    size: int | None
    sha256: str | None  # LFS files
    blob_id: str | None  # git's id of the file's content (small files)


def pull(
    name: str,
    config_path: str | Path,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[RemoteFile, int], None] | None = None,
) -> Pulled:
    """Fetch `name`'s files, check them and add the model to the config file.
    `endpoint` and `token` default to huggingface_hub's (HF_ENDPOINT, HF_TOKEN). `progress` is
    told of each file with its bytes on disk: 0 before its download, then as each chunk is
    written (in huggingface_hub's thread; its progress bars then stay silent), and its size
    once checked (the Ollama API's /api/pull streams it)."""
    entry = catalogue.lookup(name)
    if entry is None:
        unavailable = catalogue.UNAVAILABLE.get(name.strip().lower())
        if unavailable:
            raise PullError("unavailable", unavailable)
        raise PullError("unknown_model", f"{name!r} is not in the catalogue; known: {catalogue.listing()}")
    config_path = Path(config_path)
    config = _read_config(config_path)
    folder = _data_dir(config, config_path) / "models" / entry.folder
    commit, remote = _remote_files(entry, endpoint, token)
    log(f"pulling {entry.name} from {entry.repo} at {commit[:12]} into {folder}")
    for f in remote:
        report = None if progress is None else functools.partial(progress, f)
        if report is not None:
            report(0)
        _download(entry, f, commit, folder, endpoint, token, report)
        if not _verify(folder / f.path, f):
            log(f"{f.path}: not verified, the hub gave no checksum for it (a mirror without file metadata)")
        if progress is not None:
            progress(f, (folder / f.path).stat().st_size)
    spec = _config_entry(entry, folder)
    key = name.strip()
    try:
        _add_to_config(config_path, entry.lane, key, spec)
        catalogue.PULLED.add(entry.name)  # a request for it before a restart is told so
    except (OSError, PullError) as e:  # not writable, disk full, or no longer JSON
        reason = e.message if isinstance(e, PullError) else str(e)
        entry_json = json.dumps({key: spec}, ensure_ascii=False)
        raise PullError(
            "config_not_written",
            f"{entry.name} is downloaded in {folder}, but {config_path} could not be updated ({reason}); "
            f"add it to lanes.{entry.lane}.models by hand: {entry_json}",
        ) from None
    log(f"added model {key!r} to the {entry.lane} lane of {config_path}; restart the server to use it")
    if _read_config(config_path).get("lanes", {}).get(entry.lane, {}).get("enabled") is False:
        log(f"note: the {entry.lane} lane is disabled in {config_path}: set its enabled to true to serve it")
    return Pulled(key, entry.lane, folder, tuple(f.path for f in remote), commit, spec)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PullError("config_error", f"cannot read config file {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PullError("config_error", f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise PullError("config_error", f"{path}: not valid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(data, dict):
        raise PullError("config_error", f"{path}: the top level is not a JSON object")
    return data


def _data_dir(config: dict[str, Any], config_path: Path) -> Path:
    # As ris.config.load does: a relative data folder is relative to the config file.
    data_dir = Path(str(config.get("data_dir", "ris-data"))).expanduser()
    return data_dir if data_dir.is_absolute() else (config_path.parent / data_dir).resolve()


def _network_errors() -> tuple[type[Exception], ...]:
    """What a failed connection raises: OSError, and the transport errors of the HTTP library
    huggingface_hub uses (httpx before its 2.x, httpx2 since), which are not OSErrors."""
    errors: list[type[Exception]] = [OSError]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _remote_files(
    entry: CatalogueEntry, endpoint: str | None, token: str | None
) -> tuple[str, list[RemoteFile]]:
    """The commit the entry's revision points to, and its files the entry wants, with the
    checksums the hub records for them."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(
            entry.repo, revision=entry.revision, files_metadata=True
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise PullError("not_found", f"{entry.repo}@{entry.revision} is not on the hub ({e})") from None
    except HfHubHTTPError as e:
        raise PullError("hub_error", f"the hub refused {entry.repo}: {e}") from None
    except _network_errors() as e:  # no network, DNS, offline mode
        raise PullError("hub_unreachable", f"cannot reach the hub for {entry.repo}: {e}") from None
    except (ValueError, KeyError, TypeError) as e:  # 200 with a page that is not the hub's JSON
        raise PullError(
            "hub_error",
            f"the answer for {entry.repo} is not the Hugging Face hub's API (a wrong endpoint, or a "
            f"proxy's or captive portal's page?): {type(e).__name__}: {e}",
        ) from None
    if info.sha is None:
        raise PullError("hub_error", f"the hub gave no commit for {entry.repo}@{entry.revision}")
    found = [
        RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None, s.blob_id)
        for s in info.siblings or []
        if any(fnmatch.fnmatchcase(s.rfilename, pattern) for pattern in entry.files)
    ]
    missing = [p for p in entry.files if not any(fnmatch.fnmatchcase(f.path, p) for f in found)]
    if missing:
        raise PullError(
            "not_found", f"{entry.repo}@{info.sha[:12]} has no file matching {', '.join(missing)}"
        )
    return info.sha, found


def _download(
    entry: CatalogueEntry,
    f: RemoteFile,
    commit: str,
    folder: Path,
    endpoint: str | None,
    token: str | None,
    report: Callable[[int], None] | None,
) -> None:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    extra: dict[str, Any] = {}
    # hf_hub_download takes a tqdm class in huggingface_hub 2.x; pyproject allows older ones,
    # with which `report` hears of the file before and after, not of each chunk.
    if report is not None and "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        extra["tqdm_class"] = _reporting_bar(report)
    try:
        hf_hub_download(
            entry.repo, f.path, revision=commit, local_dir=folder, endpoint=endpoint, token=token, **extra
        )
    except HfHubHTTPError as e:
        raise PullError("hub_error", f"downloading {entry.repo}/{f.path}: {e}") from None
    except _network_errors() as e:  # the connection failed past huggingface_hub's retries; disk full
        raise PullError(
            "download_failed", f"downloading {entry.repo}/{f.path}: {e}; run the same command to retry"
        ) from None


def _reporting_bar(report: Callable[[int], None]) -> Any:
    """A tqdm class for huggingface_hub's download of one file: silent, it tells `report` the
    file's bytes on disk at each chunk written (a resumed download starts at `initial`)."""
    from tqdm import tqdm  # huggingface_hub's own dependency

    class ReportingBar(tqdm):  # type: ignore[misc]  # tqdm has no annotations
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            self.on_disk = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            self.on_disk += int(n or 0)
            report(self.on_disk)
            result: bool | None = super().update(n)
            return result

    return ReportingBar


def _verify(path: Path, f: RemoteFile) -> bool:
    """The file on disk is the one the hub records, or it is deleted and the pull fails. False:
    nothing to compare it with (said by the caller, never passed over in silence)."""
    if f.sha256 is not None:
        kind, want, got = "sha256", f.sha256, file_sha256(path)
    elif f.blob_id is not None:
        kind, want, got = "git blob id", f.blob_id, git_blob_id(path)
    else:
        return False  # the hub gave no checksum (a mirror without file metadata)
    if got != want:
        _forget(path)
        raise PullError(
            "checksum_mismatch",
            f"{f.path}: {kind} {got} does not match the hub's {want}; the file was deleted "
            "(a corrupted download or a mirror serving other content): run the same command to retry",
        )
    return True


def _forget(path: Path) -> None:
    """Delete a bad file and huggingface_hub's record of it (or it would count as present)."""
    path.unlink(missing_ok=True)
    for parent in path.parents:
        meta_root = parent / ".cache" / "huggingface" / "download"
        if meta_root.is_dir():
            (meta_root / path.relative_to(parent)).with_name(path.name + ".metadata").unlink(missing_ok=True)
            return


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def git_blob_id(path: Path) -> str:
    """git's object id of a file: sha1 of 'blob <size>\\0' and the content."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _config_entry(entry: CatalogueEntry, folder: Path) -> dict[str, Any]:
    # An absolute path: a model source is read by the worker, from wherever it was started.
    source = folder / entry.source if entry.source else folder
    spec: dict[str, Any] = {"backend": entry.backend, "source": str(source)}
    if entry.options:
        spec["options"] = dict(entry.options)
    spec["description"] = entry.description
    spec["languages"] = list(entry.languages)
    return spec


def _add_to_config(path: Path, lane: str, name: str, spec: dict[str, Any]) -> None:
    """The model's entry added to the config as it is now, not as it was when the download
    began: a pull of another model, or an edit, made meanwhile is kept. Pulls into one file
    take turns (a lock file beside it, where the OS has flock)."""
    # The file a link points to is the one rewritten (replacing the link would fork the config).
    path = path.resolve()
    with _config_lock(path):
        config = _read_config(path)
        lanes = config.setdefault("lanes", {})
        lane_cfg = lanes.setdefault(lane, {})
        lane_cfg.setdefault("models", {})[name] = spec
        text = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
        _refuse_a_config_that_stops_loading(path, text)
        _write_whole(path, text)


def _refuse_a_config_that_stops_loading(path: Path, text: str) -> None:
    """PullError where the config loads now and would not with the model added: a lane the
    file did not have was added with its model alone, and `ris serve` then refused the file
    (its cores clashed with another lane's). A file that does not load already is the
    operator's to mend: not this pull's to judge."""
    from ris.config import ConfigError
    from ris.config.load import load_config

    try:
        load_config(path)
    except ConfigError:
        return
    trial = path.with_name(f".{path.name}.{os.getpid()}.check.json")
    try:
        trial.write_text(text, encoding="utf-8")
        load_config(trial)
    except ConfigError as e:
        raise PullError("config_invalid", f"with the model added the config would not load: {e}") from None
    finally:
        trial.unlink(missing_ok=True)


@contextmanager
def _config_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; pulls into one file are rare enough there
        yield
        return
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_whole(path: Path, text: str) -> None:
    # Written whole, then renamed: a pull stopped here leaves the old file, not half of one.
    # The new file keeps the old one's permissions: a config holding server.api_keys is
    # often readable by its owner only, and a fresh file would be readable by all (umask).
    mode = stat.S_IMODE(path.stat().st_mode)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)  # os.open's mode is cut by the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a disk that filled up keeps no half-written copy
        raise


__all__ = ["PullError", "Pulled", "RemoteFile", "file_sha256", "git_blob_id", "pull"]
