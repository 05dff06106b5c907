"""Work-conserving isolation and the batch lane's minimum share, on the real server with the
repository's config (LLM core 0 borrowing TTS's idle core 1; images at min_cpu_share 0.1):
read from the OS (/proc, sched_getaffinity, the cpu cgroup) and from /api/stats."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from ris import Client
from ris.runtime.lending import thread_affinities

from .server import Server, make_config
from .waiting import wait_for, wait_seen

# A server start and a long generation on a shared 2-core machine: minutes, not seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SPEECH = " ".join(
    f"Sentence number {i} of a long reading, spoken while the language model keeps on writing."
    for i in range(12)
)


def _all_threads_on(pid: int, cores: tuple[int, ...]) -> bool:
    return set(thread_affinities(pid).values()) == {cores}


def _long_generation(
    server: Server, started: threading.Event, stop: threading.Event, done: list[float]
) -> None:
    """Generate until `stop` (leaving the stream cancels the task) or 1500 tokens."""
    with Client(server.url, timeout=300, max_retries=0) as c:
        for _piece in c.generate_stream(
            "Write a very long story about a lighthouse keeper.", max_tokens=1500, ignore_eos=True
        ):
            started.set()
            if stop.is_set():
                return
    done.append(time.monotonic())


def _console_shows_the_lending(server: Server) -> None:
    """The console's lane cards, in Debian's chromium, while core 1 is lent."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/ui")
            expect(page.locator('#lane-tts dd[data-field="lent"]')).to_have_text("1 to llm", timeout=15_000)
            expect(page.locator('#lane-llm dd[data-field="borrowed"]')).to_have_text("1 (2 threads now)")
            expect(page.locator('#lane-image dd[data-field="cpu-share"]')).to_contain_text("at least 10.0 %")
        finally:
            browser.close()


def test_llm_borrows_the_idle_tts_core_and_gives_it_back_when_speech_arrives(server: Server) -> None:
    llm = server.worker_pid("llm")
    # Idle: the LLM holds its own core only, every thread of it.
    wait_for(lambda: _all_threads_on(llm, (0,)), 30)
    started, stop, done = threading.Event(), threading.Event(), list[float]()
    gen = threading.Thread(target=_long_generation, args=(server, started, stop, done))
    gen.start()
    try:
        assert started.wait(60), "the LLM produced no token"
        # TTS idle: the LLM widens to core 1 (all its threads, OpenMP's included) and two threads.
        wait_for(lambda: _all_threads_on(llm, (0, 1)), 30)
        stats = wait_seen(
            server.stats,
            lambda s: s["llm"]["worker"]["borrowed_cores"] == [1] and s["llm"]["worker"]["threads_now"] == 2,
            10,
            "the LLM worker never reported core 1 borrowed",
        )
        assert stats["tts"]["lent_cores"] == {"1": "llm"}
        assert stats["llm"]["borrowed_cores"] == [1]
        _console_shows_the_lending(server)

        # A speech request arrives: core 1 is given back while it runs, and it is served.
        narrowed = threading.Event()
        speech: list[float] = []

        def speak() -> None:
            with Client(server.url, timeout=300, max_retries=0) as c:
                speech.append(c.synthesize(SPEECH).duration_s)

        tts = threading.Thread(target=speak)
        tts.start()
        while tts.is_alive():
            if _all_threads_on(llm, (0,)):
                narrowed.set()
            time.sleep(0.005)
        tts.join()
        assert speech and speech[0] > 10.0, "the speech was not served"
        assert narrowed.is_set(), "the LLM kept core 1 while the TTS lane had work"
        assert not done, "the generation ended before the speech did: nothing was shown"
        # Speech done, the generation still running: the LLM borrows core 1 again.
        wait_for(lambda: _all_threads_on(llm, (0, 1)) or bool(done), 30)
    finally:
        stop.set()
        gen.join(120)
    # The generation over, the LLM is back on its own core.
    wait_for(lambda: _all_threads_on(llm, (0,)), 30)
    wait_seen(
        server.stats, lambda s: s["llm"]["worker"]["borrowed_cores"] == [], 10, "core 1 still shown lent"
    )


