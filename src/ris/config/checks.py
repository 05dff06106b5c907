"""Checks that need more than one field, or facts about the machine (which cores and GPUs exist).

They take a MachineInfo, so tests pass a fake one; every problem quotes the value at fault and
says what is allowed, and all problems are reported at once.
"""

from __future__ import annotations

import logging

from ris.config.backend_options import option_problems
from ris.config.fit_checks import ceiling_notes, memory_problems, preloaded
from ris.config.schema import Config, ConfigError, LaneConfig
from ris.config.sharing import resolve_policy, yields_to
from ris.lanes import kind, kinds
from ris.machine import MachineInfo

log = logging.getLogger("ris.config")


def check_config(cfg: Config, machine: MachineInfo) -> Config:
    """Cross-field and machine checks; raises ConfigError listing every problem."""
    problems: list[str] = []
    # On a cluster, cores and GPUs are those of the node a lane lands on, not this machine's:
    # the node's worker checks them when it binds (a failed start names the core).
    here = cfg.cluster.engine == "local"
    for lane, lane_cfg in cfg.lanes.items():
        problems += _lane_problems(lane, lane_cfg, machine if here else None)
    if here:
        problems += _shared_core_problems(cfg, machine)
    problems += _yield_to_problems(cfg)
    problems += _shared_library_problems(cfg)
    problems += _board_problems(cfg, local=here)
    options = _option_problems(cfg)
    problems += options
    if here and not options:  # on a cluster the model files and the cards are the nodes'
        problems += memory_problems(cfg, machine)  # (it reads the options: once they are sound)
    if not cfg.enabled_lanes:
        problems.append(f"lanes: no lane is enabled; configure at least one of {', '.join(cfg.lanes)}")
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    for note in (*idle_settings(cfg), *short_keys(cfg)):
        log.warning("%s", note)
    warnings, facts = ceiling_notes(cfg, machine)
    for note in warnings:
        log.warning("%s", note)
    for note in facts:
        log.info("%s", note)
    return cfg


# Shorter than this, a key can be guessed: the wrong-key throttle slows a guesser (ten a
# minute), but one behind the address a key was used from is answered for that key at full
# speed while the address is throttled (so that its users are not locked out: ris.api.keys).
MIN_KEY_CHARS = 16


def short_keys(cfg: Config) -> list[str]:
    """A warning for each key shorter than MIN_KEY_CHARS, naming it by its name or place."""
    notes = []
    for i, entry in enumerate(cfg.server.api_keys):
        secret = entry if isinstance(entry, str) else entry.key
        if len(secret) < MIN_KEY_CHARS:
            who = f"server.api_keys[{i}]" if isinstance(entry, str) else f"the key of {entry.name!r}"
            notes.append(
                f"{who} has {len(secret)} characters: a key shorter than {MIN_KEY_CHARS} can be "
                "guessed (the throttle answers a guesser behind the address a key was used from "
                "for that key); use a random one, e.g. `python -c 'import secrets; "
                "print(secrets.token_hex(16))'`"
            )
    return notes


def idle_settings(cfg: Config) -> list[str]:
    """Settings given that do nothing where they are (a GPU budget on a CPU lane, preemption on a
    lane that never yields, yielding to a lane that is off): each was taken in silence, and its
    writer believed it in force."""
    notes = []
    for lane, c in cfg.lanes.items():
        if not c.enabled:
            continue
        given = c.model_fields_set
        if c.device == "cpu":
            for name in ("gpu_memory_gb", "gpu_memory_fraction"):
                if name in given and getattr(c, name) is not None:
                    notes.append(
                        f"lanes.{lane}.{name} has no effect: the lane runs on the CPU (device 'cpu')"
                    )
        if "preemption" in given and not kind(lane).preemptible:
            notes.append(f"lanes.{lane}.preemption has no effect: only the image lane yields to others")
        for other in c.preemption.yield_to or ():
            if other in cfg.lanes and not cfg.lane(other).enabled:
                notes.append(
                    f"lanes.{lane}.preemption.yield_to: the {other} lane is disabled; nothing to yield to"
                )
        if c.models and c.default_model is None:
            notes.append(
                f"lanes.{lane}.default_model is not set: a request that names no model is refused "
                f"(models: {', '.join(c.models)})"
            )
    return notes


def _shared_core_problems(cfg: Config, machine: MachineInfo) -> list[str]:
    """Real-time lanes given the same cores: refused where both keep their cores to themselves
    (exclusive_cores, true by default). Where one says false, allowed (the refusal's own advice
    for years) but said: it takes the cores of a lane that did not ask to share."""
    realtime = [
        (lane, set(c.cores or machine.cores))
        for lane, c in cfg.lanes.items()
        if c.enabled and c.priority_class == "realtime"
    ]
    problems = []
    for i, (a, a_cores) in enumerate(realtime):
        for b, b_cores in realtime[i + 1 :]:
            shared = sorted(a_cores & b_cores)
            if not shared:
                continue
            cores = ", ".join(str(c) for c in shared)
            strict = [name for name in (a, b) if cfg.lane(name).exclusive_cores]
            if len(strict) == 2:
                problems.append(
                    f"lanes.{b}.cores: core(s) {cores} also given to the real-time {a} lane; "
                    "real-time lanes need disjoint cores (or set exclusive_cores: false on both)"
                )
            elif strict:
                sharing = b if strict[0] == a else a
                log.warning(
                    "lanes.%s shares core(s) %s with the real-time %s lane, whose exclusive_cores "
                    "is true: allowed because lanes.%s says false (say false on both to share "
                    "knowingly)",
                    sharing,
                    cores,
                    strict[0],
                    sharing,
                )
    return problems


