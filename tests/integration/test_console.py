"""The web console (/ui) in a real headless Chromium, against the real service.

Playwright drives Debian's `chromium` (the Makefile's test set-up installs it; `playwright
install` is never run). Each page is photographed into tests/results/console/ (git-ignored).
The session's server is reused; the API-key test starts its own, with only the LLM lane.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright

from .server import ROOT, Server, make_config
from .waiting import wait_for

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "tests" / "results" / "console"
# The console's first load (HTML, CSS, scripts, icon) must stay small: the box may be reached
# over a slow link, and nothing is fetched from elsewhere.
FIRST_LOAD_LIMIT = 300 * 1024
READY_STATES = ("idle", "prefill", "decode", "busy", "yielding")


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(pw: Playwright) -> Iterator[Browser]:
    b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield b
    b.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) whose page fails the test on a script error or a
    Content-Security-Policy violation (both show as console errors)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"script error: {e}"))
    pg.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    yield pg
    context.close()
    # A 401 the test itself provoked shows as a failed resource load, as does a load it aborted
    # (a test that aborts loads says so in the page's `aborts_loads`): those are expected.
    expected = ("401", "net::ERR_FAILED") if getattr(pg, "aborts_loads", False) else ("401",)
    unexpected = [e for e in errors if not any(x in e for x in expected)]
    assert not unexpected, unexpected


def shot(pg: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def lane_state(pg: Page, lane: str) -> Any:
    return pg.locator(f'#lane-{lane} [data-field="state"]')


def test_overview_shows_three_ready_lanes_with_their_cores(page: Page, server: Server) -> None:
    responses: list[Any] = []
    page.on("response", lambda r: responses.append(r))
    first = page.goto(server.url + "/", wait_until="load")  # a browser at / is sent to /ui
    assert first is not None and page.url == server.url + "/ui"
    csp = first.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assets = [r for r in responses if r.request.resource_type not in ("fetch", "xhr") and r.ok]
    assert {r.url.rsplit("/", 1)[-1] for r in assets} >= {"ui", "console.css", "overview.js", "charts.js"}
    first_load = sum(len(r.body()) for r in assets)
    assert first_load < FIRST_LOAD_LIMIT, f"the console's first load is {first_load} bytes"

    cores = {lane: cfg["cores"] for lane, cfg in server.config["lanes"].items()}
    assert set(cores) == {"llm", "tts", "image"}
    for lane, lane_cores in cores.items():
        card = page.locator(f"#lane-{lane}")
        expect(card.locator('[data-field="state"]')).to_have_text(
            re.compile("^(" + "|".join(READY_STATES) + ")$"), timeout=15_000
        )
        expect(card.locator('dd[data-field="cores"]')).to_have_text(", ".join(map(str, lane_cores)))
        expect(card.locator('dd[data-field="pid"]')).to_have_text(re.compile(r"^pid \d+$"))
    shot(page, "overview")


def test_the_overview_marks_its_figures_stale_while_the_server_does_not_answer(
    page: Page, server: Server
) -> None:
    """The cards stayed as they were, undimmed, with "no answer: Failed to fetch" in a corner."""
    page.aborts_loads = True  # type: ignore[attr-defined]
    page.goto(server.url + "/ui")
    expect(lane_state(page, "llm")).to_have_text(re.compile("|".join(READY_STATES)), timeout=30_000)
    body = page.locator("body")
    expect(body).not_to_have_attribute("data-stale", re.compile(".*"))
    page.route("**/api/console/state", lambda route: route.abort())
    expect(body).to_have_attribute("data-stale", "1", timeout=10_000)
    conn = page.locator("#conn")
    expect(conn).to_contain_text("the server did not answer")
    expect(conn).to_contain_text("figures from")
    page.unroute("**/api/console/state")
    expect(body).not_to_have_attribute("data-stale", re.compile(".*"), timeout=10_000)
    expect(conn).to_have_text("live")


def test_chat_in_the_playground_streams_tokens(page: Page, server: Server) -> None:
    page.goto(server.url + "/ui/playground")
    expect(page.locator("#chat-model option")).not_to_have_count(0)
    page.get_by_label("Message").fill("Name three colours of the sea, one per line.")
    page.get_by_label("Max tokens").fill("48")
    page.get_by_role("button", name="Send").focus()
    page.keyboard.press("Enter")
    # Seen in the browser while the answer is still arriving: tokens shown, not yet done.
    page.wait_for_function(
        "() => { const o = document.getElementById('chat-output');"
        " return o.dataset.state === 'streaming' && Number(o.dataset.tokens) >= 2 }",
        timeout=60_000,
    )
    out = page.locator("#chat-output")
    expect(out).to_have_attribute("data-state", "done", timeout=60_000)
    # Send disabled itself while it ran and handed the keyboard's focus to Stop, which gave it
    # back: it fell to the page's body, and Tab started again from the top.
    assert page.evaluate("() => document.activeElement.id") == "chat-send"
    assert int(out.get_attribute("data-tokens") or 0) >= 2
    assert out.inner_text().strip()
    expect(page.locator("#chat-stats")).to_contain_text("tokens, first after")
    shot(page, "playground-chat")
    # Enter in the message box sends, as chat boxes do; Shift+Enter writes a new line.
    box = page.get_by_label("Message")
    box.fill("Say hi.")
    box.press("Shift+Enter")
    assert box.input_value() == "Say hi.\n"
    box.press("Enter")
    expect(out).to_have_attribute("data-state", "streaming", timeout=10_000)
    expect(out).to_have_attribute("data-state", "done", timeout=60_000)


def test_speak_plays_the_answer_as_it_is_spoken(page: Page, server: Server) -> None:
    page.goto(server.url + "/ui/playground")
    expect(page.locator("#speak-model option")).not_to_have_count(0)
    page.get_by_label("the LLM's answer to it, spoken as it is written").check()
    page.get_by_label("Words").fill("Tell me about the sea and its colours.")
    page.get_by_role("button", name="Speak").click()
    expect(page.locator("#speak-status")).to_contain_text("all spoken audio received", timeout=120_000)
    out = page.locator("#speak-output")
    assert out.inner_text().strip()  # the sentences, as they went to speech
    # Each chunk was scheduled on the page's audio clock as it came: sound began before the
    # last of it arrived.
    assert int(out.get_attribute("data-chunks") or 0) >= 2
    assert out.get_attribute("data-played-early") == "true"


def test_chinese_text_is_spoken_by_a_voice_of_its_language_and_the_page_says_so(
    page: Page, server: Server
) -> None:
    """The voice-model picker always named the default (Piper's English voice), which read
    Chinese as its own language would, and the server's warning was never shown."""
    page.goto(server.url + "/ui/playground")
    expect(page.locator("#speak-model option")).not_to_have_count(0)
    assert page.locator("#speak-model").input_value() == ""  # the server picks, by language
    page.get_by_label("Words").fill("你好，今天天气很好。")
    page.get_by_role("button", name="Speak").click()
    status = page.locator("#speak-status")
    expect(status).to_contain_text("s of speech", timeout=60_000)
    expect(status).to_contain_text("the text is Chinese")


def test_a_spoken_answer_stops_when_asked(page: Page, server: Server) -> None:
    """Its sound played on with no way to stop it short of leaving the page."""
    page.goto(server.url + "/ui/playground")
    expect(page.locator("#speak-model option")).not_to_have_count(0)
    page.get_by_label("the LLM's answer to it, spoken as it is written").check()
    page.get_by_label("Words").fill("Tell me a long story about the sea.")
    stop = page.get_by_role("button", name="Stop the speech")
    assert stop.is_disabled()
    page.get_by_role("button", name="Speak").click()
    expect(stop).to_be_enabled()
    expect(page.locator("#speak-status")).to_contain_text("playing", timeout=120_000)
    stop.click()
    expect(page.locator("#speak-status")).to_have_text("stopped")
    expect(stop).to_be_disabled()
    expect(page.get_by_role("button", name="Speak")).to_be_enabled()


def download(pg: Page, clip: Any) -> tuple[str, bytes]:
    """What a clip's download link saves, clicked as a user would: its file name and bytes."""
    with pg.expect_download() as saving:
        clip.get_by_role("link").click()
    saved = saving.value
    return saved.suggested_filename, Path(saved.path()).read_bytes()


def test_each_spoken_clip_gets_its_own_player_and_download(page: Page, server: Server) -> None:
    page.goto(server.url + "/ui/playground")
    expect(page.locator("#speak-model option")).not_to_have_count(0)
    page.get_by_label("Words").fill("The first clip, read as written.")
    page.get_by_role("button", name="Speak").click()
    clips = page.locator("#speak-clips li")
    expect(clips).to_have_count(1, timeout=60_000)
    page.get_by_label("the LLM's answer to it, spoken as it is written").check()
    page.get_by_label("Words").fill("Say one short sentence about rain.")
    page.get_by_role("button", name="Speak").click()
    expect(page.locator("#speak-status")).to_contain_text("all spoken audio received", timeout=120_000)
    expect(clips).to_have_count(2)
    answer, text = clips.nth(0), clips.nth(1)  # the newest first; the earlier clip kept
    assert answer.get_attribute("data-kind") == "answer" and text.get_attribute("data-kind") == "text"
    expect(text.get_by_role("link")).to_have_text("Download clip 1 (WAV)")
    (name1, first), (name2, second) = download(page, text), download(page, answer)
    assert (name1, name2) == ("ris-speech-1.wav", "ris-speech-2.wav")
    for wav in (first, second):
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 44 + 4000
        # The header's data size is what follows it: a file any player reads.
        assert int.from_bytes(wav[40:44], "little") == len(wav) - 44
    assert first != second
    # Each player holds its own clip, and plays it again.
    srcs = [c.locator("audio").get_attribute("src") for c in (answer, text)]
    assert srcs[0] != srcs[1]
    duration = answer.locator("audio").evaluate(
        "a => new Promise((ok) => a.readyState >= 1 ? ok(a.duration)"
        " : a.addEventListener('loadedmetadata', () => ok(a.duration)))"
    )
    assert duration > 0.3
    shot(page, "playground-clips")


def ask_image(pg: Page, prompt: str, side: int, steps: int) -> None:
    """The playground's image form filled in and sent, as a person does."""
    pg.get_by_label("Prompt").fill(prompt)
    pg.get_by_label("Width").select_option(str(side))
    pg.get_by_label("Height").select_option(str(side))
    pg.get_by_label("Steps").fill(str(steps))
    pg.get_by_role("button", name="Generate").click()


def test_image_progress_rises_to_full_then_the_picture(page: Page, server: Server) -> None:
    page.goto(server.url + "/ui/playground")
    ask_image(page, "a lighthouse at dusk", 256, 24)
    picture = page.locator("#image-result")
    expect(picture).to_be_visible(timeout=120_000)
    assert page.evaluate("() => document.getElementById('image-result').naturalWidth") == 256
    seen = [float(x) for x in (page.locator("#image-progress").get_attribute("data-seen") or "").split(",")]
    assert seen == sorted(seen), f"progress went backwards: {seen}"
    assert any(0 < x < 1 for x in seen), f"no progress seen between 0 and 1: {seen}"
    assert seen[-1] == 1.0
    assert page.locator("#image-progress").evaluate("p => p.value") == 1
    shot(page, "playground-image")


def test_a_picture_asked_for_before_leaving_the_playground_is_there_on_return(
    page: Page, server: Server
) -> None:
    """Leaving the playground while a picture was queued (the Work page, a reload) lost it: the
    console never showed it again, nor linked to it anywhere."""
    page.goto(server.url + "/ui/playground")
    ask_image(page, "a blue door", 64, 2)
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled(timeout=30_000)
    task_id = page.evaluate("() => JSON.parse(sessionStorage.getItem('ris-playground-image')).task_id")
    page.goto(server.url + "/ui/work")  # away while it is made
    link = page.get_by_role("link", name=f"picture of image task {task_id}")
    expect(link).to_be_visible(timeout=120_000)
    assert link.get_attribute("href") == f"/api/image/result/{task_id}"
    page.go_back()
    picture = page.locator("#image-result")
    expect(picture).to_be_visible(timeout=60_000)
    assert picture.get_attribute("alt") == "generated image: a blue door"
    assert picture.get_attribute("src") == f"/api/image/result/{task_id}"  # the same picture


def test_an_image_waits_out_a_server_that_does_not_answer_then_shows(page: Page, server: Server) -> None:
    """A server restarting (its image tasks are durable) stranded the playground's image as
    "Failed to fetch", Generate enabled again and the picture never shown."""
    page.goto(server.url + "/ui/playground")
    page.get_by_label("Width").select_option("64")
    page.get_by_label("Height").select_option("64")
    page.get_by_label("Steps").fill("2")
    page.aborts_loads = True  # type: ignore[attr-defined]
    page.route("**/api/image/progress/**", lambda route: route.abort())  # the server is away
    page.get_by_label("Prompt").fill("a red kite")
    page.get_by_role("button", name="Generate").click()
    status = page.locator("#image-status")
    expect(status).to_have_attribute("data-state", "waiting", timeout=30_000)
    expect(status).to_contain_text("asking again")
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    page.get_by_label("Prompt").fill("something else")  # the alt text is the prompt sent
    page.unroute("**/api/image/progress/**")  # back
    picture = page.locator("#image-result")
    expect(picture).to_be_visible(timeout=60_000)
    assert picture.get_attribute("alt") == "generated image: a red kite"
    expect(status).to_have_attribute("data-state", "succeeded")


def test_an_image_cancelled_in_the_playground_says_so_once(page: Page, server: Server) -> None:
    page.goto(server.url + "/ui/playground")
    page.get_by_label("Steps").fill("100")
    page.get_by_label("Width").select_option("512")
    page.get_by_label("Height").select_option("512")
    page.get_by_role("button", name="Generate").click()
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_enabled(timeout=30_000)
    cancel.click()
    status = page.locator("#image-status")
    expect(status).to_have_attribute("data-state", "cancelled", timeout=60_000)
    expect(status).to_have_text("cancelled by the client")


def test_a_queued_image_is_cancelled_from_the_work_page(page: Page, server: Server) -> None:
    def submit(steps: int) -> str:
        body = {"prompt": "slow", "width": 512, "height": 512, "steps": steps}
        r = httpx.post(server.url + "/api/image/generate", json=body, timeout=30)
        assert r.status_code == 202, r.text
        task_id: str = r.json()["task_id"]
        return task_id

    running = submit(100)  # holds the image lane's one slot for over a minute
    queued = submit(4)
    behind = [submit(1) for _ in range(51)]  # the page lists 50 queued tasks of a lane
    try:
        page.goto(server.url + "/ui/work")
        expect(page.locator(f'#running tr[data-task-id="{running}"] progress')).to_be_visible(timeout=60_000)
        row = page.locator(f'#queued tr[data-task-id="{queued}"]')
        expect(row).to_be_visible()
        # The tasks past the 50 listed are said, not hidden.
        expect(page.locator('#queued tr.more[data-lane="image"]')).to_have_attribute("data-more", "2")
        shot(page, "work")
        # A keyboard user's focus survives the page's refresh every second (it fell to the
        # page's body, and Tab started again from the top).
        button = page.get_by_role("button", name=f"Cancel image task {queued}")
        button.focus()
        page.wait_for_timeout(2500)
        focused = "() => document.activeElement.dataset.key"
        assert page.evaluate(focused) == f"cancel-{queued}"
        page.keyboard.press("Tab")
        assert page.evaluate(focused) == f"cancel-{behind[0]}"
        page.keyboard.press("Shift+Tab")
        # A phone's width: the tables scroll in their boxes, the page does not go sideways.
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
        shot(page, "work-phone")
        page.set_viewport_size({"width": 1280, "height": 900})
        page.keyboard.press("Enter")  # the keyboard works the buttons
        expect(row).to_have_count(0, timeout=10_000)
        # Its button gone with it, the focus is on the line that says what happened.
        expect(page.locator("#work-status")).to_be_focused()
        expect(page.locator(f'#recent tr[data-task-id="{queued}"]')).to_have_attribute(
            "data-state", "cancelled", timeout=10_000
        )
        assert httpx.get(f"{server.url}/api/tasks/{queued}").json()["state"] == "cancelled"
        expect(page.locator(f'#running tr[data-task-id="{running}"]')).to_be_visible()
        # The recent row says it once: the state in its column, the message in the next.
        row = page.locator(f'#recent tr[data-task-id="{queued}"]')
        expect(row.locator("td").nth(4)).to_have_text("cancelled by the client")

        # A running task asked to stop: the status line follows it until its worker stops it.
        status = page.locator("#work-status")
        page.get_by_role("button", name=f"Cancel image task {running}").click()
        expect(status).to_have_attribute("data-task-id", running)
        expect(status).to_have_attribute("data-state", "cancelled", timeout=60_000)
        expect(status).to_have_text(f"image task {running}: cancelled by the client")
        assert status.get_attribute("data-code") == "cancelled"
    finally:
        for task in (*behind, queued, running):
            httpx.post(f"{server.url}/api/tasks/{task}/cancel")
        wait_for(lambda: httpx.get(f"{server.url}/api/tasks/{running}").json()["state"] != "running", 60)


def test_the_overview_charts_start_with_the_servers_last_minutes(page: Page, server: Server) -> None:
    def history() -> dict[str, Any]:
        r = httpx.get(server.url + "/api/console/history", timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    # The server samples every few seconds from its start, whether a page is open or not.
    wait_for(lambda: len(history()["series"].get("cpu", [])) >= 2, 60)
    before = history()
    assert before["span_s"] == 900 and set(before["series"]) >= {"cpu", "llm.latency", "tts.throughput"}
    for points in before["series"].values():
        assert len(points) <= before["span_s"] / before["every_s"] + 1
    page.goto(server.url + "/ui")
    # Every chart holds points from before the page was opened: the server's, drawn at load
    # (a point of the page's own ticks is later than `before`).
    charts = {
        "cpu": page.locator("#cpu-chart"),
        "llm.latency": page.locator('#lane-llm [data-chart="latency"]'),
        "image.throughput": page.locator('#lane-image [data-chart="throughput"]'),
    }
    for name, canvas in charts.items():
        expect(canvas).to_have_attribute("data-since", re.compile(r"^\d"))
        assert float(canvas.get_attribute("data-since") or "inf") <= before["time"], name
        assert int(canvas.get_attribute("data-points") or 0) >= 2, name
    shot(page, "overview-history")


def test_an_unknown_console_page_is_a_404_page_in_the_console_look(browser: Browser, server: Server) -> None:
    # Its own context, not the `page` fixture's: the browser reports the page's 404 on its
    # console, expected here and nothing else.
    context = browser.new_context()
    page = context.new_page()
    statuses: list[int] = []
    errors: list[str] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith("/ui/no-such-page") else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "404" not in m.text else None)
    resp = page.goto(server.url + "/ui/no-such-page")
    assert resp is not None and resp.status == 404
    assert resp.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in resp.headers.get("content-security-policy", "")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.locator("main")).to_contain_text("/ui/no-such-page")
    expect(page.get_by_role("navigation", name="Console pages")).to_be_visible()  # the console's header
    page.locator("main").get_by_role("link", name="Work").click()
    page.wait_for_url(server.url + "/ui/work")
    context.close()
    assert statuses == [404] and not errors, (statuses, errors)
    # An API client asking for a console path that is not there gets the same page's status.
    assert httpx.get(server.url + "/ui/static/none/x.js").status_code == 404
    assert httpx.get(server.url + "/api/no-such-thing").json()["error"]["code"] == "not_found"
    # A page's address with a trailing slash is that page, as before the catch-all.
    for slashed, page_path in (("/ui/", "/ui"), ("/ui/work/", "/ui/work")):
        r = httpx.get(server.url + slashed + "?x=1")
        assert r.status_code == 307 and r.headers["location"] == page_path + "?x=1", r


