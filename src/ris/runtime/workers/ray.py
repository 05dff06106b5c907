"""A lane's worker as a Ray actor, on a node that advertises the lane's resource.

The actor runs the same serving loop as a local worker process (worker_main) in a thread. Ray
places it, starts it, says when it died (killed, or its node lost) and carries its usage; the
messages (tasks in; tokens, audio, progress, results, heartbeats out) take one of two ways:

* the direct link (cluster.link "direct", the default): the actor listens on its node's
  address, its stream's first yield says where, and the server connects, proving a key it made
  and handed to the actor through Ray (link.py). One TCP connection both ways, served by the
  event loop as a local worker's pipes are: 0.12 ms per round trip against Ray's 1.3-1.4 on
  this project's 2-core machine (bench/ray_transport.py), the difference between the Ray
  path's added latency per task and its 2 ms goal. Ordered by TCP; the actor closes its end
  when its worker returns, and the server reads every message before that end. Where the
  server cannot reach the node (a firewall, Ray Client from outside the cluster), it says so
  in the log and the actor's messages take the second way (for LINK_UNREACHABLE_S so do those
  of the next actors on that node, without the wait for the connection).
* through Ray (cluster.link "ray"): two actor methods, each in a concurrency group of one
  thread of its own:
    put(msg)    a RunTask, CancelTask or Shutdown. One thread and one submitter: Ray runs the
                calls in the order they were sent, so a cancel never overtakes its task.
    stream()    one streaming call (a Ray generator) for the actor's life: it yields every
                message the worker has written since the last yield, as soon as there is one,
                in order.
  A message reaches the engine one report of Ray's after the worker wrote it. Ray holds at most
  BACKLOG unread yields; beyond that the worker's messages wait in the actor and leave
  together, and past OUTBOX_LIMIT of them the worker waits too, as a local worker does on a
  full pipe.

The stream runs either way: with a link it carries no messages, only the usage, the lane's
activity and the end, every LINK_REPORT_S. Results are values inside the messages (image bytes,
audio samples), never paths: the nodes share no disk. The engine's pure supervisor sees this
worker as it sees a process: heartbeats, `alive()` false once Ray says the actor died or its
link ended, and a restart that creates a new actor. Joining the cluster and placing lanes
together is in ray_cluster.py.

Activity: lanes placed together share a board in their node's memory, out of the server's
reach, so every yield also reports the lane's activity there; the pool keeps the latest
report of each lane on a board of its own (`RayWorkers.activity`), half a round trip behind
the node's (heartbeats bound it to about half a second; with a link, LINK_REPORT_S).

Imported only when the Ray kind is chosen: it imports ray at module level.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import connection
from typing import Any, TypeVar

import psutil

from ris.runtime.workers import ray_driver  # noqa: F401 - before ray (its docstring says why)

# isort: split
import ray

from ris import messages as m
from ris.config.schema import Config
from ris.preemption.board import ActivityBoard
from ris.preemption.policy import Activity
from ris.runtime.binding import renice_process
from ris.runtime.cpu_share import remove_stale
from ris.runtime.worker_main import worker_main
from ris.runtime.workers.base import ResourceUsage, WorkerSpec, cpu_seconds
from ris.runtime.workers.link import (
    LinkListener,
    LoopLink,
    NodeUnreachable,
    SocketOut,
    connect_link,
    end_link,
)
from ris.runtime.workers.ray_cluster import (
    INLINE_OBJECTS,
    Placements,
    check_cluster,
    connect,
    head_address,
    head_answers,
    restore_signal_handlers,
    signal_handlers,
)
from ris.runtime.workers.ray_placement import demand, format_resources, threads_in_cluster

log = logging.getLogger("ris.worker")
T = TypeVar("T")

# A stream with nothing to say yields this often anyway, with the worker's usage (heartbeats,
# every 0.5 s, make most yields sooner).
QUIET_YIELD_S = 2.0
# Yields Ray holds for the server before the actor's next yield waits: beyond them a slow reader
# gets the messages written meanwhile together, in one yield.
BACKLOG = 8
# Messages the worker may write ahead of the stream's next yield (one yield takes them all):
# each sequence's token is one, so a second of one stream at 256 tokens/s, or 8 tokens each
# of 32 sequences; audio chunks and image results are one message each.
OUTBOX_LIMIT = 256
# After the stream has yielded a worker's last messages, how long the worker still waits before
# it exits on purpose: the yield hands the batch to Ray, whose report to the server is sent
# asynchronously.
FLUSH_GRACE_S = 0.25
# A yield reports the worker's memory and CPU read at most this long before: as often as the
# engine's memory watchdog looks at a local worker.
USAGE_EVERY_S = 0.25
# An actor whose node has room yields within a few seconds (its process starts, it has not
# loaded a model yet); one silent this long waits for Ray to find it room.
PENDING_AFTER_S = 20.0
# For how long after a rejoin a pending worker is said to wait for its node to join again.
REJOIN_GRACE_S = 120.0
# The head is probed this often; this many failed probes in a row and it is lost. A lost head
# is probed more often: every second of its return counts toward the lanes' (goal: 30 s).
HEAD_PROBE_S = 2.0
HEAD_LOST_AFTER = 3
LOST_HEAD_PROBE_S = 0.5
# How long shutting down waits for the placement groups to be freed.
CLOSE_WAIT_S = 15.0
# The direct link (cluster.link "direct"): how long the server tries to connect to an actor's
# listener before its messages go through Ray instead; how long the actor listens (the server
# connects as soon as the first yield says where; past this, it no longer will); how often the
# listening thread looks whether the server gave up; how often a linked actor's stream still
# yields its usage and activity (no messages come that way).
LINK_CONNECT_S = 5.0
LINK_WAIT_S = 60.0
LINK_POLL_S = 0.2
LINK_REPORT_S = 0.5
# How long a linked actor whose worker returned waits for the server to close its end.
LINK_END_S = 2.0
# A node whose address the server could not reach (a firewall that drops the connection: each
# try waits LINK_CONNECT_S, at every start and restart of every actor there): the actors
# started on it this long after go through Ray without trying. Then a try again, in case the
# firewall was opened meanwhile.
LINK_UNREACHABLE_S = 600.0


@dataclass(frozen=True)
class _Batch:
    """What one yield of stream() brings."""

    messages: list[object]
    # The worker's serving loop returned (Shutdown, or a failed start): nothing more will come.
    ended: bool
    pid: int
    rss_bytes: int
    cpu_percent: float
    cpu_seconds: float
    node_id: str
    node_ip: str
    # The lane's activity on the worker's board when the batch left (Activity's value).
    activity: int = 0
    # Where the actor listens for the server's direct link (the first batch only; None: the
    # messages come in the batches).
    link: tuple[str, int] | None = None


class _Inbox:
    """The worker's inbox (worker_main.ChannelIn): what put() delivers, in the order Ray runs
    the calls, which is the order they were sent."""

    def __init__(self) -> None:
        self._queue: queue.Queue[object] = queue.Queue()

    def put(self, msg: object) -> None:
        self._queue.put(msg)

    def recv(self) -> object:
        return self._queue.get()


class _Outbox:
    """What the worker sends (worker_main.ChannelOut), held until the stream's next yield.
    Bounded as a local worker's pipe is: past `limit` unread messages (a server that stopped
    reading, Ray holding BACKLOG yields already) the worker's next send waits, and so does its
    work, rather than its tokens, audio and images piling up in the actor's memory."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self._cond = threading.Condition()
        self._pending: list[object] = []
        self._limit = limit
        self.ended = False
        self._sent = 0  # messages sent, ever
        self._taken = 0  # of those, taken by the stream
        self._asking = False  # the stream waits in drain() for its next batch

    def send(self, msg: object) -> None:
        with self._cond:
            self._cond.wait_for(lambda: len(self._pending) < self._limit)
            self._pending.append(msg)
            self._sent += 1
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until the stream has taken every message sent so far and
        come back for more, so the batch that carried them was yielded to Ray; then a moment
        more for Ray to report it to the server. The worker calls this before it exits on
        purpose (os._exit would otherwise drop the failures it just sent). False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            sent = self._sent
            left = self._cond.wait_for(lambda: self._taken >= sent and self._asking, timeout)
        if left:
            time.sleep(max(0.0, min(FLUSH_GRACE_S, deadline - time.monotonic())))
        return left

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def drain(self, timeout: float) -> tuple[list[object], bool]:
        """Everything written since the last drain, once there is something (or the worker
        ended, or `timeout` passed), and whether the worker ended."""
        with self._cond:
            self._asking = True
            self._cond.notify_all()  # a flush waiting for the stream to come back
            self._cond.wait_for(lambda: bool(self._pending) or self.ended, timeout)
            self._asking = False
            out, self._pending = self._pending, []
            self._taken += len(out)
            self._cond.notify_all()  # a send waiting for room
            return out, self.ended