def _board_problems(cfg: Config, *, local: bool) -> list[str]:
    """Lanes that yield to each other share an activity board, one slot per lane written by its
    one worker. Locally, two replicas of a lane yielded to would overwrite each other's slot (one
    going idle while the other is in prefill lets the image lane run through that prefill). On
    Ray the board is one node's shared memory, so the yielding lane and its partners are placed
    together on one node, one worker each (see ris.runtime.workers.ray)."""
    problems = []
    for lane in cfg.enabled_lanes:
        partners = yields_to(cfg, lane)
        if not partners or resolve_policy(cfg, lane).mode == "none":
            continue
        for name in partners if local else (lane, *partners):
            replicas = cfg.lane(name).replicas
            if replicas == 1:
                continue
            head = f"lanes.{name}.replicas: {replicas}; the {lane} lane yields to"
            if local:
                problems.append(
                    f"{head} {name} on {cfg.lane(lane).device}, whose activity one worker publishes "
                    "(use replicas: 1, or give the lanes different devices or cores)"
                )
            else:
                problems.append(
                    f"{head} {', '.join(partners)} on {cfg.lane(lane).device} and they are placed "
                    "together on one node, one worker each (use replicas: 1, or give the lanes "
                    "different devices)"
                )
    return problems


def missing_model_problems(cfg: Config) -> list[str]:
    """Models loaded at start whose file or package is not on this machine: their lane could
    never start (its worker failed the load and was restarted in a loop while the server ran).
    Asked by `ris serve` before it starts anything, not by the loader: a config may name files
    of another machine (the GPU profiles in examples/configs), and a cluster's are its nodes'."""
    if cfg.cluster.engine != "local":
        return []
    from ris.backends import resolve_source
    from ris.lanes.base import BackendError

    problems = []
    for lane in cfg.enabled_lanes:
        lane_cfg = cfg.lane(lane)
        for name in preloaded(lane_cfg, kind(lane).load_all_models):
            spec = lane_cfg.models[name]
            if spec.source is None or spec.source.startswith("builtin:") or spec.load_format == "dummy":
                continue  # no file: built in, a recipe, or an engine with none (espeak)
            if spec.source == "" and spec.backend not in FILE_BACKENDS:
                continue  # "" where none is read: as none
            try:
                path = resolve_source(spec.source)
            except BackendError as e:
                problems.append(
                    f"lanes.{lane}.models.{name}.source: {e.message}; it is loaded at start (preload: "
                    f"false loads it on first use), or disable the lane (lanes.{lane}.enabled: false)"
                )
                continue
            if spec.backend in ONE_FILE_BACKENDS and path.is_dir():
                problems.append(
                    f"lanes.{lane}.models.{name}.source: {spec.source!r} is a folder; the "
                    f"{spec.backend} backend loads one {ONE_FILE_BACKENDS[spec.backend]} file"
                )
    return problems


# Backends whose model is one file, and its kind: a folder given is said at start (it failed
# each load, the worker restarted for ever).
ONE_FILE_BACKENDS = {"llama_cpp": ".gguf"}
# The built-in backends that load their model from `source` (an empty one is a missing one).
FILE_BACKENDS = frozenset({"llama_cpp", "transformers", "diffusers", "piper"})


def _option_problems(cfg: Config) -> list[str]:
    """Each model's `options`, as its backend reads them (ris.config.backend_options); on a
    cluster the library's own option names are the nodes' version's, not this host's."""
    problems = []
    local = cfg.cluster.engine == "local"
    for lane, lane_cfg in cfg.lanes.items():
        backends = kind(lane).backends
        for name, model in lane_cfg.models.items():
            entry = backends.get(model.backend)
            if entry is None:
                continue  # an unknown backend is said by _lane_problems
            where = f"lanes.{lane}.models.{name}.options"
            problems += option_problems(where, model.backend, entry.options, model.options, library=local)
    return problems


def _shared_library_problems(cfg: Config) -> list[str]:
    """Backends of one lane that drive one per-process library each their own way (espeak and
    pyttsx3: libespeak-ng) cannot share its worker: said here, not by a worker that fails to
    load and is restarted for ever."""
    problems = []
    for lane, lane_cfg in cfg.lanes.items():
        if not lane_cfg.enabled:
            continue
        backends = kind(lane).backends
        drivers: dict[str, set[str]] = {}
        for model in lane_cfg.models.values():
            entry = backends.get(model.backend)
            if entry is not None and entry.drives is not None:
                drivers.setdefault(entry.drives, set()).add(model.backend)
        for library, users in drivers.items():
            if len(users) > 1:
                names = " and ".join(repr(u) for u in sorted(users))
                problems.append(
                    f"lanes.{lane}.models: the {names} backends both drive {library}, whose state "
                    f"is per process: configure one of them per {lane.upper()} lane"
                )
    return problems