@pytest.mark.parametrize("path", ["/redoc", "/docs"])
def test_the_api_docs_load_nothing_from_outside_the_server(page: Page, server: Server, path: str) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(server.url + path, wait_until="networkidle")
    if path == "/redoc":
        # ReDoc's sidebar link with its logo, which it used to fetch from Redocly's server.
        logo = page.get_by_role("img", name="redocly logo")
        expect(logo).to_be_visible(timeout=30_000)
        page.wait_for_function("() => document.querySelector('img[alt=\"redocly logo\"]').complete")
        assert logo.evaluate("i => i.naturalWidth") > 0
    else:
        expect(page.locator(".swagger-ui .info .title")).to_be_visible(timeout=30_000)
    page.wait_for_load_state("networkidle")
    assert requested and requested[0] == server.url + path
    outside = [
        u for u in requested if not u.startswith(server.url + "/") and not u.startswith(("data:", "blob:"))
    ]
    assert not outside, outside


def test_a_killed_tts_worker_shows_restarting_and_back(page: Page, server: Server) -> None:
    page.goto(server.url + "/ui")
    badge = lane_state(page, "tts")
    expect(badge).to_have_text("idle", timeout=15_000)
    old = httpx.get(server.url + "/api/stats").json()["lanes"]["tts"]["worker"]
    os.kill(old["pid"], signal.SIGKILL)
    expect(badge).to_have_text("restarting", timeout=15_000)
    shot(page, "overview-restarting")
    expect(badge).to_have_text("idle", timeout=120_000)
    pid = page.locator('#lane-tts dd[data-field="pid"]')
    expect(pid).not_to_have_text(f"pid {old['pid']}")
    expect(page.locator('#lane-tts dd[data-field="restarts"]')).to_have_text(str(old["restarts"] + 1))
    expect(page.locator("#events")).to_contain_text("tts: idle → restarting")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The service with an API key, only its LLM lane running (the quickest to start)."""
    tmp = tmp_path_factory.mktemp("ris-console-keys")
    cfg = make_config(tmp, tts={"enabled": False}, image={"enabled": False})
    cfg["server"] = {**cfg.get("server", {}), "api_keys": [KEY]}
    srv = Server(tmp, cfg, api_key=KEY).start()
    yield srv
    srv.stop()


KEY = "console-test-key-3f9a"


def test_with_api_keys_the_console_refuses_without_the_key_and_works_with_it(
    page: Page, keyed_server: Server
) -> None:
    url = keyed_server.url
    page.goto(url + "/ui/work")
    # No key: the login form, not the console, which then brings the person back to the page.
    assert page.url == url + "/ui/login?next=%2Fui%2Fwork"
    assert page.evaluate("async () => (await fetch('/api/console/state')).status") == 401
    shot(page, "login")

    page.get_by_label("API key").fill("not-the-key")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("not one of this server's API keys")
    assert page.url == url + "/ui/login"

    page.get_by_label("API key").fill(KEY)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(url + "/ui/work")
    page.goto(url + "/ui")
    expect(lane_state(page, "llm")).to_have_text("idle", timeout=15_000)
    expect(lane_state(page, "tts")).to_have_text("disabled")
    assert KEY not in page.url
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    # A session, not the key: the browser sends it to every port of this host (other apps);
    # forgotten when the browser closes (no expiry of its own: -1).
    assert KEY not in cookie["value"] and cookie["expires"] == -1
    assert KEY not in page.evaluate("() => document.cookie")  # the page's script cannot read it

    page.goto(url + "/ui/models")
    expect(page.locator('#models tr[data-model="smollm2"]')).to_contain_text("yes")
    config = page.locator("#config").inner_text()
    assert KEY not in config and '"api_keys": "<1 hidden>"' in config
    assert KEY not in page.content()
    shot(page, "models")

    # A key cookie gone while the playground is open: its chat goes to the login form too (it
    # said "send 'Authorization: Bearer <key>'", advice for API clients).
    page.goto(url + "/ui/playground")
    expect(page.locator("#chat-model option")).not_to_have_count(0)
    cookies = page.context.cookies()
    page.context.clear_cookies()
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(url + "/ui/login?next=%2Fui%2Fplayground")
    page.context.add_cookies(cookies)  # type: ignore[arg-type]
    page.goto(url + "/ui")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(url + "/ui/login")
    assert httpx.get(url + "/api/console/state").status_code == 401
    # The session logged out is over on the server too, not only gone from this browser.
    kept = httpx.get(url + "/api/console/state", headers={"Cookie": f"ris_key={cookie['value']}"})
    assert kept.status_code == 401
