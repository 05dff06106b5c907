"""The `ris` command: serve, status, config, pull, bench, test."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import errno
import gc
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ris import __version__
from ris.config import Config, ConfigError
from ris.config.defaults import default_config
from ris.config.load import load_config, parse_config
from ris.config.schema import ANSWER_MARGIN_S, KEY_PLACEHOLDER
from ris.runtime import data_lock

if TYPE_CHECKING:
    import uvicorn

    from ris.log_writer import LogWriter
    from ris.sdk import RISError


def _load(args: argparse.Namespace) -> Config:
    path = args.config or os.environ.get("RIS_CONFIG")
    ray = getattr(args, "ray", None)
    cluster = {"engine": "ray", "address": ray} if ray else None
    if path:
        # --ray is laid over the file before its one validation: the same rule as a "cluster"
        # written in the file (cores and GPUs are the nodes', never checked against this host).
        cfg = load_config(path, cluster=cluster)
    else:
        cfg = default_config()
        if cluster:
            data = cfg.model_dump(mode="json")
            cfg = parse_config({**data, "cluster": {**data["cluster"], **cluster}})
    return _with_overrides(cfg, args)


def _config_source(args: argparse.Namespace) -> str:
    """Where the configuration in force came from, as the start's log says it: a server
    started without --config beside a config.json ran a layout built from the machine, and
    nothing said so (`ris pull` writes ./config.json by default; `ris serve` does not read it)."""
    if args.config:
        return f"configuration: {Path(args.config).resolve()} (--config)"
    if os.environ.get("RIS_CONFIG"):
        return f"configuration: {Path(os.environ['RIS_CONFIG']).resolve()} ($RIS_CONFIG)"
    here = " (./config.json is not read: pass --config config.json)" if Path("config.json").is_file() else ""
    return f"configuration: built from this machine, no --config or $RIS_CONFIG{here}"


def _port(text: str) -> int:
    """--port as a TCP port: model_copy would take 70000 unchecked (uvloop then listens on
    70000 mod 65536 without a word; asyncio fails with a traceback)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0 to 65535; 0: any free one)")
    return port


