"""Reading config.json: JSON errors with line and column, each lane kind's defaults filled in,
schema errors that quote the value and list the keys allowed where an unknown one was found,
then the machine checks."""

from __future__ import annotations

import difflib
import importlib
import json
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ris.config.checks import check_config
from ris.config.schema import Config, ConfigError, NamedKey
from ris.lanes import kinds
from ris.machine import MachineInfo, machine_info


def parse_config(data: Any, machine: MachineInfo | None = None) -> Config:
    """Validate a decoded config object; raises ConfigError."""
    load_plugins(data.get("plugins") if isinstance(data, dict) else None)
    data = with_lane_defaults(data)
    try:
        # Strict, as JSON reads: `"port": true` or `"threads": "2"` is refused, not taken as 1
        # and 2 (lax validation turns booleans and numeric strings into numbers); lists still
        # fill tuples, strings paths and names.
        cfg = Config.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None
    return check_config(cfg, machine or machine_info())


def load_config(
    path: str | Path, machine: MachineInfo | None = None, cluster: dict[str, Any] | None = None
) -> Config:
    """Read and validate a config file. `cluster`: fields laid over its "cluster" before the
    one validation (`ris serve --ray`), so cores and GPUs are checked against the machines that
    will run the lanes, exactly as when the file itself names the cluster."""
    p = Path(path)
    try:
        # utf-8-sig: a byte-order mark, as Windows Notepad saves UTF-8, is read past.
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:  # e.g. UTF-16, as Windows PowerShell 5.1's `>` writes
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not text.strip():
        raise ConfigError(f"{p}: the file is empty; `ris config > {p.name}` writes one to start from")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{p}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}{_json_hint(e)}"
        ) from None
    except _DuplicateKey as e:
        raise ConfigError(f"{p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the configuration is a JSON object ({{...}}), not {type(data).__name__}")
    if cluster and isinstance(data, dict):
        given = data.get("cluster")
        data = {**data, "cluster": {**(given if isinstance(given, dict) else {}), **cluster}}
    cfg = parse_config(_sources_beside(data, p.parent), machine)
    # "~" is the user's home, as `ris pull` reads it too (it put the models there while the
    # server used a folder named "~"); a relative data folder is relative to the config file,
    # not to wherever ris was started.
    data_dir = cfg.data_dir.expanduser()
    if not data_dir.is_absolute():
        data_dir = (p.parent / data_dir).resolve()
    if data_dir != cfg.data_dir:
        cfg = cfg.model_copy(update={"data_dir": data_dir})
    return cfg


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object read, a key given twice refused: the last one won, unsaid
    (`"port": 8080, ..., "port": 8081`)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"the key {key!r} is given twice in one object; keep one")
        out[key] = value
    return out


def _json_hint(e: json.JSONDecodeError) -> str:
    """What a JSON error most often means in a hand-edited config: a comment or a trailing
    comma, which JSON allows neither of."""
    before = e.doc[: e.pos].rstrip()
    at = e.doc[e.pos : e.pos + 2]
    if at.startswith(("//", "/*", "#")):
        return " (JSON has no comments: remove it)"
    if before.endswith(",") and at[:1] in ("}", "]"):
        return " (JSON allows no comma after the last item)"
    return ""


def _sources_beside(data: Any, folder: Path) -> Any:
    """`data` with each model's relative `source` that names a file or folder beside the
    config made absolute: a server started elsewhere (a service manager's working directory)
    found no model where the config's own folder has it. A relative source found nowhere there
    stays as written (read from the working directory, as before; or a name a backend knows)."""
    if not isinstance(data, dict) or not isinstance(data.get("lanes"), dict):
        return data
    cluster = data.get("cluster")
    if isinstance(cluster, dict) and cluster.get("engine") == "ray":
        return data  # read on the nodes, each from its own working directory
    lanes = dict(data["lanes"])
    for lane, cfg in lanes.items():
        if not isinstance(cfg, dict) or not isinstance(cfg.get("models"), dict):
            continue
        models = dict(cfg["models"])
        for name, spec in models.items():
            source = spec.get("source") if isinstance(spec, dict) else None
            if not isinstance(source, str) or not source or ":" in source.split("/", 1)[0]:
                continue  # none ("" is none too, not this folder), or package:, builtin:, a drive letter
            path = Path(source).expanduser()
            if not path.is_absolute() and (folder / path).exists():
                models[name] = {**spec, "source": str((folder / path).resolve())}
        lanes[lane] = {**cfg, "models": models}
    return {**data, "lanes": lanes}