def _yield_to_problems(cfg: Config) -> list[str]:
    problems = []
    for lane, lane_cfg in cfg.lanes.items():
        others = [n for n in cfg.lanes if n != lane]
        for other in lane_cfg.preemption.yield_to or ():
            if other not in others:
                problems.append(
                    f"lanes.{lane}.preemption.yield_to: {other!r} is not another lane; "
                    f"lanes: {', '.join(others)}"
                )
    return problems


def _lane_problems(lane: str, cfg: LaneConfig, machine: MachineInfo | None) -> list[str]:
    spec = kind(lane)
    where = f"lanes.{lane}"
    problems = []
    if cfg.min_replicas > cfg.replicas:
        problems.append(
            f"{where}.min_replicas: {cfg.min_replicas} is more than replicas ({cfg.replicas}); "
            "it is the part of replicas the server cannot start without"
        )
    for core in cfg.cores or ():
        if machine is not None and core not in machine.cores:
            # The cores this process may run on (taskset, a container's cpuset), not the
            # machine's: under `taskset -c 1`, "core 0 does not exist" was untrue.
            problems.append(
                f"{where}.cores: core {core} is not one this server may run on (its CPU affinity: "
                f"{machine.describe_cores()}); give the lane those, or leave out --config for a "
                "layout built for this machine"
            )
    gpu = cfg.gpu_index
    if machine is not None and gpu is not None and gpu >= machine.gpus:
        have = (
            "this machine has no GPU; use 'cpu'"
            if machine.gpus == 0
            else f"GPUs here: {', '.join(f'cuda:{i}' for i in range(machine.gpus))}"
        )
        problems.append(f"{where}.device: {cfg.device!r} is not available; {have}")
    if cfg.threads is not None and cfg.cores and cfg.threads > len(cfg.cores):
        problems.append(
            f"{where}.threads: {cfg.threads} on {len(cfg.cores)} core(s) {list(cfg.cores)}; threads "
            "beyond the lane's cores only wait for each other (64 on one core generated 3.5x "
            f"slower here): at most {len(cfg.cores)}, or unset (one per core)"
        )
    if cfg.parallel > 1 and not spec.concurrent:
        problems.append(
            f"{where}.parallel: {cfg.parallel}; the {lane} lane runs one task at a time (parallel: 1)"
        )
    if spec.cpu_only and cfg.device != "cpu":
        problems.append(f"{where}.device: {cfg.device!r}; the {lane.upper()} lane runs on CPU cores only")
    for name, model in cfg.models.items():
        if model.backend not in spec.backends:
            problems.append(
                f"{where}.models.{name}.backend: {model.backend!r} is not a "
                f"{lane} backend; allowed: {', '.join(spec.backends)}"
            )
    if cfg.enabled and cfg.default_model is not None and cfg.default_model not in cfg.models:
        problems.append(
            f"{where}.default_model: {cfg.default_model!r} is not in its models "
            f"({', '.join(sorted(cfg.models)) or 'none configured'})"
        )
    if cfg.enabled and not cfg.models:
        problems.append(
            f"{where}: enabled but no models configured (a lane given in config.json is whole: "
            "`ris config` prints this machine's layout, embedded models included, to start from; "
            f"or set {where}.enabled: false)"
        )
    return problems + _sharing_problems(lane, cfg)


def _sharing_problems(lane: str, cfg: LaneConfig) -> list[str]:
    """Borrowing idle cores and a minimum CPU share: each is for one kind of lane on CPU."""
    where = f"lanes.{lane}"
    problems = []
    if cfg.borrow_idle_cores:
        if not kind(lane).borrows_cores:
            able = ", ".join(sorted(name for name, k in kinds().items() if k.borrows_cores))
            problems.append(
                f"{where}.borrow_idle_cores: the {lane} lane cannot change its threads between "
                f"steps; lanes that borrow cores: {able}"
            )
        elif cfg.device != "cpu" or cfg.cores is None:
            problems.append(
                f"{where}.borrow_idle_cores: true needs a lane on CPU with its cores listed "
                f"(device 'cpu', cores [...]); this one has device {cfg.device!r}, cores "
                f"{None if cfg.cores is None else list(cfg.cores)}"
            )
    # On a GPU it is kept and not applied (the lane's share is its card's): a user who moves the
    # shipped image lane to cuda:0 must not have to find and delete it first.
    if cfg.min_cpu_share is not None and cfg.priority_class != "batch":
        problems.append(
            f"{where}.min_cpu_share: {cfg.min_cpu_share} is for batch lanes (priority_class "
            f"'batch'); this one is {cfg.priority_class!r}"
        )
    return problems