class LaneActor:
    """The body of the Ray actor (wrapped by ray.remote when the first worker starts)."""

    def __init__(
        self,
        spec: WorkerSpec,
        board_name: str | None,
        board_lanes: tuple[str, ...],
        link_key: bytes | None = None,
    ) -> None:
        gpus = ray.get_gpu_ids()
        if spec.memory_share is not None:
            # A defaulted ceiling is a share of this node's memory, not of the RIS machine's.
            limit = int(psutil.virtual_memory().total * spec.memory_share)
            spec = dataclasses.replace(
                spec, binding=dataclasses.replace(spec.binding, memory_limit_bytes=limit)
            )
        if spec.binding.gpu is not None and gpus:
            # The GPU Ray gave us, whatever index the config named (it names the device kind).
            spec = dataclasses.replace(spec, binding=dataclasses.replace(spec.binding, gpu=int(gpus[0])))
        board = (
            ActivityBoard.attach(board_lanes, board_name)
            if board_name
            # Not placed with its partners (its policy is 'none'): a board of its own, where
            # they stay idle, for the Yielder's reads.
            else ActivityBoard((spec.lane, *spec.yield_to), array=bytearray(1 + len(spec.yield_to)))
        )
        if spec.lane in board.lanes:
            # Also done when the predecessor was killed; here in case that did not reach the node.
            board.writer(spec.lane)(Activity.IDLE)
        self._lane = spec.lane
        self._board = board
        self._inbox = _Inbox()
        self._outbox = _Outbox()
        self._proc = psutil.Process()
        self._usage_at: float | None = None
        self._last_usage = (0, 0.0, 0.0)
        ctx = ray.get_runtime_context()
        self._node_id = ctx.get_node_id()
        node_ip: Any = ray.util.get_node_ip_address  # unannotated in Ray
        self._node_ip = node_ip()
        self._listener = _listen(self._node_ip, link_key, spec.lane) if link_key is not None else None
        self._declined = threading.Event()  # the server could not reach the listener
        self._linked = False
        self._first = True  # the first yield goes at once: it says where the listener is
        threading.Thread(target=self._serve, args=(spec, board), name="ris-serve", daemon=True).start()

    def _serve(self, spec: WorkerSpec, board: ActivityBoard) -> None:
        conn = None
        try:
            _nice_as_a_local_worker(spec.lane)
            if spec.min_cpu_share is not None:
                # Its share's cgroup lasts as long as this actor: named after it, not after the
                # raylet (its parent, which outlives every actor); those of actors gone before
                # it on this node are removed here, as the server removes a killed server's.
                remove_stale()
            conn = self._await_link()
            if conn is not None:
                self._linked = True
                worker_main(spec, conn, SocketOut(conn), board, share_owner=os.getpid())
            else:
                worker_main(spec, self._inbox, self._outbox, board, share_owner=os.getpid())
        finally:
            if self._listener is not None:
                self._listener.close()  # also when the start failed before it was listened on
            if conn is not None:
                end_link(conn, LINK_END_S)  # the server reads every message, then the end
                conn.close()
            self._outbox.end()

    def _await_link(self) -> connection.Connection | None:
        """The server's direct link, or None where there is none: not asked for, the server
        said it cannot reach us (decline_link), or nobody came within LINK_WAIT_S."""
        listener = self._listener
        if listener is None:
            return None
        deadline = time.monotonic() + LINK_WAIT_S
        try:
            while not self._declined.is_set() and time.monotonic() < deadline:
                conn = listener.accept(LINK_POLL_S)
                if conn is not None:
                    return conn
            log.warning("the %s worker's messages go through Ray: the server did not link", self._lane)
            return None
        finally:
            listener.close()

    def _usage(self) -> tuple[int, float, float]:
        """The process's resident memory, CPU percent and CPU seconds, read at most every
        USAGE_EVERY_S: a read costs about a third of a millisecond of the yield carrying it,
        a token's yield included (bench/ray_transport.py)."""
        now = time.monotonic()
        if self._usage_at is None or now - self._usage_at >= USAGE_EVERY_S:
            p = self._proc
            rss, percent = int(p.memory_info().rss), float(p.cpu_percent(None))
            self._last_usage = (rss, percent, cpu_seconds(p.cpu_times()))
            self._usage_at = now
        return self._last_usage

    @ray.method(concurrency_group="inbox")
    def put(self, msg: object) -> None:
        self._inbox.put(msg)

    @ray.method(concurrency_group="inbox")
    def decline_link(self) -> None:
        """The server cannot reach the listener: the messages go through put() and stream()."""
        self._declined.set()

    @ray.method(concurrency_group="outbox", _generator_backpressure_num_objects=BACKLOG)
    def stream(self) -> Iterator[_Batch]:
        while True:
            if self._first:
                wait_s = 0.0
            elif self._linked:
                wait_s = LINK_REPORT_S  # no messages come this way: the usage and activity do
            else:
                wait_s = QUIET_YIELD_S
            messages, ended = self._outbox.drain(wait_s)
            link = self._listener.address if self._first and self._listener is not None else None
            self._first = False
            yield _Batch(
                messages,
                ended,
                os.getpid(),
                *self._usage(),
                self._node_id,
                self._node_ip,
                int(self._board.get(self._lane)),
                link,
            )
            if ended:
                return