def load_plugins(names: Any) -> None:
    """Import the modules a config lists in `plugins`: they register backends and lane kinds,
    which the rest of the config may then name."""
    if names is None:
        return
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"plugins: a list of Python module names is expected (got {names!r})")
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"plugins: cannot import {name!r}: {e}") from None


def with_lane_defaults(data: Any) -> Any:
    """`data` with every known lane kind (plugins' included, so load them first), in the
    registry's order: a lane the config gives is its kind's `config_defaults` overlaid with
    what it says; one it does not mention is there, disabled, so a config written before a
    kind existed still loads. A lane no kind knows is refused. Anything that is not a mapping
    of lanes is left for the schema to refuse."""
    if not isinstance(data, dict) or not isinstance(data.get("lanes", {}), dict):
        return data
    known = kinds()
    given: dict[str, Any] = dict(data.get("lanes") or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(
            f"invalid configuration:\n  - lanes: unknown lane {unknown[0]!r}; known lanes: {', '.join(known)}"
        )
    lanes: dict[str, Any] = {}
    for name, kind in known.items():
        entry = given.get(name, {"enabled": False})
        if isinstance(entry, dict):
            entry = {**kind.config_defaults, **entry}
        lanes[name] = entry
    return {**data, "lanes": lanes}


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent, key = e["loc"][:-1], e["loc"][-1]
            # A named API key is one branch of a union: pydantic names the branch in the path.
            model = NamedKey if "NamedKey" in parent else _model_at(parent)
            allowed = ", ".join(model.model_fields) if model else "see the README"
            near = difflib.get_close_matches(str(key), list(model.model_fields), n=1) if model else []
            hint = f"; did you mean {near[0]!r}?" if near else ""
            lines.append(f"{loc.replace('.NamedKey', '')}: unknown key {key!r}{hint} allowed here: {allowed}")
        elif "api_keys" in e["loc"]:
            # Never quote a key: the message reaches the terminal and the logs.
            if e["type"] == "string_type" and e["loc"][-1] == "str" and isinstance(e.get("input"), dict):
                continue  # an object: the named-key branch's errors say what is wrong
            lines.append(f"{loc.replace('.NamedKey', '')}: {e['msg']}")
        elif isinstance(e.get("input"), dict | list):
            # A check of a whole section (the server's two ports, say): quoting the section
            # would quote its api_keys too, and says nothing the message does not.
            lines.append(f"{loc}: {e['msg']}")
        else:
            lines.append(f"{loc}: {e['msg']} (got {_as_json(e.get('input'))})")
    # pydantic's prefix of a validator's own message says nothing to a user.
    return "invalid configuration:\n  - " + "\n  - ".join(
        line.replace(": Value error, ", ": ") for line in lines
    )


def _as_json(value: Any) -> str:
    """A value as the config file writes it (null, true), not as Python does (None, True)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings model found at a location like ('lanes', 'llm', 'models', 'x'), found by
    walking the models' own field types (a model field is one step, a dict of models two)."""
    model: type[BaseModel] = Config
    i = 0
    while i < len(loc):
        field = model.model_fields.get(str(loc[i]))
        if field is None:
            return None
        inner = _model_of(field.annotation)
        if inner is None:
            return None
        model, step = inner
        i += step
    return model


def _model_of(annotation: Any) -> tuple[type[BaseModel], int] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, 1
    if typing.get_origin(annotation) is dict:
        value = typing.get_args(annotation)[1]
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value, 2
    return None