def _nice(pid: int) -> int:
    # /proc/<pid>/stat: the 19th field is nice; the command name (2nd) may hold spaces.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _cpu_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    raise AssertionError(f"no cpu cgroup line for {pid}")


def test_images_progress_while_llm_and_speech_saturate_both_cores(server: Server) -> None:
    image = server.worker_pid("image")
    share = server.stats()["image"]["min_cpu_share"]
    assert share is not None and share["weight"] == 114 and share["share"] >= 0.1
    # The mechanism, read back from the OS: the worker in the server's own cpu cgroup with
    # cpu.shares 114 (cgroup v1 here), else the nice level whose weight gives 10%.
    if share["mechanism"] == "cgroup_v1":
        group = _cpu_cgroup(image)
        assert group.endswith(f"/ris-{server.proc.pid if server.proc else 0}-image"), group
        assert Path(share["cgroup"], "cpu.shares").read_text().strip() == "114"
        assert str(image) in Path(share["cgroup"], "cgroup.procs").read_text().split()
        # Inside the group every thread runs under SCHED_IDLE, torch's (started after the
        # policy was set) as well: never held back as cache-hot by the load balancer.
        assert share["policy"] == "idle"
        threads = [int(t) for t in os.listdir(f"/proc/{image}/task")]
        assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_IDLE}, threads
    else:
        assert share["mechanism"] == "nice" and _nice(image) == share["nice"] <= 9
    assert sorted(os.sched_getaffinity(image)) == [0, 1]

    started, stop, done = threading.Event(), threading.Event(), list[float]()
    gen = threading.Thread(target=_long_generation, args=(server, started, stop, done))

    def keep_speaking() -> None:
        with Client(server.url, timeout=300, max_retries=0) as c:
            while not stop.is_set():
                c.synthesize(SPEECH[:300])

    tts = threading.Thread(target=keep_speaking)
    gen.start()
    tts.start()
    try:
        assert started.wait(60), "the LLM produced no token"
        wait_seen(server.stats, lambda s: s["tts"]["activity"] == "busy", 60, "the TTS lane never got busy")
        with Client(server.url, timeout=60, max_retries=0) as c:
            task = c.generate_image("a lighthouse at dusk", width=64, height=64, steps=8)["task_id"]
            # Both real-time lanes busy all along: the image still makes steps.
            seen = wait_seen(
                lambda: c.progress(task),
                lambda p: p["step"] > 0 or p["status"] == "succeeded",
                300,
                "the image made no step under saturation",
            )
        assert not done, "the LLM generation ended before the image progressed: no saturation shown"
        assert server.stats()["tts"]["activity"] == "busy" or tts.is_alive()
        assert seen["status"] in ("running", "succeeded")
    finally:
        stop.set()
        tts.join(120)
        gen.join(120)


def _borrows_core_0_and_a_chat_takes_it_back(
    srv: Server, lane: str, pid: int, still_working: Callable[[], bool], max_tokens: int
) -> None:
    """`lane`'s worker (pid), at work with the LLM idle: it runs on core 0 too, with two
    threads, as the OS and /api/stats say; then a chat arrives and it leaves core 0 while the
    LLM works (seen while `still_working()`), and the chat is served."""
    wait_for(lambda: _all_threads_on(pid, (0, 1)), 30)  # core 0 lent
    stats = wait_seen(
        srv.stats,
        lambda s: s[lane]["worker"]["borrowed_cores"] == [0] and s[lane]["worker"]["threads_now"] == 2,
        10,
        f"the {lane} worker never reported core 0 borrowed",
    )
    assert stats["llm"]["lent_cores"] == {"0": lane} and stats[lane]["borrowed_cores"] == [0]
    narrowed = threading.Event()
    answer: list[str] = []

    def chat() -> None:
        with Client(srv.url, timeout=300, max_retries=0) as llm:
            answer.append(llm.generate("Tell me a long story.", max_tokens=max_tokens, ignore_eos=True).text)

    gen = threading.Thread(target=chat)
    gen.start()
    while gen.is_alive():
        if _all_threads_on(pid, (1,)) and still_working():
            narrowed.set()
        time.sleep(0.005)
    gen.join()
    assert answer and answer[0], "the chat was not served"
    assert narrowed.is_set(), f"the {lane} worker kept core 0 while the LLM had work"


