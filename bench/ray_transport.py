"""The floor under the Ray path's added latency (issue 25's goal: <= 2 ms per task): what one
message costs to reach an actor and come back, on Ray's own transport as RIS's Ray worker uses
it, beside a local worker's pipe and a plain TCP connection to the same actor.

  ray stream      the message in by an actor call (`put.remote`, one ordered concurrency
                  group), back by the actor's one long streaming call (a Ray generator, one
                  yield per batch), awaited from an asyncio loop as the engine does
  ray stream+usage  the same, each yield also reading the process's memory and CPU with psutil
                  (what RIS's LaneActor.stream reports with every batch)
  ray stream, get the same, each yield's value taken with a non-blocking ray.get once
                  __anext__ has it in this process, instead of a second await
  ray stream, get, no task events  the same, both methods declared with
                  `enable_task_events=False`
  ray stream, thread  the same stream read by a thread of its own (blocking next() and
                  ray.get), each batch handed to the loop by call_soon_threadsafe
  ray task stream one streaming call per message (issue 25's "one streaming call per task"):
                  the message in as the call's argument, its output and its end as two yields
  ray task stream, 1 yield  the same with output and end in one yield
  ray call        one plain actor call per message, its return value the answer: Ray's
                  cheapest round trip, for reference (it cannot stream a task's outputs)
  tcp to actor    the same actor, the message in and back over a TCP connection it listens on
  local pipe      a child process echoing over a multiprocessing pipe (a local worker's channel)

Each round measures every transport `--n` times (the first 20 warm up), in a rotating order;
median and range of the rounds' p50s. Ray runs on this machine only (one node, `--num-cpus`).

    python bench/ray_transport.py [--rounds 3] [--n 300] [--num-cpus 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import pickle
import platform
import queue
import socket
import statistics
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import ray

WARM = 20


class _Echo:
    """An actor that answers every message twice (a task's output, then its end), through an
    outbox drained by one long streaming call, as ris.runtime.workers.ray.LaneActor does."""

    def __init__(self, usage: bool) -> None:
        self._in: queue.Queue[Any] = queue.Queue()
        self._cond = threading.Condition()
        self._out: list[Any] = []
        self._usage = usage
        self._proc = psutil.Process()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            msg = self._in.get()
            for answer in (("output", msg), ("done", msg)):
                with self._cond:
                    self._out.append(answer)
                    self._cond.notify_all()

    def _drain(self) -> list[Any]:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._out), 2.0)
            out, self._out = self._out, []
            return out

    @ray.method(concurrency_group="inbox")
    def put(self, msg: Any) -> None:
        self._in.put(msg)

    @ray.method(concurrency_group="outbox", _generator_backpressure_num_objects=8)
    def stream(self) -> Iterator[tuple[list[Any], Any]]:
        while True:
            batch = self._drain()
            usage = None
            if self._usage:
                p = self._proc
                usage = (p.memory_info().rss, p.cpu_percent(None), p.cpu_times())
            yield batch, usage

    @ray.method(concurrency_group="inbox")
    def echo(self, msg: Any) -> Any:
        return msg

    @ray.method(concurrency_group="tasks", num_returns="streaming")
    def run(self, msg: Any) -> Iterator[list[Any]]:
        """One streaming call per message: its output, then its end, each a yield."""
        yield [("output", msg)]
        yield [("done", msg)]

    @ray.method(concurrency_group="tasks", num_returns="streaming")
    def run_one(self, msg: Any) -> Iterator[list[Any]]:
        yield [("output", msg), ("done", msg)]

    @ray.method(concurrency_group="inbox")
    def listen(self) -> tuple[str, int]:
        """A TCP side channel: messages in and answers out, length-prefixed pickles."""
        server = socket.create_server(("0.0.0.0", 0))

        def serve() -> None:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            stream = conn.makefile("rb")

            def reader() -> None:
                while head := stream.read(4):
                    self._in.put(pickle.loads(stream.read(struct.unpack("!I", head)[0])))

            threading.Thread(target=reader, daemon=True).start()
            while True:
                data = pickle.dumps(self._drain())
                conn.sendall(struct.pack("!I", len(data)) + data)

        threading.Thread(target=serve, daemon=True).start()
        node_ip: Any = ray.util.get_node_ip_address  # unannotated in Ray
        return node_ip(), server.getsockname()[1]


class _QuietEcho(_Echo):
    """The same, its two methods declared without Ray's task events (no record of each call
    for the dashboard and the state API)."""

    @ray.method(concurrency_group="inbox", enable_task_events=False)
    def put(self, msg: Any) -> None:
        self._in.put(msg)

    @ray.method(concurrency_group="outbox", _generator_backpressure_num_objects=8, enable_task_events=False)
    def stream(self) -> Iterator[tuple[list[Any], Any]]:
        yield from super().stream()


_remote: Any = ray.remote  # its overloads do not name concurrency_groups
_GROUPS = {"inbox": 1, "outbox": 1, "tasks": 4}
Echo = _remote(max_restarts=0, concurrency_groups=_GROUPS)(_Echo)
QuietEcho = _remote(max_restarts=0, concurrency_groups=_GROUPS)(_QuietEcho)


async def _timed(n: int, one: Callable[[int], Awaitable[None]]) -> float:
    lat = []
    for i in range(n + WARM):
        t = time.perf_counter()
        await one(i)
        if i >= WARM:
            lat.append(time.perf_counter() - t)
    return statistics.median(lat)


def ray_stream(actor: Any, get: bool = False) -> Callable[[int], Awaitable[None]]:
    """`get`: each yield's value by a non-blocking ray.get (__anext__ returns once the value is
    in this process) instead of a second await."""
    stream = actor.stream.remote()

    async def one(i: int) -> None:
        actor.put.remote(i)
        got = 0
        while got < 2:
            ref = await stream.__anext__()
            batch, _ = ray.get(ref, timeout=0) if get else await ref
            got += sum(1 for _, n in batch if n == i)

    return one


def ray_stream_thread(actor: Any, loop: asyncio.AbstractEventLoop) -> Callable[[int], Awaitable[None]]:
    stream = actor.stream.remote()
    arrived: asyncio.Queue[Any] = asyncio.Queue()

    def reader() -> None:
        for ref in stream:
            batch, _ = ray.get(ref)
            loop.call_soon_threadsafe(arrived.put_nowait, batch)

    threading.Thread(target=reader, daemon=True).start()

    async def one(i: int) -> None:
        actor.put.remote(i)
        got = 0
        while got < 2:
            got += sum(1 for _, n in await arrived.get() if n == i)

    return one


def ray_task_stream(actor: Any, one_yield: bool = False) -> Callable[[int], Awaitable[None]]:
    async def one(i: int) -> None:
        gen = (actor.run_one if one_yield else actor.run).remote(i)
        got = 0
        async for ref in gen:
            got += sum(1 for _, n in ray.get(ref, timeout=0) if n == i)
        assert got == 2

    return one


def ray_call(actor: Any) -> Callable[[int], Awaitable[None]]:
    async def one(i: int) -> None:
        await actor.echo.remote(i)

    return one


async def tcp(actor: Any) -> Callable[[int], Awaitable[None]]:
    host, port = await actor.listen.remote()
    reader, writer = await asyncio.open_connection(host, port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def one(i: int) -> None:
        data = pickle.dumps(i)
        writer.write(struct.pack("!I", len(data)) + data)
        got = 0
        while got < 2:
            head = await reader.readexactly(4)
            batch = pickle.loads(await reader.readexactly(struct.unpack("!I", head)[0]))
            got += sum(1 for _, n in batch if n == i)

    return one


def _pipe_child(conn: Any) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:  # the benchmark ended
            return
        conn.send([("output", msg)])
        conn.send([("done", msg)])


def local_pipe(loop: asyncio.AbstractEventLoop) -> Callable[[int], Awaitable[None]]:
    """A child process on a pipe, read by the event loop when readable (as ProcessWorker)."""
    parent, child = mp.get_context("spawn").Pipe()
    mp.get_context("spawn").Process(target=_pipe_child, args=(child,), daemon=True).start()
    arrived: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(parent.fileno(), lambda: arrived.put_nowait(parent.recv()))

    async def one(i: int) -> None:
        parent.send(i)
        got = 0
        while got < 2:
            got += sum(1 for _, n in await arrived.get() if n == i)

    return one


async def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # Held for the whole run: an actor whose last handle goes is ended by Ray.
    actors = [Echo.remote(usage) for usage in (False, True, False, False, False, False, False, False)]
    actors.append(QuietEcho.remote(False))
    transports = {
        "ray stream": ray_stream(actors[0]),
        "ray stream+usage": ray_stream(actors[1]),
        "ray stream, get": ray_stream(actors[2], get=True),
        "ray stream, get, no task events": ray_stream(actors[8], get=True),
        "ray stream, thread": ray_stream_thread(actors[3], loop),
        "ray call": ray_call(actors[4]),
        "ray task stream": ray_task_stream(actors[6]),
        "ray task stream, 1 yield": ray_task_stream(actors[7], one_yield=True),
        "tcp to actor": await tcp(actors[5]),
        "local pipe": local_pipe(loop),
    }
    names = list(transports)
    p50: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(args.rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            p50[name].append(await _timed(args.n, transports[name]))
        print(f"round {rnd + 1}: " + ", ".join(f"{n} {p50[n][-1] * 1e3:.2f} ms" for n in names), flush=True)
    return {
        name: {
            "p50_ms_median": round(statistics.median(v) * 1e3, 3),
            "p50_ms_min": round(min(v) * 1e3, 3),
            "p50_ms_max": round(max(v) * 1e3, 3),
            "p50_ms_rounds": [round(x * 1e3, 3) for x in v],
        }
        for name, v in p50.items()
    }


def _machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.machine())
    return f"{os.cpu_count()} cores, {cpu}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=300, help="round trips per transport per round")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", default="bench/results/ray_transport.json")
    args = p.parse_args()
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        figures = asyncio.run(run(args))
        result = {
            "benchmark": "ray_transport",
            "machine": _machine(),
            "load_average": round(os.getloadavg()[0], 2),
            "ray": ray.__version__,
            "args": vars(args),
            "round_trip_p50": figures,
        }
        # Written before Ray shuts down: the thread variant's reader may be inside Ray then.
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    finally:
        ray.shutdown()
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
