"""Which idle lanes' cores the LLM may borrow, with a fake clock and a fake board."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ris.config import ConfigError
from ris.config.load import parse_config
from ris.config.sharing import lenders, lends
from ris.machine import MachineInfo
from ris.preemption.lending import Borrower, Lender, LendingPolicy
from ris.preemption.policy import Activity
from ris.runtime.specs import worker_spec


class Board:
    def __init__(self, n: int) -> None:
        self.now = 0.0
        self.states = [Activity.IDLE] * n

    def clock(self) -> float:
        return self.now

    def read(self) -> list[int]:
        return [int(s) for s in self.states]


def borrower(board: Board, grace: float = 0.25) -> Borrower:
    policy = LendingPolicy(own=(0,), lenders=(Lender("tts", (1,)), Lender("asr", (2, 3))), idle_grace_s=grace)
    return Borrower(policy, board.read, board.clock)


def test_idle_owners_lend_their_cores_from_the_start() -> None:
    b = borrower(Board(2))
    assert b.cores() == (0, 1, 2, 3)
    assert b.borrowed(b.cores()) == (1, 2, 3)


def test_a_busy_owner_takes_its_cores_back_at_once_and_lends_again_after_the_grace() -> None:
    board = Board(2)
    b = borrower(board)
    assert b.cores() == (0, 1, 2, 3)
    board.states[0] = Activity.BUSY  # a TTS task arrived
    assert b.cores() == (0, 2, 3)
    board.now = 5.0
    assert b.cores() == (0, 2, 3)  # still busy: still its own
    board.states[0] = Activity.IDLE
    board.now = 5.1
    assert b.cores() == (0, 2, 3)  # idle, but within the grace (the next sentence may follow)
    board.now = 5.25
    assert b.cores() == (0, 1, 2, 3)


def test_a_busy_spell_seen_only_between_two_asks_still_counts_from_when_it_was_seen() -> None:
    board = Board(2)
    b = borrower(board, grace=1.0)
    board.states[1] = Activity.PREFILL
    board.now = 2.0
    assert b.cores() == (0, 1)
    board.states[1] = Activity.IDLE
    board.now = 2.5
    assert b.cores() == (0, 1)
    board.now = 3.0
    assert b.cores() == (0, 1, 2, 3)


def test_the_grace_counts_from_when_the_owner_became_idle_as_the_board_keeps_it() -> None:
    """The borrower (the LLM) idle itself looks at nothing: a sentence the TTS spoke from 10 to
    11 s went unseen, and a chat at 11.1 s took the TTS core at once, 0.1 s into its grace
    (the next sentence then took it back). The board keeps when each lane became idle."""
    board = Board(2)
    since = [0.0, 0.0]
    policy = LendingPolicy(own=(0,), lenders=(Lender("tts", (1,)), Lender("asr", (2, 3))), idle_grace_s=2.0)
    b = Borrower(policy, board.read, board.clock, lambda: since)
    board.now = 5.0
    assert b.cores() == (0, 1, 2, 3)  # idle since boot: lent at once
    since[0] = 11.0  # busy 10-11 s, never seen by the borrower
    board.now = 11.1
    assert b.cores() == (0, 2, 3)
    board.now = 13.0
    assert b.cores() == (0, 1, 2, 3)


def test_the_board_keeps_when_a_lane_became_idle_not_when_it_said_so_again() -> None:
    from ris.preemption.board import ActivityBoard

    board = ActivityBoard(["llm", "tts"], array=bytearray(2), idle_since=memoryview(bytearray(16)).cast("d"))
    publish, read = board.writer("tts"), board.idle_since(["tts"])
    publish(Activity.BUSY)
    publish(Activity.IDLE)
    went_idle = read()[0]
    assert went_idle > 0
    publish(Activity.IDLE)  # said again (after every task, when the loop idles): not moved
    assert read() == [went_idle]
    assert ActivityBoard(["tts"], array=bytearray(1)).idle_since(["tts"])() == [float("-inf")]


def test_no_grace_lends_as_soon_as_the_owner_is_idle() -> None:
    board = Board(2)
    b = borrower(board, grace=0.0)
    board.states[0] = Activity.BUSY
    assert b.cores() == (0, 2, 3)
    board.states[0] = Activity.IDLE
    assert b.cores() == (0, 1, 2, 3)


# ----- what the config declares ---------------------------------------------------------------


def _config(**llm: Any) -> dict[str, Any]:
    return {
        "lanes": {
            "llm": {
                "cores": [0],
                "default_model": "m",
                "models": {"m": {"backend": "llama_cpp", "source": "/x.gguf"}},
                **llm,
            },
            "tts": {"cores": [1], "default_model": "e", "models": {"e": {"backend": "espeak"}}},
            "image": {"enabled": False, "priority_class": "batch"},
        }
    }


TWO_CORES = MachineInfo(cores=(0, 1), gpus=0)


def test_the_llm_lane_borrows_the_tts_core_and_the_tts_worker_knows_it_lends() -> None:
    cfg = parse_config(_config(borrow_idle_cores=True), TWO_CORES)
    assert lenders(cfg, "llm") == (Lender("tts", (1,)),)
    assert lends(cfg, "tts") and not lends(cfg, "llm")
    spec = worker_spec(cfg, "llm", TWO_CORES)
    assert spec.borrow_from == (Lender("tts", (1,)),) and not spec.lends
    assert worker_spec(cfg, "tts", TWO_CORES).lends
    assert spec.binding.may_borrow == (1,) and worker_spec(cfg, "tts", TWO_CORES).binding.may_borrow == ()
    off = parse_config(_config(), TWO_CORES)
    assert lenders(off, "llm") == () and not lends(off, "tts")
    assert worker_spec(off, "llm", TWO_CORES).binding.may_borrow == ()


def test_the_image_lane_borrows_the_idle_llm_core_and_the_llm_worker_knows_it_lends() -> None:
    """The machine-built layout on CPU: images on the TTS core (nice 19 there), lent the LLM's
    core while the LLM is idle; the TTS core is its own already, so TTS lends it nothing."""
    data = _config()
    data["lanes"]["image"] = {
        "enabled": True,
        "priority_class": "batch",
        "nice": 19,
        "cores": [1],
        "borrow_idle_cores": True,
        "default_model": "t",
        "models": {"t": {"backend": "diffusers", "source": "builtin:tiny-sd"}},
    }
    cfg = parse_config(data, TWO_CORES)
    assert lenders(cfg, "image") == (Lender("llm", (0,)),)
    assert lends(cfg, "llm") and not lends(cfg, "tts") and not lends(cfg, "image")
    spec = worker_spec(cfg, "image", TWO_CORES)
    assert spec.borrow_from == (Lender("llm", (0,)),) and spec.binding.may_borrow == (0,)
    assert worker_spec(cfg, "llm", TWO_CORES).lends


def test_the_tts_lane_borrows_the_idle_llm_core_and_the_llm_worker_knows_it_lends() -> None:
    """Opt-in: speech on both cores while the LLM is idle (Piper on 2 threads ~1.7x faster)."""
    data = _config()
    data["lanes"]["tts"]["borrow_idle_cores"] = True
    cfg = parse_config(data, TWO_CORES)
    assert lenders(cfg, "tts") == (Lender("llm", (0,)),)
    assert lends(cfg, "llm") and not lends(cfg, "tts")
    spec = worker_spec(cfg, "tts", TWO_CORES)
    assert spec.borrow_from == (Lender("llm", (0,)),) and spec.binding.may_borrow == (0,)
    assert worker_spec(cfg, "llm", TWO_CORES).lends


def test_borrowing_and_a_cpu_share_are_refused_where_they_mean_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ris.lanes.tts import TTSLane

    monkeypatch.setattr(TTSLane, "borrows_cores", False)  # as a lane kind that cannot borrow
    data = _config()
    data["lanes"]["tts"]["borrow_idle_cores"] = True
    data["lanes"]["llm"]["min_cpu_share"] = 0.1
    with pytest.raises(ConfigError) as exc:
        parse_config(data, TWO_CORES)
    msg = str(exc.value)
    assert "lanes.tts.borrow_idle_cores" in msg and "lanes that borrow cores: image, llm" in msg
    assert "lanes.llm.min_cpu_share: 0.1 is for batch lanes" in msg
    with pytest.raises(ConfigError, match="needs a lane on CPU with its cores listed"):
        parse_config(_config(borrow_idle_cores=True, cores=None), TWO_CORES)
    with pytest.raises(ConfigError, match="min_cpu_share"):
        parse_config(
            {
                **_config(),
                "lanes": {**_config()["lanes"], "image": {"priority_class": "batch", "min_cpu_share": 1.5}},
            },
            TWO_CORES,
        )


class FakeBorrower:
    def __init__(self, own: tuple[int, ...], answer: tuple[int, ...]) -> None:
        self.policy = LendingPolicy(own, (Lender("tts", (1,)),))
        self.answer = answer

    def cores(self) -> tuple[int, ...]:
        return self.answer

    def borrowed(self, cores: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(c for c in cores if c not in self.policy.own)


def test_core_lending_moves_every_thread_of_the_process_and_says_the_thread_count() -> None:
    """On this process, in a child so the test runner's own affinity is left alone."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        seen = pool.apply(_lend_in_child)
    widened, narrowed, idle = seen
    assert widened == (2, {(0, 1)}, (1,))
    assert narrowed == (1, {(0,)}, ())
    assert idle is None  # already on its own cores: nothing to change