def test_images_borrow_the_idle_llm_core_and_give_it_back_within_a_step(tmp_path: Path) -> None:
    """The machine-built layout on CPU: images on the TTS core, lent the LLM's core 0 while the
    LLM is idle; an LLM task takes it back before the image's next denoising step."""
    cfg = make_config(
        tmp_path,
        llm={"borrow_idle_cores": False},
        # Passive waits, as beside TTS on its core (off here): the worker then runs the watcher
        # that gives a lent core back under a running step.
        image={
            "cores": [1],
            "threads": 1,
            "borrow_idle_cores": True,
            "min_cpu_share": None,
            "wait_policy": "passive",
        },
    )
    cfg["lanes"]["tts"]["enabled"] = False  # not a lender here (its core is the image lane's own)
    cfg["server"]["max_image_steps"] = 1000  # an image that outlasts the chat and the grace after it
    srv = Server(tmp_path, cfg).start()
    try:
        image = srv.worker_pid("image")
        wait_for(lambda: _all_threads_on(image, (1,)), 30)  # idle: its own core only
        with Client(srv.url, timeout=60, max_retries=0) as c:
            # Long enough to watch (cancelled below): 1000 steps of the tiny pipeline, a minute here.
            task = c.generate_image("a lighthouse at dusk", width=256, height=256, steps=1000)["task_id"]
            wait_seen(lambda: c.progress(task), lambda p: p["step"] > 0, 120, "the image made no step")
            # The LLM idle: the image worker runs on core 0 too; a chat takes it back (the image
            # still running after it, checked below).
            _borrows_core_0_and_a_chat_takes_it_back(srv, "image", image, lambda: True, max_tokens=200)
            assert c.progress(task)["status"] == "running", "the image ended before the chat: nothing shown"
            # The LLM idle again (past the lending grace): core 0 is lent again.
            wait_for(lambda: _all_threads_on(image, (0, 1)), 30)
            c.cancel(task)
            wait_seen(lambda: c.progress(task), lambda p: p["status"] == "cancelled", 60, "no cancel")
        # Idle: back on its own core.
        wait_for(lambda: _all_threads_on(image, (1,)), 30)
    finally:
        srv.stop()


def test_speech_borrows_the_idle_llm_core_and_gives_it_back_under_a_sentence(tmp_path: Path) -> None:
    """Opt-in (`borrow_idle_cores` on the TTS lane): a long reading runs its sentences on both
    cores while the LLM is idle (Piper on two threads), and a chat takes core 0 back within the
    watcher's few milliseconds, under a running sentence, while the reading goes on."""
    cfg = make_config(tmp_path, llm={"borrow_idle_cores": False}, tts={"borrow_idle_cores": True})
    cfg["lanes"]["image"]["enabled"] = False
    srv = Server(tmp_path, cfg).start()
    try:
        tts = srv.worker_pid("tts")
        wait_for(lambda: _all_threads_on(tts, (1,)), 30)  # idle: its own core only
        speech: list[float] = []

        def speak() -> None:
            with Client(srv.url, timeout=300, max_retries=0) as c:
                speech.append(c.synthesize(" ".join([SPEECH] * 3)).duration_s)

        reading = threading.Thread(target=speak)
        reading.start()
        try:
            # The LLM idle: the TTS worker runs its sentences on core 0 too; a chat takes it back.
            _borrows_core_0_and_a_chat_takes_it_back(srv, "tts", tts, reading.is_alive, max_tokens=100)
        finally:
            reading.join(300)
        assert speech and speech[0] > 30.0, "the reading was not served"
        wait_for(lambda: _all_threads_on(tts, (1,)), 30)  # idle: back on its own core
    finally:
        srv.stop()
