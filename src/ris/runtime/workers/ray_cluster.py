"""Joining the configured Ray cluster and reserving its placement, for the Ray worker kind.

`check_cluster` refuses, at start, a config no node can host (Ray would keep such an actor
pending for ever; the pure rules are in ray_placement.py). `Placements` reserves one STRICT_PACK
placement group for each set of lanes placed together (they read one activity board, a named
block in their node's shared memory) and frees the groups and boards at the end.

Imported only when the Ray kind is chosen: it imports ray at module level.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

from ris.runtime.workers import ray_driver  # noqa: F401 - before ray (its docstring says why)

# isort: split
import ray
import ray.exceptions
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ris.config.schema import Config, ConfigError
from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity
from ris.runtime.workers.ray_placement import (
    BOARD_PREFIX,
    colocated_groups,
    demand,
    refusals,
    shortfalls,
    stale_boards,
)

log = logging.getLogger("ris.worker")

# How long the head's address may take to accept a connection.
CONNECT_TIMEOUT_S = 5.0
# Placement groups for lanes placed together must be placed within this at start.
PLACEMENT_TIMEOUT_S = 30.0


# What a gRPC server (Ray's GCS is one) answers an HTTP/2 client's first bytes with: a SETTINGS
# frame on stream 0. Anything else (an HTTP/1 server, a database, silence) is not a Ray head.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_SETTINGS_FRAME = 4


_TOKEN_FILE = os.path.expanduser("~/.ray/auth_token")
# A head's refusal of a driver's token (Ray 2.5x's token authentication; an older Ray has none).
AuthenticationError: type[Exception] = getattr(ray.exceptions, "AuthenticationError", RuntimeError)
_TOKEN_HINT = (
    " (a head that runs with token authentication, as `ray start --head` does where a token "
    f"exists, needs RAY_AUTH_MODE=token here and the same token in RAY_AUTH_TOKEN or {_TOKEN_FILE}: "
    "a missing or a different one is refused alike)"
)


def _token_refusal(address: str) -> str | None:
    """Why the head at `address` refuses this process's token (or its having none), else None.
    ray.init asks the head 20 times, a second apart, and then says only "Failed to connect" (21 s,
    the reason in a log line per try); one ask, as ray.init's first, says why in milliseconds. A
    head that does not answer within the connect timeout is left to ray.init."""
    try:
        from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
    except ImportError:  # another Ray's layout: ray.init's own answer, slower
        return None
    gcs_client: Any = getattr(ray._raylet, "GcsClient", None)  # unannotated in Ray
    if gcs_client is None:
        return None
    try:
        # RAY_AUTH_MODE=token without a token: said here, as ray.init says it (a GcsClient made
        # so aborts the whole process in Ray's C++ check).
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError as e:
        return f"this server cannot join with its Ray settings: {e}"
    except Exception:  # noqa: BLE001 - Ray's private API changed: ray.init says what it says
        return None
    said: list[str] = []

    def ask() -> None:
        try:
            gcs_client(address=address)  # the head's cluster id: a call that carries the token
        except AuthenticationError as e:
            said.append(f"the Ray head refused this server's token: {e}")
        except Exception:  # any other failure: ray.init meets it and says it
            pass

    asking = threading.Thread(target=ask, name="ris-ray-token-check", daemon=True)
    asking.start()
    asking.join(CONNECT_TIMEOUT_S)
    return said[0] if said else None


def _driver_environment() -> None:
    """Ray settings of this process's driver, read by Ray when it joins (an operator's own
    values win)."""
    # A driver whose head stops answering exits the whole process after this many seconds
    # (Ray's default: 60), taking the HTTP server with it. RIS watches the head itself
    # (RayWorkers) and joins it again when it returns, so its driver waits as long as it runs.
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(10 * 365 * 86400))
    for name, value in INLINE_OBJECTS.items():
        os.environ.setdefault(name, value)


# Objects up to this size travel inside Ray's calls instead of through the node's object store
# (Ray's default: 100 KiB, and 10 MiB of a call's arguments). A driver that reads an object from
# its node's store is ended by Ray, HTTP server and all, when that store dies: the head's, where
# the documented layout runs RIS, dies with the head (measured: a stream of 600 KB yields, head
# SIGKILLed: the driver exited with the store on 2 runs of 2, and lived on 2 of 2 inlined). So
# the task going in and every batch coming back (PNG bytes, audio) stay out of the store: the
# workers are given the same limit (RayWorkers) for what they yield. Below gRPC's cap (512 MiB).
INLINE_BYTES = 128 << 20
INLINE_OBJECTS = {
    "RAY_max_direct_call_object_size": str(INLINE_BYTES),
    "RAY_task_rpc_inlined_bytes_limit": str(INLINE_BYTES),
}


def head_address(config: Config) -> tuple[str, int] | None:
    """The head's GCS as host and port, when the address names one (not "auto" or ray://)."""
    address = config.cluster.address
    if address and ":" in address and "://" not in address:
        host, _, port = address.rpartition(":")
        try:
            return host.strip("[]"), int(port)
        except ValueError:
            return None
    return None