def _listen(host: str, key: bytes, lane: str) -> LinkListener | None:
    """The direct link's listener, or None where the node's address cannot be bound (a node
    started with an address of its NAT or its container host): the messages go through Ray."""
    try:
        return LinkListener(host, key)
    except OSError as e:
        log.warning("the %s worker cannot listen on %s (%s): its messages go through Ray", lane, host, e)
        return None


def _ray_tls() -> bool:
    """Whether Ray's own traffic is encrypted (RAY_USE_TLS): the direct link is not, so such a
    cluster keeps its messages on Ray's calls."""
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _nice_as_a_local_worker(lane: str) -> None:
    """Every thread of the actor to nice 0, where a local worker starts (its server's level),
    before the binding sets the lane's own. Ray starts its worker processes at nice 15
    (`RAY_worker_niceness`): left there, a real-time lane lost its cores to any nice-0 process
    on the node (15 weighs 36 against 1024), and the image lane's minimum-share group (114)
    outweighed the lanes it should yield to. Lowering a nice level takes a privilege
    (root, CAP_SYS_NICE or RLIMIT_NICE); without it the level stays, with a warning naming
    the node setting that avoids it."""
    if os.getpriority(os.PRIO_PROCESS, 0) <= 0:
        return
    try:
        renice_process(0)
    except PermissionError:
        log.warning(
            "the %s worker runs at nice %d, Ray's level for its workers: lowering it needs "
            "CAP_SYS_NICE; start the node with RAY_worker_niceness=0 (docs/CLUSTER.md)",
            lane,
            os.getpriority(os.PRIO_PROCESS, 0),
        )