def _with_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """--host, --port and --data-dir laid over a config; the server's part checked again (a
    --port that is the Ollama listener's port too is refused here, not by a failed bind)."""
    from pydantic import ValidationError

    given = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    try:
        server = type(cfg.server).model_validate({**cfg.server.model_dump(), **given})
    except ValidationError as e:
        raise ConfigError(
            "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        ) from None
    update: dict[str, Any] = {"server": server}
    if args.data_dir:
        update["data_dir"] = Path(args.data_dir).resolve()
    return cfg.model_copy(update=update)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    # What the server writes is private to its user: the store holds every user's prompts and
    # client addresses, the results their pictures and speech, and at umask 022 any local user
    # could read them whatever the API keys said (at 000, write them). Its workers inherit it.
    os.umask(os.umask(0) | PRIVATE_UMASK)
    try:
        # First of all, before the web stack is even imported: a second server on a folder in
        # use starts no worker, reads no task, and says so at once.
        data_lock.acquire(cfg.data_dir, cfg.server.port)
    except data_lock.DataFolderInUse as e:
        print(f"ris serve: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a folder that cannot be made or written (a path under /proc, no rights)
        why = e.strerror or str(e)
        if cfg.data_dir.exists() and not cfg.data_dir.is_dir():  # "File exists" said nothing
            why = "it is a file, not a folder"
        print(f"ris serve: cannot use the data folder {str(cfg.data_dir)!r}: {why}", file=sys.stderr)
        return 1
    try:
        problem = _data_folder_problem(cfg.data_dir)
        if problem:
            print(f"ris serve: {problem}", file=sys.stderr)
            return 1
        shared = _open_to_others(cfg.data_dir)
        if shared:
            print(
                f"ris serve: warning: {', '.join(shared)} in the data folder can be read or written "
                "by other users of this machine (made before RIS kept its files private, or by "
                f"hand); `chmod -R go-rwx {str(cfg.data_dir)!r}` makes them private",
                file=sys.stderr,
            )
        return _serve(args, cfg)
    finally:
        data_lock.release(cfg.data_dir)


# Taken away from what the files and folders `ris serve` makes may grant: group and others.
PRIVATE_UMASK = 0o077

# Where the server writes every result (the store is checked whole). Not `models`, which
# serving only reads (a read-only mount of pulled models is fine).
DATA_SUBFOLDERS = ("audio", "images")


def _data_folder_unusable(folder: Path) -> str | None:
    """What `ris serve` refuses the data folder itself for, found without making it (`ris
    config --check` said "can serve" for a file, a folder under /proc, one in use): a file in
    its place, a folder that cannot be made there, another server holding it."""
    parent = folder
    try:
        if folder.exists() and not folder.is_dir():
            return "it is a file, not a folder"
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"{str(parent)!r} is a file, not a folder"
        # A folder made and taken away at once: whether this user may write there (root
        # included, whom os.access answers yes for /proc).
        os.rmdir(tempfile.mkdtemp(prefix=".ris-check-", dir=parent))
    except OSError as e:
        where = "written" if folder.exists() else f"made in {str(parent)!r}"
        return f"it cannot be {where}: {e.strerror or e}"
    return data_lock.held_elsewhere(folder) if folder.exists() else None


def _data_folder_problem(folder: Path) -> str | None:
    """Why the data folder cannot serve, in one line, before anything starts: its store
    unreadable or another user's, or a result folder this user cannot write (the server said
    ready, then failed every request that writes there)."""
    from ris.runtime.store import owner_note, store_problem

    problem = store_problem(folder / "tasks.db")
    if problem:
        return problem
    for name in DATA_SUBFOLDERS:
        sub = folder / name
        if sub.exists() and not sub.is_dir():
            return f"the data folder's {str(sub)!r} is not a folder"
        if sub.exists() and not os.access(sub, os.W_OK | os.X_OK):
            return f"the data folder's {str(sub)!r} cannot be written by this user{owner_note(sub)}"
    return None


# What in the data folder holds users' prompts, results or secrets: what another local user
# must not read (the server makes them private; an older folder kept the modes it had).
PRIVATE_ENTRIES = ("tasks.db", "tasks.db-wal", "url_signing.key", *DATA_SUBFOLDERS)


def _open_to_others(folder: Path) -> list[str]:
    """The private entries of the data folder that group or others may read or write. None
    where others cannot enter the folder at all; the folder itself only where they may change
    it (`ris pull` makes it 0755 under the usual umask: names alone are no one's data)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return []
    if not mode & 0o011:  # no one else may enter it: nothing inside is within their reach
        return []
    found = ["the folder itself"] if mode & 0o022 else []
    for name in PRIVATE_ENTRIES:
        try:
            if (folder / name).stat().st_mode & 0o077:
                found.append(name)
        except OSError:
            continue
    return found


def _serve(args: argparse.Namespace, cfg: Config) -> int:
    from ris.api.app import bind_main_port, http_parser
    from ris.api.security import check_exposure
    from ris.config.checks import missing_model_problems

    check_exposure(cfg)
    missing = missing_model_problems(cfg)
    if missing:
        raise ConfigError("a lane cannot start:\n  - " + "\n  - ".join(missing))
    try:
        http = http_parser(cfg)
    except RuntimeError as e:
        print(f"ris serve: {e}", file=sys.stderr)
        return 1
    try:
        # Before the app exists: uvicorn would bind only once every worker had started.
        sockets = bind_main_port(cfg)
    except OSError as e:
        print(f"ris serve: {_bind_failure(cfg, e)}", file=sys.stderr)
        return 2
    try:
        return _serve_on(args, cfg, http, sockets)
    finally:
        for sock in sockets:  # uvicorn closes those it served on; these are the early returns'
            sock.close()


def _bind_failure(cfg: Config, e: OSError) -> str:
    """The one line a main port that cannot be bound is: the setting at fault and its flag."""
    srv = cfg.server
    reason = e.strerror or str(e)
    if e.errno in (errno.EADDRINUSE, errno.EACCES):  # the port: taken, or privileged
        port = f"{srv.port}" if srv.port else "0 (any free port)"
        return f"server.port {port}: {reason} (choose another with --port)"
    # No such name, or an address this machine does not have: the host.
    return f"server.host {srv.host!r}: {reason} (choose another with --host)"


def _serve_on(args: argparse.Namespace, cfg: Config, http: str, sockets: list[socket.socket]) -> int:
    import uvicorn

    from ris.api import http_bounds
    from ris.api.app import bind_ollama_port, create_app
    from ris.api.security import short_key_hint, wildcard_host_hint
    from ris.log_writer import LogWriter

    port = int(sockets[0].getsockname()[1])  # with --port 0, the one the OS chose
    data_lock.record_port(cfg.data_dir, port)
    try:
        ollama_sockets = bind_ollama_port(cfg)
    except OSError as e:
        busy = " (Ollama itself, or another RIS?)" if e.errno == errno.EADDRINUSE else ""
        print(
            f"ris serve: server.ollama_port {cfg.server.ollama_port}: {e.strerror or e}{busy}; choose "
            "another in the config, or leave it out",
            file=sys.stderr,
        )
        return 2
    if cfg.cluster.engine == "ray":
        from ris.runtime.workers.ray_cluster import check_cluster

        check_cluster(cfg)  # a lane no node can host: refused here, not left pending for ever
    # --log-level is RIS's own loggers' too, not only uvicorn's (`error` still printed every
    # worker's "ready", and `debug` added nothing of RIS's).
    level = getattr(logging, args.log_level.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ris").setLevel(level)
    logging.getLogger("ris.api").info("%s; data in %s", _config_source(args), cfg.data_dir)
    for hint in (wildcard_host_hint(cfg, _own_addresses()), short_key_hint(cfg)):
        if hint:
            logging.getLogger("ris.api").warning(hint)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:  # Windows: asyncio's own loop
        loop = "asyncio"
    path = args.config or os.environ.get("RIS_CONFIG")  # as _load read it
    app = create_app(cfg, config_path=Path(path).resolve() if path else None, ollama_sockets=ollama_sockets)
    _tune_gc()
    config = uvicorn.Config(
        app,
        host=cfg.server.host,
        port=port,
        loop=loop,
        http=http_bounds.protocol(http),
        # The client is the TCP peer: X-Forwarded-For, trusted by uvicorn from any local
        # process, would let one set the address the wrong-key throttle counts (the scheme a
        # local proxy says is still read: security.ForwardedProto). No websocket is served.
        proxy_headers=False,
        ws="none",
        log_config=_timed_log_config(),
        log_level=args.log_level,
        timeout_graceful_shutdown=cfg.server.shutdown_grace_s,
    )
    # Once uvicorn has set up its loggers (in Config): theirs and ours written off the event
    # loop, which a stalled log reader would otherwise stop (ris.log_writer).
    writer = LogWriter(("", "uvicorn", "uvicorn.access"))
    server = _server(config, writer)
    engine = app.state.engine
    # The data folder gone from under the engine (ris.runtime.engine._watch_data_folder):
    # stop as a SIGTERM would, and say so in the exit status (a service manager's
    # Restart=on-failure then starts the server afresh).
    engine.on_folder_lost = lambda: setattr(server, "should_exit", True)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    finally:
        writer.stop()
    if engine.folder_lost:
        return 1
    return 0 if server.started else STARTUP_FAILURE


# The exit status of a server that did not start (stopped while its workers started, say):
# uvicorn.run's.
STARTUP_FAILURE = 3


def _own_addresses() -> list[str]:
    """This machine's name and IPv4 addresses, as a client on its network would write them."""
    import psutil

    found = [socket.gethostname()]
    with contextlib.suppress(OSError):
        for addrs in psutil.net_if_addrs().values():
            found += [a.address for a in addrs if a.family == socket.AF_INET]
    return found


def _timed_log_config() -> dict[str, Any]:
    """uvicorn's logging set-up with each line's time, as RIS's own lines have it: its access
    and start-up lines had none, and a log read after an incident could not place them."""
    import uvicorn.config

    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["fmt"] = "%(asctime)s " + formatter["fmt"]
    return config


def _server(config: uvicorn.Config, writer: LogWriter) -> uvicorn.Server:
    """uvicorn's server, which drains the log writer before it raises a captured signal again:
    a SIGTERM ends the process there, past the `finally` around run(), and the last lines
    would go with the queue."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn waits timeout_graceful_shutdown for the answers being written, then
            # cancels them mid-way: a plain-text 500 or a stream cut without a word. Before
            # that, the engine ends their tasks with server_shutdown, which every answer then
            # says in its API's words (durable images are set aside as before).
            engine = getattr(getattr(self.config.app, "state", None), "engine", None)
            timer = None
            if engine is not None and self.config.timeout_graceful_shutdown is not None:
                grace = max(0.0, self.config.timeout_graceful_shutdown - ANSWER_MARGIN_S)
                timer = asyncio.get_running_loop().call_later(grace, engine.end_live_tasks)
            try:
                await super().shutdown(sockets=sockets)
            finally:
                if timer is not None:
                    timer.cancel()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and sockets:
                # uvicorn names the address only where it bound the sockets itself; with
                # --port 0, this line is where the port is told.
                for sock in sockets:
                    host, port = sock.getsockname()[:2]
                    address = f"[{host}]" if sock.family == socket.AF_INET6 else host
                    logging.getLogger("uvicorn.error").info(
                        "Uvicorn running on http://%s:%d (Press CTRL+C to quit)", address, port
                    )

        def handle_exit(self, sig: int, frame: Any) -> None:
            engine = getattr(getattr(self.config.app, "state", None), "engine", None)
            if engine is not None:
                engine.stop_signalled()  # the workers may have had the signal too
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            with super().capture_signals():
                hangup = _stop_on_hangup(self.handle_exit)
                try:
                    yield
                finally:
                    # Given back before uvicorn raises the captured signals again: a hangup
                    # then ends the process as one does, once the server has stopped.
                    hangup()
                    writer.stop()

    return Server(config)


def _stop_on_hangup(handler: Callable[[int, Any], None]) -> Callable[[], None]:
    """SIGHUP (the terminal or ssh session that started the server closed) stops it as SIGTERM
    does, gracefully: uvicorn handles only SIGINT and SIGTERM, and a hangup killed the server
    at once, its answers cut and nothing logged. Left ignored where it is ignored (`nohup`).
    Returns what puts the previous handler back."""
    hup = getattr(signal, "SIGHUP", None)  # not on Windows
    if hup is None or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(hup)
    if previous == signal.SIG_IGN or previous is None:  # ignored; or set outside Python: left be
        return lambda: None
    signal.signal(hup, handler)

    def give_back() -> None:
        signal.signal(hup, previous)

    return give_back


# Objects made (less those freed) between two collections of the youngest generation.
YOUNG_GC_THRESHOLD = 10_000


def _tune_gc() -> None:
    """The collector for a long-running server, set once its app is built (measured with
    bench/api_overhead.py's no-op generations, 32 connections):
      - what start-up built (modules, the app, its schemas: ~100k objects) lives as long as the
        process: frozen out of the collector's sight, a full collection walks only what came
        after (81 ms each, then 6.6 ms);
      - a young collection ran each time 700 more objects were made than freed, and the objects
        of requests in flight count until they end: 32 no-op generations crossed 700 every ~9
        requests, each collection ~0.4 ms. At 10,000, cyclic garbage waits for a few MB at most.
    The collector's time per no-op generation: 132 us, then ~1 us."""
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_GC_THRESHOLD, young), older, oldest)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_status(args: argparse.Namespace) -> int:
    from ris.sdk import Client, RISError

    default = args.url is None and not os.environ.get("RIS_URL")
    if args.url is None:
        try:
            args.url = _url(os.environ.get("RIS_URL") or "http://127.0.0.1:8080")
        except argparse.ArgumentTypeError as e:
            print(f"ris status: $RIS_URL: {e}", file=sys.stderr)
            return 2
    try:
        with Client(args.url, api_key=args.api_key, timeout=10, max_retries=0) as client:
            answer: Any = client.stats()
    except RISError as e:  # reached: it said no
        if e.code == "http_error":  # no error object of RIS's: another service (its page unquoted)
            print(
                f"ris status: {args.url} answered HTTP {e.status}, but not as a RIS server: is --url "
                "the right address?",
                file=sys.stderr,
            )
        else:
            print(f"ris status: {args.url} answered {e}{_refusal_hint(e, args.api_key)}", file=sys.stderr)
        return 1
    except json.JSONDecodeError:  # reached: a 200 that is not JSON (a web page)
        answer = None
    except Exception as e:  # noqa: BLE001 - OSError, httpx's transport errors
        # Which server is asked, and how to ask another (a server on another port: a newcomer
        # read "cannot reach http://127.0.0.1:8080" with no hint).
        where = " (the default address; --url or $RIS_URL name another)" if default else ""
        print(f"ris status: cannot reach {args.url}{where}: {e}", file=sys.stderr)
        return 1
    if not isinstance(answer, dict) or not isinstance(answer.get("lanes"), dict):
        # Another service on that port: "cannot reach" would send the user looking at the network.
        print(
            f"ris status: {args.url} answered, but not as a RIS server (no lane statistics at "
            "/api/stats): is --url the right address?",
            file=sys.stderr,
        )
        return 1
    if args.json:  # all of it, as the server said it (lanes and GPUs)
        print(json.dumps(answer, indent=2))
        return 0
    stats = answer["lanes"]
    head = (
        f"{'lane':6} {'state':10} {'pid':>7} {'device':7} {'cores':9} {'queue':>9} {'run':>3} "
        f"{'ok':>6} {'failed':>6} {'cancel':>6} {'p50 s':>7} {'p99 s':>7} {'cpu%':>5} {'rss':>9}"
    )
    print(head)
    for name, s in stats.items():
        w = s["worker"]
        cores = ",".join(map(str, w["cpu_affinity"] or s["cores"] or [])) or "all"
        lat = s["latency_s"]
        # The lane's state: its worker's, or while ready what it does (prefill, decode, busy,
        # yielding: an image paused for a real-time lane sharing its hardware).
        state = s.get("state") or w["state"]
        print(
            f"{name:6} {state:10} {w['pid'] or '-':>7} {s['device']:7} {cores:9} "
            f"{s['queue_depth']:>4}/{s['max_queue']:<4} {s['running']:>3} {_succeeded(s):>6} "
            f"{s['failed']:>6} {s['cancelled']:>6} {_num(lat['p50']):>7} {_num(lat['p99']):>7} "
            f"{_num(w['cpu_percent'], 0):>5} {_fmt_bytes(w['rss_bytes']):>9}"
        )
        if w.get("error"):
            print(f"       error: {w['error']}")
        if s.get("held"):  # its queue starts nothing now (a full disk): "idle" said nothing of it
            print(f"       held: {s['held']} (its queue starts nothing until that passes)")
        if w.get("engine"):
            print(f"       engine: {_engine_line(w['engine'])}")
        rates = s.get("throughput_per_s") or {}
        if rates:
            shown = ", ".join(f"{_num(v, 3)} {_per_s(k)}" for k, v in sorted(rates.items()))
            print(f"       throughput over the last {s['throughput_window_s']:.0f} s: {shown}")
        workers = s.get("workers", [])
        if len(workers) > 1 or any(r.get("node") for r in workers):
            # Every replica, numbered from 1 as the start's warnings number them, with the Ray
            # node it runs on (a pending one has none yet: it said "on local").
            for i, r in enumerate(workers, start=1):
                if r.get("node"):
                    node = f"on node {r['node'][:12]} at {r['node_ip']}"
                    if r.get("link"):
                        node += " (direct link)" if r["link"] == "direct" else " (through Ray)"
                else:
                    node = "on no node yet" if r["state"] == "pending" else "on local"
                pid = r["pid"] or "-"
                print(f"       replica {i}: {r['state']} pid {pid} {node}, running {r['running']}")
                if r.get("error") and r["error"] != w.get("error"):
                    print(f"         error: {r['error']}")
    for g in answer.get("gpus") or []:  # the machine's cards, whichever lanes use them
        busy = "" if g["utilization_percent"] is None else f", {g['utilization_percent']}% busy"
        used, total = g["memory_used_bytes"] / 2**30, g["memory_total_bytes"] / 2**30
        print(f"gpu {g['index']} {g['name']}: {used:.1f} of {total:.1f} GiB memory used{busy}")
    return 0


def _engine_line(said: dict[str, int]) -> str:
    """An LLM worker's batching engine in words (messages.EngineFigures): what is running and
    held now, and since the worker started the mean batch and the prompt cache's hits."""
    from ris.messages import EngineFigures

    e = {f.name: said.get(f.name) or 0 for f in dataclasses.fields(EngineFigures)}  # fewer: 0
    parts = [
        f"{e['sequences']} running",
        f"KV cache {e['kv_cache_tokens']} of {e['kv_cache_capacity_tokens']} tokens",
    ]
    if e["decode_steps"]:
        parts.append(
            f"mean batch {e['batched_tokens'] / e['decode_steps']:.1f} tokens over {e['decode_steps']} steps"
        )
    prompts = e["prompt_tokens"] + e["reused_prompt_tokens"]
    if prompts:
        parts.append(
            f"{100 * e['reused_prompt_tokens'] / prompts:.0f}% of {prompts} prompt tokens from the cache"
        )
    return ", ".join(parts)


def _refusal_hint(e: RISError, key: str | None) -> str:
    """What to do about a server's refusal, where the CLI knows."""
    if e.status == 401:
        if key:
            return " (the key given was refused: check --api-key or RIS_API_KEY)"
        return " (give a key with --api-key or RIS_API_KEY)"
    if e.code == "host_not_allowed":  # a key would not help: the Host guard comes first
        return " (add the URL's host to the server's server.allowed_hosts, or use one it allows in --url)"
    return ""


def _per_s(name: str) -> str:
    """A counted name as a rate's unit: "generated_tokens" -> "generated tokens/s"."""
    return f"{name.replace('_', ' ')}/s"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def cmd_config(args: argparse.Namespace) -> int:
    card_gb = getattr(args, "gpu_profile", None)
    if card_gb is None:
        cfg = _load(args)
    elif args.config or args.ray:
        print("ris config: --gpu-profile builds a layout; it takes no --config or --ray", file=sys.stderr)
        return 2
    else:
        # A card that is not here: the layout is checked against this machine's cores with it.
        cfg = _for_card(card_gb, args)
    if getattr(args, "check", False):
        return _check_serves(cfg)
    _say_ceilings(cfg)
    printed = cfg.model_dump(mode="json")
    keys = printed["server"]["api_keys"]
    if keys and not args.show_keys:
        # A terminal, a pasted ticket or a CI log is no place for bearer secrets.
        printed["server"]["api_keys"] = [_redacted(k) for k in keys]
        print(
            f"ris config: {len(keys)} API key(s) shown as {KEY_PLACEHOLDER!r}; --show-keys prints them",
            file=sys.stderr,
        )
    print(json.dumps(printed, indent=2, ensure_ascii=False))
    return 0


def _check_serves(cfg: Config) -> int:
    """`ris config --check`: what `ris serve` refuses before it starts a worker (a host open
    to the network without keys, a model file that is not there, a port in use, a data
    folder it cannot use), said without starting it; status 2 for a refusal, as a config
    error."""
    from ris.api.security import check_exposure
    from ris.config.checks import missing_model_problems

    problems = []
    try:
        check_exposure(cfg)
    except ConfigError as e:
        problems.append(str(e))
    problems += missing_model_problems(cfg)
    problems += _port_problems(cfg)
    unusable = _data_folder_unusable(cfg.data_dir)
    if unusable:
        problems.append(f"cannot use the data folder {str(cfg.data_dir)!r}: {unusable}")
    elif cfg.data_dir.exists():
        problems += [p for p in (_data_folder_problem(cfg.data_dir),) if p]
    if problems:
        raise ConfigError("`ris serve` would refuse this configuration:\n  - " + "\n  - ".join(problems))
    lanes = ", ".join(cfg.enabled_lanes)
    print(f"ris config: the configuration can serve (lanes: {lanes}; {cfg.server.host}:{cfg.server.port})")
    _say_ceilings(cfg)
    return 0


def _port_problems(cfg: Config) -> list[str]:
    """The ports `ris serve` would bind, bound and let go at once: one in use (a server already
    running there) passed the check, and `ris serve` then exited 2."""
    from ris.api.app import bind_main_port, bind_ollama_port

    problems = []
    try:
        for sock in bind_main_port(cfg):
            sock.close()
    except OSError as e:
        problems.append(_bind_failure(cfg, e))
    try:
        for sock in bind_ollama_port(cfg):
            sock.close()
    except OSError as e:
        problems.append(f"server.ollama_port {cfg.server.ollama_port}: {e.strerror or e}")
    return problems


def _say_ceilings(cfg: Config) -> None:
    """The memory ceilings in force on this machine, on stderr: the printed config says null
    for a default one (a share of the machine), and a user sizing a small box saw the real
    figures only in a running server's /api/stats. (A ceiling the machine cannot give was
    already warned of, when the config loaded.)"""
    from ris.config.fit_checks import ceiling_notes
    from ris.machine import machine_info

    for fact in ceiling_notes(cfg, machine_info())[1]:
        print(f"ris config: {fact}", file=sys.stderr)


def _redacted(entry: str | dict[str, Any]) -> str | dict[str, Any]:
    return KEY_PLACEHOLDER if isinstance(entry, str) else {**entry, "key": KEY_PLACEHOLDER}


def _for_card(card_gb: float, args: argparse.Namespace) -> Config:
    from ris.config.defaults import profile_config
    from ris.config.profiles import card_of, pick_profile, summary

    card = card_of(card_gb)
    cfg = profile_config(card)
    # On stderr: stdout stays the config alone, for `ris config --gpu-profile 8 > config.json`.
    print(f"ris config: {summary(pick_profile(card))}", file=sys.stderr)
    return _with_overrides(cfg, args)


def _card_gb(text: str) -> float:
    try:
        gb = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GB (e.g. 8)") from None
    if not 0 < gb <= 4096:
        raise argparse.ArgumentTypeError(f"{text!r}: a card's memory is more than 0 and at most 4096 GB")
    return gb


def cmd_bench(args: argparse.Namespace) -> int:
    from ris.benchmark.run import main as bench_main

    return bench_main(args)


def cmd_pull(args: argparse.Namespace) -> int:
    from ris import catalogue
    from ris.pull import PullError, pull

    if args.list or not args.name:
        for name in catalogue.names():
            entry = catalogue.lookup(name)
            assert entry is not None
            alias = f" (= {entry.name})" if entry.name != name else ""
            print(f"{name:28} {entry.lane:6} {entry.repo:38} {','.join(entry.languages)}{alias}")
        print(f"{'piper:<voice>':28} tts    any voice of rhasspy/piper-voices by its file name")
        for name, why in catalogue.UNAVAILABLE.items():
            print(f"{name:28} -      {why}")
        if not args.list:
            print(
                "ris pull: name a model to pull, one of those above (ris pull --list lists them)",
                file=sys.stderr,
            )
            return 2
        return 0
    path = Path(args.config or os.environ.get("RIS_CONFIG") or "config.json")
    if not path.is_file():
        print(f"ris pull: no config file {str(path)!r}; make one with `ris config > {path}`", file=sys.stderr)
        return 2
    try:
        pull(args.name, path, endpoint=args.endpoint, token=args.token)
    except PullError as e:
        print(f"ris pull: {e.message}", file=sys.stderr)
        return 1
    if not (args.config or os.environ.get("RIS_CONFIG")):
        # `ris serve` with neither builds its layout from the machine and never reads this file.
        print(f"ris pull: serve it with `ris serve --config {path}` (or RIS_CONFIG={path})", file=sys.stderr)
    return 0


# The integration test the product description calls resource_isolation_test.
TESTS = {"isolation": "tests/integration/test_resource_isolation.py"}


def cmd_test(args: argparse.Namespace) -> int:
    import subprocess

    # A source checkout: the tests are not installed with the package.
    root = Path(__file__).resolve().parents[2]
    path = root / TESTS[args.which]
    if not path.is_file():
        print(
            f"ris test: {TESTS[args.which]} is not here ({root}): it runs from a source checkout "
            "installed with `pip install -e .[test]`",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("pytest") is None:  # `make setup` installs what serving needs only
        print(
            "ris test: pytest is not installed in this environment: `make test` (or "
            "`pip install -e .[test]`) installs what the tests need",
            file=sys.stderr,
        )
        return 2
    return subprocess.call([sys.executable, "-m", "pytest", str(path), "-v", *args.pytest_args], cwd=root)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ris", description="Resource Isolation Scheduler")
    p.add_argument("-V", "--version", action="version", version=f"ris {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (
        ("serve", cmd_serve, "start the service"),
        ("config", cmd_config, "print the effective configuration"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", help="config.json (default: $RIS_CONFIG, else built from this machine)")
        sp.add_argument("--host", help="override server.host")
        sp.add_argument("--port", type=_port, help="override server.port (0: any free port)")
        sp.add_argument("--data-dir", help="override data_dir")
        if name == "serve":
            sp.add_argument(
                "--log-level",
                default="info",
                choices=["critical", "error", "warning", "info", "debug"],
                help="what the server logs, RIS's lines and uvicorn's (default: info)",
            )
        sp.add_argument(
            "--ray",
            metavar="ADDRESS",
            help="run each lane's worker as an actor on this Ray cluster (cluster.engine 'ray')",
        )
        if name == "config":
            sp.add_argument(
                "--gpu-profile",
                metavar="GB",
                type=_card_gb,
                help="lay out the lanes for one NVIDIA card of this many GB (6, 8, 12, 16, 24, 48...), "
                "here or not: the card's profile sets the lanes' GPU budgets and suggests models "
                "(docs/DEPLOYMENT_GUIDE.md, Small GPU profiles)",
            )
            sp.add_argument(
                "--check",
                action="store_true",
                help="check what `ris serve` checks before it starts (model files there, keys for a "
                "host beyond loopback, its ports free, the data folder usable) and print one line, "
                "not the config; status 2 when it would refuse",
            )
            sp.add_argument(
                "--show-keys",
                action="store_true",
                help=f"print server.api_keys as they are (default: each key as {KEY_PLACEHOLDER!r})",
            )
        sp.set_defaults(fn=fn)
    st = sub.add_parser("status", help="lanes, queues and resources of a running service")
    st.add_argument(
        "--url",
        type=_url,
        default=None,  # $RIS_URL read in cmd_status: a bad one is named as itself, not as --url
        help="the server (host:port or http[s]://host:port; default: $RIS_URL, else http://127.0.0.1:8080)",
    )
    st.add_argument(
        "--api-key",
        default=os.environ.get("RIS_API_KEY"),
        help="a key of the server's server.api_keys (default: $RIS_API_KEY)",
    )
    st.add_argument("--json", action="store_true", help="print the statistics as the server gives them")
    st.set_defaults(fn=cmd_status)
    pl = sub.add_parser("pull", help="fetch a catalogued model from the Hugging Face hub into config.json")
    pl.add_argument("name", nargs="?", help="e.g. qwen2.5, qwen2.5:7b, llama3.2, sd-turbo, piper:<voice>")
    pl.add_argument("--list", action="store_true", help="list the catalogue")
    pl.add_argument("--config", help="the config file to add it to (default: $RIS_CONFIG, else config.json)")
    pl.add_argument("--endpoint", help="hub URL (default: $HF_ENDPOINT, else https://huggingface.co)")
    pl.add_argument("--token", help="hub token for gated repositories (default: $HF_TOKEN)")
    pl.set_defaults(fn=cmd_pull)
    te = sub.add_parser("test", help="run a test of the service by name (from a source checkout)")
    te.add_argument(
        "which",
        nargs="?",
        default="isolation",
        choices=sorted(TESTS),
        help="isolation (the default): the resource isolation test",
    )
    te.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    te.set_defaults(fn=cmd_test)
    from ris.benchmark.run import add_arguments

    bench = sub.add_parser(
        "bench",
        help="traditional vs isolated configuration under one mixed workload (starts its own services)",
    )
    add_arguments(bench)
    bench.set_defaults(fn=cmd_bench)
    return p


def _url(value: str) -> str:
    """A server's address as `--url` takes it (the SDK's rule: `localhost:8080` is
    http://localhost:8080); what cannot be one is a usage error, exit 2."""
    from ris.sdk._common import server_url

    try:
        return server_url(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _succeeded(lane: dict[str, Any]) -> int:
    """Tasks that ended well ("done" counts every end, failures and cancels too; a server from
    before "succeeded" is read from those)."""
    if "succeeded" in lane:
        return int(lane["succeeded"])
    return int(lane["done"]) - int(lane["failed"]) - int(lane["cancelled"])


class _OutputLost(Exception):
    """Standard output cannot be written: the disk (or quota) it goes to is full."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause.strerror)
        self.strerror = cause.strerror


class _GuardedOutput:
    """Standard output whose full disk is told apart from any other file's (a benchmark's
    results, the store): only the output's is a line and exit 1; the others keep their
    traceback and file name."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError as e:
            raise _lost(e) from e

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise _lost(e) from e

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _lost(e: OSError) -> OSError | _OutputLost:
    return _OutputLost(e) if e.errno in (errno.ENOSPC, errno.EDQUOT) else e


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given, sys.stdout = sys.stdout, _GuardedOutput(sys.stdout)
    try:
        return _run(args)
    finally:
        sys.stdout = given


def _run(args: argparse.Namespace) -> int:
    try:
        code = int(args.fn(args))
        # What is still buffered goes now, where a reader that left (`ris status | head -1`)
        # is caught below, not at the interpreter's exit with a traceback.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python's recipe (the signal module's docs, "Note on SIGPIPE"): point stdout at
        # devnull so the exit's own flush finds no pipe either. SIGPIPE is not set to SIG_DFL:
        # the server needs it ignored (a client's closed socket is an error, not a kill).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except _OutputLost as e:
        # `ris config > file` on a full disk: said in a line, not a traceback; the exit's own
        # flush then finds nothing left to write.
        print(f"ris: the output could not be written: {e.strerror}", file=sys.stderr)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except ConfigError as e:
        print(f"ris: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C in `ris pull` (or any command but serve, which stops on it itself) printed a
        # traceback from deep in a download: a line, and the shell's status for SIGINT.
        print("\nris: interrupted", file=sys.stderr)
        return 130