def head_answers(host: str, port: int) -> bool:
    """Whether the head's GCS answers now (a probe of a few bytes, no Ray call: those wait for
    the head as long as the driver's reconnect timeout)."""
    try:
        return _speaks_http2(host, port) or _tls()
    except OSError:
        return False


def _tls() -> bool:
    return os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true")


def connect(config: Config) -> None:
    """Join the configured Ray cluster (once per process)."""
    address = config.cluster.address
    head = head_address(config)
    if address and head is None and ":" in address and "://" not in address:
        raise ConfigError(f"cluster.address {address!r}: the port is not a number")
    if head is not None:
        # Ray retries an address where nothing listens, or where another service does, for
        # minutes: say so within seconds instead.
        host, port = head
        try:
            speaks_grpc = _speaks_http2(host, port)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cluster.address {address!r}: no Ray head answers there ({e}); start one with "
                f"`ray start --head --port={port}` or fix the address"
            ) from None
        if not speaks_grpc and not _tls():
            # (A head serving TLS answers a plain HTTP/2 opening with nothing useful: trusted.)
            raise ConfigError(
                f"cluster.address {address!r}: something listens there but it is not a Ray head "
                "(it does not speak gRPC, as Ray's GCS does); check the port (`ray start --head` "
                "prints the address to use)"
            )
    if ray.is_initialized():
        return
    _driver_environment()
    if head is not None and address:
        refused = _token_refusal(address)
        if refused is not None:
            raise ConfigError(f"cluster.address {address!r}: {refused}{_TOKEN_HINT}")
    handlers = signal_handlers()
    try:
        ray.init(address=address, namespace=config.cluster.namespace, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError, AuthenticationError) as e:
        raise ConfigError(
            f"cluster.address {address!r}: cannot join a Ray cluster there: {e}{_TOKEN_HINT}"
        ) from None
    finally:
        # On the main thread (the start's join); a rejoin's thread leaves it to its caller.
        restore_signal_handlers(handlers)


# The signals the server stops on (uvicorn's, and Python's own before it runs).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_handlers() -> dict[signal.Signals, Any]:
    """The Python handlers of the stop signals now (for restore_signal_handlers)."""
    return {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}


def restore_signal_handlers(handlers: dict[signal.Signals, Any]) -> bool:
    """Put back the stop signals' handlers that joining Ray replaced (False off the main thread,
    where Python sets none: the caller's main thread must). On the main thread `ray.init` sets
    its own SIGTERM handler (sys.exit(15)), which uvicorn re-raises after its graceful stop: the
    server exited with status 15, a failure to systemd, where a local one ends as SIGTERM says.
    On another thread (a rejoin after the head's loss) Ray's core worker installs its own C
    handler: SIGTERM then printed a stack dump and ended the process at once, with no graceful
    stop, its activity boards and cgroup left behind. Setting a Python handler again puts
    Python's own C handler back under it."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig, handler in handlers.items():
        if handler is not None:  # None: one set outside Python, not ours to put back
            signal.signal(sig, handler)
    return True


def _speaks_http2(host: str, port: int) -> bool:
    """Whether the service at host:port answers HTTP/2's opening as a gRPC server does."""
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as s:
        s.sendall(_HTTP2_PREFACE)
        head = b""
        try:
            while len(head) < 9:
                piece = s.recv(9 - len(head))
                if not piece:
                    return False
                head += piece
        except TimeoutError:
            return False
    return head[3] == _SETTINGS_FRAME and head[5:9] == b"\0\0\0\0"


def alive_nodes() -> list[dict[str, float]]:
    nodes: Any = ray.nodes  # unannotated in Ray
    return [dict(n["Resources"]) for n in nodes() if n.get("Alive")]


def check_cluster(config: Config) -> None:
    """Refuse, naming the missing resource, a config whose lanes no node of the cluster can host
    (Ray would keep such an actor pending for ever)."""
    connect(config)
    nodes = alive_nodes()
    problems = refusals(config, nodes)
    if problems:
        raise ConfigError(
            f"the Ray cluster at {config.cluster.address} cannot host this configuration:\n  - "
            + "\n  - ".join(problems)
        )
    for line in shortfalls(config, nodes):  # started short: they join when a node does
        log.warning("%s (it is pending until then; min_replicas says what a start needs)", line)


@dataclass(frozen=True)
class Placed:
    """Where a lane placed with partners runs: its bundle of their placement group, and the
    name and lanes of the activity board they share on that node."""

    group: PlacementGroup
    index: int
    board: str
    board_lanes: tuple[str, ...]

    def strategy(self, index: int | None = None) -> PlacementGroupSchedulingStrategy:
        """Run inside the group (in the lane's bundle unless told which)."""
        return PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=self.index if index is None else index
        )