# A thread for put and one for stream (the serving loop has its own): one thread per group
# keeps each group's calls in the order they were sent (tested on a real cluster). No
# max_concurrency: above 1, Ray runs an actor's calls out of order, these groups' included.
ACTOR_OPTIONS: dict[str, Any] = {"max_restarts": 0, "concurrency_groups": {"inbox": 1, "outbox": 1}}
_remote_actor: Any = None


def _actor_class() -> Any:
    global _remote_actor
    if _remote_actor is None:
        remote: Any = ray.remote  # its overloads do not list the actor options
        _remote_actor = remote(**ACTOR_OPTIONS)(LaneActor)
    return _remote_actor


class RayWorkers:
    """The Ray kind's pool (WorkerPool): joins the cluster, refuses what it cannot host, reserves
    a placement group for each set of lanes placed together, and keeps what the actors last
    reported of their lanes' activity."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        check_cluster(config)
        self.config = config
        self.loop = loop
        self._placements = Placements(config)
        # Every actor has its own lane on its board (shared or its own), so every lane a slot.
        lanes = list(config.lanes)
        self.board = ActivityBoard(lanes, array=bytearray(max(1, len(lanes))))
        self._workers: list[RayWorker] = []
        self.direct_link = config.cluster.link == "direct" and not _ray_tls()
        # Node address -> when a link to it last failed unreachable (monotonic): LINK_UNREACHABLE_S.
        self.unreachable: dict[str, float] = {}
        if config.cluster.link == "direct" and not self.direct_link:
            log.warning(
                "RAY_USE_TLS is set: the actors' messages go through Ray (the direct link is not encrypted)"
            )
        # Set while the head does not answer: what the lanes wait for, said in /ready and 503s.
        self.head_lost: str | None = None
        # When it last joined the head again (monotonic): a worker pending soon after waits for
        # its node to join the new head (nodes restart when theirs is lost), not for a lost node.
        self.rejoined_at: float | None = None
        head = head_address(config)
        self._watch: concurrent.futures.Future[None] | None = None
        if head is not None:  # "auto" or ray://: Ray's own retries are all there is
            self._watch = asyncio.run_coroutine_threadsafe(self._watch_head(*head), loop)

    def __call__(self, spec: WorkerSpec, deliver: Callable[[object], None]) -> RayWorker:
        lane = spec.lane
        need = demand(self.config, lane)
        spec = dataclasses.replace(
            spec, binding=dataclasses.replace(spec.binding, threads=threads_in_cluster(self.config, lane))
        )
        # What the worker yields travels inside Ray's calls, never through its node's object
        # store (ray_cluster.INLINE_OBJECTS says why), within the limits this driver runs with
        # (an operator's own values included).
        inline = {name: os.environ.get(name, value) for name, value in INLINE_OBJECTS.items()}
        env = {**inline, **spec.binding.environment()}
        if spec.binding.gpu is not None:
            del env["CUDA_VISIBLE_DEVICES"]  # Ray sets it to the GPU it assigns
        options: dict[str, Any] = {
            "num_cpus": need.num_cpus,
            "num_gpus": need.num_gpus,
            "resources": dict(need.resources),
            # From the process's first instruction: Ray would set OMP_NUM_THREADS=1 otherwise.
            "runtime_env": {"env_vars": env},
        }
        if self.config.lane(lane).replicas > 1:
            # Replicas on different nodes where there are several (a node lost takes one);
            # SPREAD still honours the demand (no node without the lane's resource). A lane
            # placed with partners runs in their placement group instead (start()).
            options["scheduling_strategy"] = "SPREAD"
        worker = RayWorker(spec, deliver, self.loop, options, self)
        self._workers.append(worker)
        return worker

    # ----- the head ------------------------------------------------------------------------

    async def _watch_head(self, host: str, port: int) -> None:
        """Losing the head must not stop the HTTP server: its lanes are lost and wait, requests
        are refused with what they wait for, and the pool joins the head again when it answers
        (a new session: placement groups and actors are made anew)."""
        failures = 0
        while True:
            await asyncio.sleep(HEAD_PROBE_S if self.head_lost is None else LOST_HEAD_PROBE_S)
            answers = await asyncio.wrap_future(off_loop(head_answers, host, port))
            failures = 0 if answers else failures + 1
            if self.head_lost is None and failures >= HEAD_LOST_AFTER:
                self._lose_head(host, port)
            elif self.head_lost is not None and answers:
                handlers = signal_handlers()
                try:
                    await asyncio.wrap_future(off_loop(self._rejoin))
                except Exception as e:  # noqa: BLE001 - not all back yet: the next probe retries
                    log.warning("the Ray head answers again but joining it failed (%s); retrying", e)
                    continue
                finally:
                    # Here, on the main thread (the loop's): what Ray's new driver replaced.
                    restore_signal_handlers(handlers)
                log.warning("joined the Ray head at %s:%d again; the lanes start anew", host, port)
                self.head_lost = None
                self.rejoined_at = time.monotonic()
                for worker in self._workers:
                    try:
                        worker.head_back()
                    except Exception:  # noqa: BLE001 - that lane's supervisor restarts it; the rest go on
                        log.exception(
                            "%s: its actor did not start after the head came back", worker.spec.lane
                        )

    def _lose_head(self, host: str, port: int) -> None:
        since = time.strftime("%H:%M:%S")
        self.head_lost = (
            f"the Ray head at {host}:{port} stopped answering at {since}; the lane serves again "
            "when it answers and its nodes have joined it"
        )
        log.error("%s", self.head_lost)
        for worker in self._workers:
            worker.head_lost()

    def _rejoin(self) -> None:
        """On the head thread: a new driver session, and the placement groups made anew (the
        old ones went with the head's state)."""
        ray.shutdown()
        connect(self.config)
        self._placements = Placements(self.config, wait=False)

    def placed(self, lane: str) -> tuple[str | None, tuple[str, ...], Any]:
        """The board name and lanes a lane's actor shares on its node, and its scheduling
        strategy (None: Ray's default), from the current placement groups."""
        placed = self._placements.get(lane)
        if placed is None:
            return None, (), None
        return placed.board, placed.board_lanes, placed.strategy()

    def activity(self, lane: str) -> Activity | None:
        return self.board.get(lane) if lane in self.board.lanes else None

    def reported(self, lane: str, activity: int) -> None:
        """A yield of the stream brought the lane's activity on its node."""
        self.board.set(lane, Activity(activity))

    def link_unreachable(self, host: str) -> bool:
        """A link to `host` failed unreachable less than LINK_UNREACHABLE_S ago: don't try."""
        failed = self.unreachable.get(host)
        if failed is not None and time.monotonic() - failed >= LINK_UNREACHABLE_S:
            del self.unreachable[host]
            failed = None
        return failed is not None

    def killed(self, lane: str, actor: Any) -> None:
        """The kill rule (base.py): the lane reads idle here and on its node's board; the actor
        (if any) is killed by Ray, off the loop."""
        self.board.set(lane, Activity.IDLE)
        if self.head_lost is None:  # else the actors and the node's board went with the head
            off_loop(_kill, lane, actor, self._placements)

    def just_rejoined(self) -> bool:
        """Whether the head came back within REJOIN_GRACE_S (its nodes may not have joined it)."""
        return self.rejoined_at is not None and time.monotonic() - self.rejoined_at < REJOIN_GRACE_S

    async def available(self) -> dict[str, float]:
        """What is free in the cluster now ({} when the head does not say)."""
        try:
            free: dict[str, float] = await asyncio.wrap_future(off_loop(ray.available_resources))
        except Exception:  # noqa: BLE001 - the head is gone too: nothing to say
            return {}
        return free

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.head_lost is None:  # else the groups and boards went with the head
            # Bounded: a head lost in the seconds before its loss is seen must not hold the
            # server's exit (the groups go with the driver anyway, the boards at the next start).
            done = off_loop(self._placements.close)
            try:
                done.result(timeout=CLOSE_WAIT_S)
            except Exception as e:  # noqa: BLE001 - timed out or failed: said, not waited for
                log.warning("Ray placement groups not freed at shutdown: %s", e or "timed out")


async def _value(ref: Any) -> Any:
    """A yield's value. __anext__ returns once an inlined yield (INLINE_OBJECTS: all of them
    up to 128 MiB, unless the operator set a lower limit) is in this process, so a
    non-blocking get takes it at once, where awaiting the ref costs another hand-over from
    Ray's thread to the loop: 1.60 against 1.88 ms per round trip (bench/ray_transport.py).
    Awaited if it is not there after all; a failed task raises here as `await` would."""
    try:
        return ray.get(ref, timeout=0)
    except ray.exceptions.GetTimeoutError:
        return await ref


def off_loop(fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
    """Run a call that may wait for the Ray head on a daemon thread of its own: never on the
    event loop, and never one the interpreter joins at exit (a pool's threads are joined, and
    while the head is away such a call waits as long as the driver's reconnect timeout)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return  # cancelled before it started
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(e)

    threading.Thread(target=run, name=f"ris-ray-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return future


def _close_made(connecting: concurrent.futures.Future[connection.Connection]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().close()


def _kill(lane: str, actor: Any, placements: Placements) -> None:
    if actor is not None:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone with its node: nothing to kill
            log.debug("%s actor already gone", lane)
    placements.set_idle(lane)


class RayWorker:
    """One lane worker as a Ray actor (the LaneWorker protocol)."""

    def __init__(
        self,
        spec: WorkerSpec,
        deliver: Callable[[object], None],
        loop: asyncio.AbstractEventLoop,
        options: dict[str, Any],
        pool: RayWorkers,
    ) -> None:
        self.spec = spec
        self._deliver = deliver
        self._loop = loop
        self._options = options
        self._pool = pool
        self._parked = False  # started while the head is lost: the actor is made when it returns
        self._actor: Any = None
        self._dead = False
        self._ended = False
        self._generation = 0
        self._pump: asyncio.Task[None] | None = None
        self._placement: asyncio.Task[None] | None = None
        self._last: _Batch | None = None
        self._waiting: str | None = None  # what Ray has not found for the actor yet
        # The direct link: the key the actor was made with while it is being linked (sends
        # wait in _early meanwhile), then the link; neither: messages go through Ray.
        self._link_key: bytes | None = None
        self._link: LoopLink | None = None
        self._early: list[object] = []
        self._gone_said = False  # WorkerGone delivered for this generation

    # ----- LaneWorker ----------------------------------------------------------------------

    def start(self) -> None:
        self._generation += 1
        self._dead = self._ended = self._gone_said = False
        self._last = None
        self._drop_link()
        if self._pool.head_lost is not None:
            self._parked, self._waiting = True, self._pool.head_lost
            return
        self._parked, self._waiting = False, None
        board_name, board_lanes, strategy = self._pool.placed(self.spec.lane)
        options = dict(self._options)
        if strategy is not None:
            # The bundle already holds the resources: the actor asks for them inside it.
            options["scheduling_strategy"] = strategy
        self._link_key = secrets.token_bytes(32) if self._pool.direct_link else None
        self._actor = (
            _actor_class().options(**options).remote(self.spec, board_name, board_lanes, self._link_key)
        )
        self._pump = self._loop.create_task(self._pump_loop(self._actor, self._generation))
        self._placement = self._loop.create_task(self._watch_placement(self._generation))

    def head_lost(self) -> None:
        """The head stopped answering: a running actor is lost (the supervisor fails its tasks
        and restarts it, which parks it until the head is back)."""
        if self._parked:
            self._waiting = self._pool.head_lost
        elif self._actor is not None:
            self._generation += 1
            for task in (self._pump, self._placement):
                if task is not None:
                    task.cancel()
            self._pump = self._placement = None
            self._actor, self._dead = None, True
            self._drop_link()

    def head_back(self) -> None:
        if self._parked:
            try:
                self.start()
            except BaseException:
                # Dead, not parked: the supervisor fails it and restarts it, with its back-off.
                self._parked, self._waiting, self._actor, self._dead = False, None, None, True
                raise

    def send(self, msg: object) -> bool:
        if self._actor is None or self._dead:
            return False
        if self._link is not None:
            return self._link.send(msg)
        if self._link_key is not None:  # being linked: sent over the link, or through Ray
            self._early.append(msg)
            return True
        self._actor.put.remote(msg)
        return True

    def _running(self) -> bool:
        return self._parked or (self._actor is not None and not self._dead and not self._ended)

    def alive(self) -> bool:
        """The supervisor's question (Engine.check), which may deliver a gone worker's last
        messages; the worker's own figures ask `_running()`."""
        if self._running():
            return True
        # Gone: what it wrote on its way out (an exit over its memory ceiling sends its tasks'
        # failures first) may still wait on the link when the supervisor looks.
        if self._link is not None:
            self._link.drain_all()
        return False

    def kill(self) -> None:
        self._generation += 1  # whatever the old actor still sends is dropped
        self._parked = False
        actor, self._actor = self._actor, None
        for task in (self._pump, self._placement):
            if task is not None:
                task.cancel()
        self._pump = self._placement = None
        self._waiting = None
        self._drop_link()
        self._pool.killed(self.spec.lane, actor)

    async def stop(self, timeout: float) -> None:
        pump = self._pump
        if self.alive() and pump is not None:
            self.send(m.Shutdown())
            await asyncio.wait([pump], timeout=timeout)
        self.kill()

    def waiting_for(self) -> str | None:
        return self._waiting

    def memory_bytes(self) -> int | None:
        return self._last.rss_bytes if self._last is not None and self._running() else None

    def usage(self) -> ResourceUsage:
        b = self._last
        if b is None:
            return ResourceUsage()
        if not self._running():
            return ResourceUsage(pid=b.pid, node=b.node_id, node_ip=b.node_ip)
        return ResourceUsage(
            pid=b.pid,
            cpu_percent=b.cpu_percent,
            cpu_seconds=b.cpu_seconds,
            rss_bytes=b.rss_bytes,
            node=b.node_id,
            node_ip=b.node_ip,
            link=self._link_kind(),
        )

    def _link_kind(self) -> str | None:
        if self._link is not None:
            return "direct"
        return None if self._link_key is not None else "ray"  # None: being linked

    # ----- placement -----------------------------------------------------------------------

    async def _watch_placement(self, generation: int) -> None:
        """Say so, with what it asks for and what is free, when Ray keeps the actor pending: the
        start check counted the nodes' totals, and a node lost since or another Ray job holding
        the resources leaves it waiting with no error of Ray's own. (Not sooner where no live
        node could host it: asking Ray which nodes live is a call to the head, and a call made
        in the seconds before a head's loss is seen waits for the head; after 60 s of waiting
        Ray ends the whole process, HTTP server and all.)"""
        await asyncio.sleep(PENDING_AFTER_S)
        if generation != self._generation or self._last is not None:
            return
        o = self._options
        need = {"CPU": o["num_cpus"], "GPU": o["num_gpus"], **o["resources"]}
        free = await self._pool.available()
        if generation != self._generation or self._last is not None:
            return
        self._waiting = (
            f"Ray has not placed the {self.spec.lane} worker after {PENDING_AFTER_S:g} s: it asks "
            f"for {format_resources({k: v for k, v in need.items() if v})}, free in the cluster now: "
            f"{format_resources(free)} ({self._why_pending()})"
        )
        log.error("%s", self._waiting)

    def _why_pending(self) -> str:
        if self._pool.just_rejoined():
            return (
                "after the head's return its nodes join it anew: a node that has not restarted "
                "and joined yet, a node lost, or other Ray jobs holding them"
            )
        return "a node lost since the start, or other Ray jobs holding them"

    # ----- the stream ----------------------------------------------------------------------

    async def _pump_loop(self, actor: Any, generation: int) -> None:
        stream = actor.stream.remote()  # an ObjectRefGenerator: one ref per yield, in order
        while generation == self._generation:
            try:
                batch: _Batch = await _value(await stream.__anext__())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any Ray error: the actor or its node is gone
                # (StopAsyncIteration too: the stream ends only after a batch saying so)
                if generation == self._generation:
                    log.error("%s worker (Ray actor) is gone: %s: %s", self.spec.lane, type(e).__name__, e)
                    if self._last is None and getattr(e, "actor_init_failed", False):
                        # It never started (RIS missing on its node, a runtime_env that failed,
                        # an error in its constructor): a failed start, with Ray's reason, as a
                        # local worker's; restarted as a crash, it would loop without a word.
                        self._deliver(
                            m.WorkerFailed("worker_start_failed", f"the Ray actor did not start: {e}")
                        )
                    self._dead = True
                    # Not replaced by the WorkerFailed above: no more work for it; the
                    # supervisor's pass follows.
                    self._worker_ended(generation)
                return
            if generation != self._generation:
                return
            if self._waiting is not None:
                log.warning("the %s worker is placed (it waited for the Ray cluster)", self.spec.lane)
                self._waiting = None
            self._last = batch
            self._pool.reported(self.spec.lane, batch.activity)
            if self._link_key is not None:  # the first batch: where the actor listens, if it does
                if batch.link is None or batch.ended:
                    self._through_ray(actor, decline=False)
                else:
                    await self._open_link(actor, batch.link, self._link_key, generation)
                    if generation != self._generation:
                        return
            for msg in batch.messages:
                try:
                    self._deliver(msg)
                except Exception:  # noqa: BLE001 - the messages after it must still be delivered
                    log.exception("%s worker: handling %s failed", self.spec.lane, type(msg).__name__)
                if generation != self._generation:
                    return  # delivering a message got this worker replaced
            if batch.ended:
                self._ended = True
                self._worker_ended(generation)
                return

    def _worker_ended(self, generation: int) -> None:
        """No more work for this worker (its stream ended or failed, or its link did): what the
        link still holds first, then WorkerGone, once."""
        if generation != self._generation or self._gone_said:
            return
        if self._link is not None:
            self._link.drain_all()
        if generation == self._generation and not self._gone_said:
            self._gone_said = True
            self._deliver(m.WorkerGone())

    # ----- the direct link ------------------------------------------------------------------

    async def _open_link(self, actor: Any, address: tuple[str, int], key: bytes, generation: int) -> None:
        """Connect to the actor's listener: from then on messages go both ways over one TCP
        connection, a tenth of a Ray round trip here (bench/ray_transport.py). Where the server
        cannot reach the node's address, they go through Ray, as with cluster.link "ray"."""
        host = address[0]
        if self._pool.link_unreachable(host):  # said when it was found unreachable
            self._through_ray(actor, decline=True)
            return
        connecting = off_loop(connect_link, address, key, LINK_CONNECT_S)
        try:
            conn = await asyncio.wrap_future(connecting)
        except asyncio.CancelledError:  # killed meanwhile: a connection made after is closed
            connecting.add_done_callback(_close_made)
            raise
        except Exception as e:  # noqa: BLE001 - refused, unreachable, timed out, a wrong peer
            if generation != self._generation:
                return
            # The node's address not reached (timed out, no route) is the node's, for a while;
            # a refusal or a reset is quick and may be this actor's own (gone before we came),
            # and a failed or timed-out key exchange a stranger's port or a slow actor.
            node = isinstance(e, NodeUnreachable)
            if node:
                self._pool.unreachable[host] = time.monotonic()
            log.warning(
                "%s worker: no direct link to its Ray actor at %s:%d (%s: %s); its messages go "
                "through Ray (slower; cluster.link in docs/CLUSTER.md)%s",
                self.spec.lane,
                *address,
                type(e).__name__,
                e,
                f", as will those of the actors started on {host} in the next "
                f"{LINK_UNREACHABLE_S / 60:g} minutes, without trying"
                if node
                else "",
            )
            self._through_ray(actor, decline=True)
            return
        if generation != self._generation:
            conn.close()
            return
        self._link = LoopLink(
            self._loop, conn, conn, self._deliver, lambda: self._link_ended(generation), self.spec.lane
        )
        early, self._early, self._link_key = self._early, [], None
        for msg in early:
            self._link.send(msg)

    def _through_ray(self, actor: Any, decline: bool) -> None:
        """No link for this actor: what waited for one goes through put(), in order (the
        actor told first to stop listening, where it listens)."""
        early, self._early, self._link_key = self._early, [], None
        if decline:
            actor.decline_link.remote()
        for msg in early:
            actor.put.remote(msg)

    def _link_ended(self, generation: int) -> None:
        """The actor closed its end (its worker returned) or died: nothing more will come."""
        if generation == self._generation:
            self._ended = True
            self._worker_ended(generation)

    def _drop_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.close()
        self._link_key, self._early = None, []


__all__ = ["LaneActor", "RayWorker", "RayWorkers"]