@contextmanager
def _child_lending() -> Iterator[tuple[FakeBorrower, Any]]:
    """In a spawned child: on core 0, with a second thread (one a library's pool started), a
    CoreLending of one own thread whose borrower answers cores 0 and 1 until told otherwise."""
    import threading

    from ris.runtime.lending import CoreLending

    os.sched_setaffinity(0, {0})
    stop = threading.Event()
    helper = threading.Thread(target=stop.wait)
    helper.start()
    borrower = FakeBorrower((0,), (0, 1))
    try:
        yield borrower, CoreLending(borrower, 1)  # type: ignore[arg-type]
    finally:
        stop.set()
        helper.join()


def _lend_in_child() -> tuple[Any, Any, Any]:
    from ris.runtime.lending import thread_affinities

    with _child_lending() as (_borrower, lending):
        threads = lending.fit(working=True)
        widened = (threads, set(thread_affinities(os.getpid()).values()), lending.borrowed)
        threads = lending.fit(working=False)
        narrowed = (threads, set(thread_affinities(os.getpid()).values()), lending.borrowed)
        idle = lending.fit(working=False)
    return widened, narrowed, idle


def test_a_lent_core_is_given_back_under_a_running_step_as_soon_as_its_owner_is_busy() -> None:
    """The watcher's move: affinity at once (a step under way would keep a thread on the
    owner's core until it ends), the thread count at the next fit; in a spawned child."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        seen = pool.apply(_give_back_in_child)
    assert seen["widened"] == (2, {(0, 1)})
    assert seen["nothing_taken"] is False
    assert seen["taken"] == (True, {(0,)}, (), 2)  # moved off core 1, still 2 threads in the step
    assert seen["next_step"] == 1
    assert seen["watched"] == {(0,)}


def _give_back_in_child() -> dict[str, Any]:
    import time

    from ris.runtime.lending import WATCH_INTERVAL_S, thread_affinities

    seen: dict[str, Any] = {}
    with _child_lending() as (borrower, lending):
        seen["widened"] = (lending.fit(working=True), set(thread_affinities(os.getpid()).values()))
        seen["nothing_taken"] = lending.give_back_taken()
        borrower.answer = (0,)  # TTS got work
        moved = lending.give_back_taken()
        on = set(thread_affinities(os.getpid()).values())
        seen["taken"] = (moved, on, lending.borrowed, lending.threads)
        seen["next_step"] = lending.fit(working=True)
        # The watcher thread does the same on its own.
        borrower.answer = (0, 1)
        lending.fit(working=True)
        lending.watch()
        borrower.answer = (0,)
        deadline = time.monotonic() + 30.0  # a loaded machine may keep the watcher waiting
        while set(thread_affinities(os.getpid()).values()) != {(0,)} and time.monotonic() < deadline:
            time.sleep(WATCH_INTERVAL_S)
        seen["watched"] = set(thread_affinities(os.getpid()).values())
    return seen


def test_a_borrowing_worker_loads_openmp_over_the_cores_it_may_borrow_then_narrows() -> None:
    """libgomp counts its cores once, at load: loaded on the worker's own core alone, its
    waiters barely spin once a lent core brings a second thread (each barrier a futex sleep).
    Read back from libgomp in spawned children: with OMP_NUM_THREADS unset its default team is
    the cores it counted, 2 when loaded over the lent core, 1 when loaded narrow; the process
    is on its own core afterwards and maps one libgomp."""
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs cores 0 and 1")
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:  # a fresh child each
        widened = pool.apply(_openmp_in_child, (True,))
        narrow = pool.apply(_openmp_in_child, (False,))
        bound = pool.apply(_bind_in_child, ((0,), (1,)))
        plain = pool.apply(_bind_in_child, ((0,), ()))
    if widened is None:
        pytest.skip("no libgomp on this machine (llama.cpp on its own thread pool)")
    assert widened == (2, (0, 1), (0,), 1)
    assert narrow == (1, None, (0,), 1)
    assert bound == ((0, 1), (0,))  # apply_binding does it for a binding that may borrow
    assert plain == (None, (0,))  # and not for one that borrows nothing


def _openmp_in_child(widen: bool) -> tuple[int, Any, tuple[int, ...], int] | None:
    import ctypes

    from ris.runtime import binding as b

    os.environ.pop("OMP_NUM_THREADS", None)  # libgomp's default team: the cores it counted
    os.sched_setaffinity(0, {0})
    if widen:
        b.load_openmp_seeing((0, 1))
    try:
        gomp = ctypes.CDLL(b.LIBGOMP, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None
    with open("/proc/self/maps") as maps:
        copies = {line.split()[-1] for line in maps if "libgomp" in line}
    return (
        gomp.omp_get_max_threads(),
        b.openmp_loaded_over,
        tuple(sorted(os.sched_getaffinity(0))),
        len(copies),
    )


def _bind_in_child(cores: tuple[int, ...], may_borrow: tuple[int, ...]) -> tuple[Any, Any]:
    from ris.runtime import binding as b

    b.apply_binding(b.Binding(cores=cores, threads=1, nice=0, gpu=None, may_borrow=may_borrow))
    return b.openmp_loaded_over, tuple(sorted(os.sched_getaffinity(0)))


def test_a_cpu_share_on_an_image_lane_moved_to_a_gpu_is_kept_and_not_applied() -> None:
    # The shipped config sets it on the image lane: moving that lane to cuda:0 must just work.
    data = _config()
    data["lanes"]["image"] = {
        "device": "cuda:0",
        "priority_class": "batch",
        "min_cpu_share": 0.1,
        "models": {"tiny-sd": {"backend": "diffusers", "source": "builtin:tiny-sd"}},
        "default_model": "tiny-sd",
    }
    cfg = parse_config(data, MachineInfo(cores=(0, 1), gpus=1))
    assert cfg.lane("image").min_cpu_share == 0.1
    assert worker_spec(cfg, "image", MachineInfo(cores=(0, 1), gpus=1)).min_cpu_share is None


def test_a_lenders_busy_and_idle_marks_leave_the_board_right_in_either_order() -> None:
    """The worker's receiver marks a task busy as it queues it; the worker's loop marks the
    lane idle once a task ended or nothing waits, only with nothing queued."""
    import queue

    from ris.runtime.worker_main import BoardMarks

    board: list[Activity] = []
    inbox: queue.Queue[object] = queue.Queue()
    marks = BoardMarks(board.append, inbox)

    def last() -> Activity:
        return board[-1]

    marks.idle()
    assert board == [Activity.IDLE]
    marks.arrived("task 1")
    assert last() is Activity.BUSY and inbox.qsize() == 1
    marks.idle()  # a task ended while the next one waits: still busy
    assert last() is Activity.BUSY
    inbox.get_nowait()
    marks.idle()  # the last one ended: idle
    assert last() is Activity.IDLE
    # The receiver and the loop at once, many times over: the board ends idle with an empty
    # queue, never busy over nothing and never idle over a queued task.
    import threading

    for _ in range(200):
        t = threading.Thread(target=marks.arrived, args=("task",))
        t.start()
        marks.idle()
        t.join()
        assert last() is Activity.BUSY and inbox.qsize() == 1
        inbox.get_nowait()
        marks.idle()
        assert last() is Activity.IDLE