class Placements:
    """The placement groups of the lanes placed together, reserved at once (or refused)."""

    def __init__(self, config: Config, wait: bool = True) -> None:
        """`wait` False (joining a head that came back): the groups are asked for and not
        waited for; their actors stay pending until a node takes the group, reported as any
        actor Ray has not placed (PENDING_AFTER_S), while lanes outside them serve at once.
        Waited for, a group whose node rejoined late (or not at all) held every lane down."""
        self._placed: dict[str, Placed] = {}
        self._made: list[Placed] = []  # one per group (its first lane's)
        for group in colocated_groups(config):
            pg = placement_group(
                [demand(config, lane).as_bundle() for lane in group],
                strategy="STRICT_PACK",
                name=f"ris-{'-'.join(group)}",
            )
            if wait:
                ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
                if not ready:
                    remove_placement_group(pg)
                    raise ConfigError(
                        f"lanes {' and '.join(group)} must share a node and no node of the Ray "
                        f"cluster took them together within {PLACEMENT_TIMEOUT_S:g} s: "
                        f"{[demand(config, lane).as_bundle() for lane in group]}"
                    )
            # Named by the group's placement group: a block in the node's /dev/shm that lives
            # exactly as long as the group does (boards of groups Ray removed are swept; not
            # placed yet, at a rejoin, the sweep waits for the next start).
            board = board_name(pg)
            if wait:
                _sweep_stale_boards(pg)
            for i, lane in enumerate(group):
                self._placed[lane] = Placed(pg, i, board, group)
            self._made.append(self._placed[group[0]])

    def get(self, lane: str) -> Placed | None:
        return self._placed.get(lane)

    def set_idle(self, lane: str) -> None:
        """Mark `lane` idle on the board it shares on its node (its worker was killed), by a
        task run in its bundle; not awaited: the partners read it within a poll."""
        placed = self._placed.get(lane)
        if placed is None:
            return  # a board of its own, in the killed actor's memory: gone with it
        try:
            remote: Any = ray.remote(num_cpus=0)(_set_idle)
            remote.options(scheduling_strategy=placed.strategy()).remote(
                placed.board, placed.board_lanes, lane
            )
        except Exception:  # noqa: BLE001 - the cluster is going: the successor's start resets it
            log.warning("%s: its slot on the activity board %s not reset", lane, placed.board)

    def close(self) -> None:
        """Free the placement groups, and the boards in their node's shared memory (removed by
        a task run in the group, on that node)."""
        unlink: Any = ray.remote(num_cpus=0)(_unlink_board)
        for placed in self._made:
            try:
                ray.get(
                    unlink.options(scheduling_strategy=placed.strategy(0)).remote(placed.board), timeout=10
                )
            except Exception:  # noqa: BLE001 - a node gone with its board: nothing to remove
                log.warning("activity board %s not removed from its node", placed.board)
            remove_placement_group(placed.group)
        self._made.clear()


def board_name(pg: PlacementGroup) -> str:
    return f"{BOARD_PREFIX}{pg.id.hex()}"


def _sweep_stale_boards(pg: PlacementGroup) -> None:
    """Remove, on the node that holds `pg`, the boards of placement groups Ray no longer
    keeps (Ray removes a job's groups when its driver dies; their /dev/shm blocks stay)."""
    try:
        sweep: Any = ray.remote(num_cpus=0)(_unlink_stale_boards)
        strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0)
        removed = ray.get(sweep.options(scheduling_strategy=strategy).remote(), timeout=10)
    except Exception as e:  # noqa: BLE001 - a few bytes left in /dev/shm: not worth a refusal
        log.warning("stale activity boards not swept: %s", e)
        return
    if removed:
        log.info("removed %d activity board(s) of servers gone without closing: %s", len(removed), removed)


def _unlink_stale_boards() -> list[str]:
    # The node's boards first, the live groups after: a board made in between is not listed,
    # and every board listed has its group in the table read after (another server's is kept).
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    table = ray.util.placement_group_table()
    live = {gid for gid, info in table.items() if info.get("state") != "REMOVED"}
    stale = stale_boards(names, live)
    for name in stale:
        _unlink_board(name)
    return stale


def _set_idle(name: str, lanes: tuple[str, ...], lane: str) -> None:
    try:
        board = ActivityBoard.attach(lanes, name, create=False)
    except FileNotFoundError:
        return  # removed at shutdown
    board.set(lane, Activity.IDLE)


def _unlink_board(name: str) -> None:
    from multiprocessing import shared_memory

    try:
        shm = shared_memory.SharedMemory(name)
    except FileNotFoundError:
        return
    shm.close()
    shm.unlink()


__all__ = [
    "Placed",
    "Placements",
    "alive_nodes",
    "check_cluster",
    "connect",
    "head_address",
    "head_answers",
]
